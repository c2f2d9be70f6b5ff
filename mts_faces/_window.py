"""The arithmetic of rate limiting, with no I/O: the exact window schedule, the rate, and
how both learn from throttling.

* ``WindowSchedule``: at most ``limit`` starts in any window, evenly paced (proof below).
* ``LearnedMargin``: the window is ``1 s + margin``; calls granted that far apart arrive at
  least ``1 s + margin - spread`` apart, so the margin is widened when a throttle may be our
  own bunching and settles back when calm (``MarginPolicy`` says by how much, and why).
* ``classify``: whether a throttle can be our own bunching at all, from how full our last
  second was (``WindowSchedule.headroom``) and how much trips vary (``RoundTrips``).
* ``AimdRate``: the rate, cut only for competition, straight to the share our calls got
  (``cut_to``), regained additively.

Both limiters (in-process and Redis-backed) follow these rules; the Redis one runs the same
rules inside a Lua script, so that every worker of an account shares one schedule.
"""

from __future__ import annotations

import math
from collections import deque

import attrs

# Pacing tolerance: a call may start this early relative to its evenly spaced slot. It
# absorbs timer lateness (epoll rounds timeouts up to whole milliseconds), so a late wake-up
# does not push every later slot back: without it, 1 ms of lateness per call loses 10% at
# 100 calls/s. It never weakens the window cap, which the log enforces separately.
MIN_TOLERANCE = 0.002


def pacing_tolerance(interval: float) -> float:
    """How early a call may start relative to its paced slot: half a slot, at least 2 ms."""
    return max(interval / 2, MIN_TOLERANCE)


MAX_QPS = 1_000_000
"""The largest rate a limiter takes: its log holds one start time per call of a window."""


def call_limit(qps: float) -> int:
    """Calls allowed in one window: a quota of ``qps`` per second admits ``floor(qps)``.

    The one check of a rate, for the client, the limiters and the command line: a finite
    number from 1 to :data:`MAX_QPS`.
    """
    if not (math.isfinite(qps) and 1 <= qps <= MAX_QPS):
        raise ValueError(f"qps must be a finite number from 1 to {MAX_QPS:,}, got {qps!r}")
    return math.floor(qps)


class WindowSchedule:
    """When the next call may start: at most ``limit`` starts in any ``window`` seconds.

    Two rules, and a start must satisfy both:

    * the log (exact cap): the last ``limit`` start times are kept; a new start at ``t`` needs
      ``t >= log[-limit] + window``. Starts never go backwards, so of any ``limit + 1`` of
      them the first and the last are ``limit`` places apart in the log, hence at least
      ``window`` apart in time: no half-open window of that length holds more than ``limit``,
      from the very first call on. No bucket, so no initial burst and no refill in a lull.
    * pacing (smoothness): starts are spaced ``interval`` apart (a virtual-scheduling GCRA
      with a small tolerance), so a full window's worth is not sent as one burst. Bursts
      make requests queue in the HTTP stack and reach the server bunched and reordered.

    Start times are kept non-decreasing. A start may be logged as if it came ``extra`` seconds
    later than it did: the window it opens then ends later too. The limiters do this for the
    first window of a new client, whose first requests open connections and so reach the
    server late by up to that much.
    """

    def __init__(self, limit: int, window: float) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if not window > 0:
            raise ValueError(f"window must be > 0, got {window!r}")
        self.limit = limit
        self.window = window
        # When each of the last ``limit`` starts opened its window (start + its extra).
        self._log: deque[float] = deque(maxlen=limit)
        self._last = -math.inf
        self._tat = -math.inf  # theoretical arrival time of the next paced call

    def earliest(self, now: float, interval: float) -> float:
        """The first time ``>= now`` at which one more call may start."""
        at = max(now, self._last, self._tat - pacing_tolerance(interval))
        if len(self._log) == self.limit:
            at = max(at, self._log[0] + self.window)
        return at

    def headroom(self, at: float) -> float:
        """How much more than one second lies between ``at`` and the start ``limit`` places
        back (infinite while fewer than ``limit`` are logged): a server second can hold
        ``limit + 1`` of our calls only if their trips differ by more than this."""
        if len(self._log) < self.limit:
            return math.inf
        return at - self._log[0] - 1.0

    def started_since(self, since: float) -> int:
        """How many of the logged starts opened their window after ``since``."""
        return sum(1 for opened in self._log if opened > since)

    def take(self, at: float, interval: float, extra: float = 0.0) -> None:
        """Record a start at ``at`` (``>= earliest(...)``), its window opening ``extra`` later."""
        self._tat = max(self._tat, at) + interval
        self._last = at
        self._log.append(at + extra)


@attrs.frozen
class AimdPolicy:
    """How an adaptive limiter reacts to throttling: multiplicative cut, additive recovery.

    ``decrease``: factor applied to the rate on throttling; ``recovery``: fraction of the
    ceiling regained per second of successful calls; ``floor``: lowest rate, as a fraction of
    the ceiling; ``cooldown``: seconds after a cut during which further throttles (answers to
    calls sent before the cut) are ignored, and the span in which ``threshold`` throttles
    must fall to make a cut.

    After a cut for *competition* (``AimdRate.cut_to``) the rate does not creep back
    additively, which would sit at the edge of what the other program leaves and collide
    with it about once a second: it ``hold``s the share found, then probes upward on a cubic,
    ``probe * ceiling * t**3`` after ``t`` seconds of probing, flat near the share and steep
    beyond it. Why hold so long: at the edge, the server's one-second window fills only as
    the excess of a whole second adds up, and whoever arrives first after a slot frees takes
    it; a paced client arrives there first, so the other program, which retries nothing,
    takes most of the throttles of each meeting before we take one. Fewer meetings are the
    only way to spare it. So a program that stays is met once per ``hold`` (longer with each
    meeting of one run, up to ``hold_max``) plus a fraction of a second, and a program that
    leaves hands the quota back within ``hold_max`` plus under a second (from 70 to 100
    calls/s: ``(30 / (1.0 * 100)) ** (1/3)`` = 0.67 s). A competition cut more than
    ``onset`` seconds after the last one meets a new program: the share measured then still
    counts our calls from before it came, so the rate is cut by ``decrease`` at least. After
    any competition cut the server's window still holds our calls sent above the new rate,
    for a window; the other program's calls would meet a full window all that time, so for
    ``cooldown`` seconds the rate is lower by that excess (see ``cut_to``). Tuned on
    ``tests/network_sim.py`` with a rival at 30 calls/s arriving within 6-20 ms of its pace
    (eight seeds each): holds of 2-3 s and a probe of 0.4 let the rival lose 2-13 calls of
    450; 3-4 s and 1.0, 2-9, with the quota back 2-4 s after it left.
    """

    decrease: float = attrs.field(default=0.7)
    recovery: float = attrs.field(default=0.05)
    floor: float = attrs.field(default=0.05)
    cooldown: float = attrs.field(default=1.0)
    threshold: int = attrs.field(default=2)
    """Throttles within ``cooldown`` seconds that make a cut. A lone throttle is more likely
    one late request (a scheduling hiccup) than a busier quota, which throttles in bunches;
    its retry costs one slot, where a cut would cost seconds of reduced rate."""
    hold: float = attrs.field(default=3.0)
    """Seconds the rate stays at the share a competition cut found before probing upward."""
    hold_max: float = attrs.field(default=4.0)
    """The longest hold: later cuts of one run of competition hold longer, up to this."""
    probe: float = attrs.field(default=1.0)
    """The probe's cubic: ``probe * ceiling`` calls/s gained after one second of probing."""
    onset: float = attrs.field(default=10.0)
    """A competition cut this long after the last one is taken as a new program's arrival."""

    @decrease.validator
    def _check_decrease(self, _: object, value: float) -> None:
        if not 0 < value < 1:
            raise ValueError(f"decrease must be between 0 and 1, got {value!r}")

    @recovery.validator
    def _check_recovery(self, _: object, value: float) -> None:
        if not value > 0:
            raise ValueError(f"recovery must be > 0, got {value!r}")

    @floor.validator
    def _check_floor(self, _: object, value: float) -> None:
        if not 0 < value <= 1:
            raise ValueError(f"floor must be in (0, 1], got {value!r}")

    @cooldown.validator
    def _check_cooldown(self, _: object, value: float) -> None:
        if not value >= 0:
            raise ValueError(f"cooldown must be >= 0, got {value!r}")

    @threshold.validator
    def _check_threshold(self, _: object, value: int) -> None:
        if value < 1:
            raise ValueError(f"threshold must be >= 1, got {value!r}")

    @hold.validator
    @hold_max.validator
    @onset.validator
    def _check_seconds(self, attribute: attrs.Attribute[float], value: float) -> None:
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")

    @probe.validator
    def _check_probe(self, _: object, value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"probe must be a finite number > 0, got {value!r}")


DEFAULT_AIMD = AimdPolicy()
"""The adaptive policy limiters use unless told otherwise."""


class AimdRate:
    """The current rate in calls per second: cut on throttling, regained on success (after a
    bunch of throttles) or by a held, then cubic, probe (after competition).

    ``rate`` is the rate as of the last :meth:`advance`; the limiters advance it to the
    moment they schedule a call.
    """

    def __init__(self, ceiling: float, policy: AimdPolicy | None) -> None:
        self.ceiling = ceiling
        self.policy = policy
        self.rate = ceiling
        self._cut_until = -math.inf
        self._burst_start = -math.inf  # when the current run of throttles began
        self._burst = 0
        self._competed_at = -math.inf  # the last competition cut
        self._competing = 0  # competition cuts in the current run of them
        # While probing after competition: where the cubic starts, and from which rate.
        self._probe: tuple[float, float] | None = None
        # After a competition cut, until ``_drain_until``: the lower rate that drains the
        # server's window of our calls sent above the new rate before the cut.
        self._drain: tuple[float, float] = (-math.inf, 0.0)

    def advance(self, now: float) -> float:
        """The rate at ``now``: held, then probing upward on a cubic after a competition cut."""
        probe, policy = self._probe, self.policy
        if probe is None or policy is None:
            return self.rate
        base, start = probe
        until, drained = self._drain
        if now < until:
            return drained
        if now > start:
            t = now - start
            self.rate = min(self.ceiling, base + policy.probe * self.ceiling * t * t * t)
            if self.rate >= self.ceiling:
                self._probe = None  # the whole quota again: probing is over
        return self.rate

    def throttled(self, now: float, count: int = 1) -> bool:
        """Note ``count`` throttles; cut the rate when they make a bunch. Returns whether cut."""
        policy = self.policy
        if policy is None or now < self._cut_until:
            return False
        if now >= self._burst_start + policy.cooldown:
            self._burst_start, self._burst = now, 0
        self._burst += count
        if self._burst < policy.threshold:
            return False
        self.rate = max(self.ceiling * policy.floor, self.rate * policy.decrease)
        self._cut_until = now + policy.cooldown
        self._burst = 0
        return True

    def succeeded(self, count: int = 1) -> None:
        """Regain ``recovery * ceiling`` per second: ``rate`` successes add that much."""
        policy = self.policy
        if policy is None or self.rate >= self.ceiling or self._probe is not None:
            return  # (while probing after competition, the cubic sets the rate)
        gain = policy.recovery * self.ceiling * count / self.rate
        self.rate = min(self.ceiling, self.rate + gain)

    def cut_to(
        self, now: float, share: float | None, safety: float = 1.0, sent: float | None = None
    ) -> float:
        """Cut for competition: straight to ``share`` when measured, else by ``decrease``.

        ``share`` is the rate at which our calls were accepted just before the throttle: with
        the quota full, that is what the other programs leave us, so the rate lands there at
        once (times ``safety``, just under it) instead of after several cuts; it is then held,
        and probed above on a cubic (see :class:`AimdPolicy`). A share at or above the rate
        puts the edge at the rate itself (a probe met the other program). Unmeasured, or at
        a new program's onset (the share still counts our calls from before it came), the
        rate is cut by ``decrease`` at least. Never below ``floor * ceiling``.

        ``sent``: how many calls we started in the last ``cooldown`` seconds. Those above the
        new rate still fill the server's window, and the other program's calls would meet a
        full window until they leave it: for ``cooldown`` seconds the rate is lower by that
        excess (spread over them), so the window drains. Returns the rate now.
        """
        policy = self.policy or DEFAULT_AIMD
        self.advance(now)
        cut = self.rate * policy.decrease
        # Throttled while our calls got at least the rate: the edge is at the rate itself.
        target = cut if share is None else min(share, self.rate)
        onset = now - self._competed_at > policy.onset
        if onset:
            target = min(target, cut)
            self._competing = 0
        self._competing += 1
        self.rate = max(self.ceiling * policy.floor, target * safety)
        self._cut_until = now + policy.cooldown
        self._competed_at = now
        # A program that stays is met less often: the first hold is ``hold``, later ones
        # half as long again (at most ``hold_max``).
        hold = min(policy.hold_max, policy.hold * 1.5 ** (self._competing - 1))
        self._probe = (self.rate, now + hold)
        self._drain = (-math.inf, 0.0)
        if sent is not None and policy.cooldown > 0:
            excess = max(0.0, sent - self.rate * policy.cooldown) / policy.cooldown
            floor = self.ceiling * policy.floor
            self._drain = (now + policy.cooldown, max(floor, self.rate - excess))
        return self.advance(now)


# --- telling our own jitter from someone else's calls ------------------------------------------


@attrs.frozen
class MarginPolicy:
    """How the window margin learns the network: widen on our own bunching, settle when calm.

    The server counts a call when it *arrives*; calls granted ``1 + margin`` apart in our log
    arrive at least ``1 + margin - spread`` apart, where ``spread`` is how much more one
    request's trip can take than another's. So a margin at least the one-way spread can never
    be throttled by our own calls, and a smaller one only when two trips differ by more than
    it. The margin is therefore widened (``widen`` times, at least ``step`` more, at most
    ``maximum``) when a throttle could be our own bunching, and settles back toward
    ``headroom`` times the widest margin known to have throttled (that memory fading with
    ``memory`` successes) with a time constant of ``settle`` successes. In equilibrium a
    throttle costs ``log(widen)`` and ``settle`` successes win it back: the throttled share
    settles near ``1 / (settle * log(widen))`` of what a fixed too-narrow margin would see.
    """

    base: float = 0.005
    """The narrowest margin: covers the spread of a loopback (timer lateness, the pool)."""
    maximum: float = 0.25
    widen: float = 1.5
    step: float = 0.01
    headroom: float = 1.05
    settle: float = 300.0
    memory: float = 10_000.0
    # Tuned on the simulated network of tests/network_sim.py (3,000 calls, 50 ± 20 ms service,
    # 0-50 ms one-way jitter): a widening of 2 or a headroom of 1.15 overshoots and costs
    # 0.3-0.5% of the quota; a headroom of 1.0 throttles half again as often.

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.base <= self.maximum < 1:
            raise ValueError(
                f"need 0 <= base <= maximum < 1 s, got base={self.base}, maximum={self.maximum}"
            )
        if not self.widen > 1 or not self.headroom >= 1:
            raise ValueError("widen must be > 1 and headroom >= 1")
        if not (self.settle > 0 and self.memory > 0 and self.step >= 0):
            raise ValueError("settle and memory must be > 0, step >= 0")


DEFAULT_MARGIN_POLICY = MarginPolicy()


class LearnedMargin:
    """The window margin now, and the evidence it rests on (see :class:`MarginPolicy`)."""

    def __init__(self, policy: MarginPolicy, initial: float | None = None) -> None:
        self.policy = policy
        self.value = policy.base if initial is None else initial
        self.bad = 0.0  # the widest margin at which our own bunching was throttled
        # Where the current run of widenings started: if it turns out to have been someone
        # else's calls (competition), the margin goes back there.
        self._before: tuple[float, float] | None = None
        self._calm = 0.0

    def widen(self, ceiling: float) -> float:
        """Our own calls may have bunched at the server: widen (up to ``ceiling``)."""
        policy = self.policy
        if self._before is None:
            self._before = (self.value, self.bad)
        self.bad = max(self.bad, self.value)
        wider = max(self.value * policy.widen, self.value + policy.step)
        self.value = min(policy.maximum, max(self.value, ceiling), wider)
        self._calm = 0.0
        return self.value

    def undo_run(self) -> None:
        """The widenings since the last calm spell were competition, not jitter: undo them."""
        if self._before is not None:
            self.value, self.bad = self._before
            self._before = None

    def calm(self, count: int = 1) -> None:
        """``count`` calls went through unthrottled: settle toward the evidence."""
        policy = self.policy
        self.bad *= math.exp(-count / policy.memory)
        target = max(policy.base, min(self.value, self.bad * policy.headroom))
        self.value = target + (self.value - target) * math.exp(-count / policy.settle)
        self._calm += count
        if self._calm >= policy.settle:
            self._before = None  # a calm spell ends a run of widenings


class RoundTrips:
    """Recent round-trip times: their spread bounds the one-way spread from above.

    A round trip is the way out, the service's time and the way back: if these vary
    independently, the spread of the sum is at least that of any part. So no margin wider
    than the round trips' spread (``p95 - p5``) can be explained by jitter: a throttle that
    persists at that margin is someone else spending the quota. ``high()`` (p95) is how long
    answers take, so the share is measured on calls that have had time to be answered.
    """

    def __init__(self, size: int = 256, minimum: int = 32) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._minimum = minimum
        self._fresh = 0
        self._spread = math.inf
        self._high = 0.0

    def add(self, rtt: float) -> None:
        """One round trip, in seconds."""
        self._samples.append(rtt)
        self._fresh += 1

    def _update(self) -> None:
        if self._fresh == 0 or len(self._samples) < self._minimum:
            return
        if self._fresh * 8 < len(self._samples) and math.isfinite(self._spread):
            return  # recomputed after an eighth of the samples are new: O(1) amortised
        ordered = sorted(self._samples)
        n = len(ordered)
        low, high = ordered[n * 5 // 100], ordered[min(n - 1, n * 95 // 100)]
        self._spread, self._high, self._fresh = high - low, high, 0

    def spread(self) -> float:
        """p95 - p5 of the recent round trips (infinite until ``minimum`` are known)."""
        self._update()
        return self._spread

    def high(self) -> float:
        """p95 of the recent round trips (0 until ``minimum`` are known)."""
        self._update()
        return self._high


JITTER = "jitter"
COMPETITION = "competition"


JITTER_RUN = 3
"""Widenings within one second that are taken for competition instead. Bunching by our own
jitter is rare once the margin is near the spread (a few throttles in 3,000 calls at 50 ms of
one-way jitter, tests/network_sim.py), so its widenings come seconds apart; a program that
has just begun spending the quota throttles our calls each time one of its own gets in,
several times a second, and its third throttle ends the run of widenings at once."""


class RecentWidenings:
    """When the last few widenings happened, to tell a run of them (see :data:`JITTER_RUN`)."""

    def __init__(self, span: float = 1.0) -> None:
        self.span = span
        self._times: deque[float] = deque(maxlen=JITTER_RUN - 1)

    def count(self, now: float) -> int:
        """Widenings within ``span`` seconds before ``now``."""
        return sum(1 for at in self._times if now - at < self.span)

    def add(self, now: float) -> None:
        self._times.append(now)

    def clear(self) -> None:
        self._times.clear()


def classify(headroom: float, margin: float, spread: float, maximum: float, recent: int = 0) -> str:
    """Whose calls filled the server's second when a call granted with ``headroom`` was throttled.

    ``headroom``: how much more than one second separated this grant from ours ``limit``
    places before it. Our own calls can only fill a server second if their trips differ by
    more than that, and trips differ by at most ``spread`` (see :class:`RoundTrips`):

    * ``headroom > min(spread, maximum)``: we could not have filled the second ourselves:
      someone else spends the quota (competition);
    * otherwise, while ``margin`` is below that bound: our own calls may have bunched (jitter);
    * with the margin already as wide as the network can explain: competition;
    * and so is the third throttle of a run of widenings within a second (``recent``: the
      widenings before this one, see :data:`JITTER_RUN`).
    """
    bound = min(spread, maximum)
    if headroom > bound or margin >= bound or recent >= JITTER_RUN - 1:
        return COMPETITION
    return JITTER

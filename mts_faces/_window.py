"""The arithmetic of rate limiting, with no I/O: the exact window schedule and the AIMD rate.

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


def call_limit(qps: float) -> int:
    """Calls allowed in one window: a quota of ``qps`` per second admits ``floor(qps)``."""
    if not math.isfinite(qps) or qps < 1:
        raise ValueError(f"qps must be a finite number >= 1, got {qps!r}")
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
    """

    decrease: float = attrs.field(default=0.7)
    recovery: float = attrs.field(default=0.05)
    floor: float = attrs.field(default=0.05)
    cooldown: float = attrs.field(default=1.0)
    threshold: int = attrs.field(default=2)
    """Throttles within ``cooldown`` seconds that make a cut. A lone throttle is more likely
    one late request (a scheduling hiccup) than a busier quota, which throttles in bunches;
    its retry costs one slot, where a cut would cost seconds of reduced rate."""

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


DEFAULT_AIMD = AimdPolicy()
"""The adaptive policy limiters use unless told otherwise."""


class AimdRate:
    """The current rate in calls per second: cut on throttling, regained on success."""

    def __init__(self, ceiling: float, policy: AimdPolicy | None) -> None:
        self.ceiling = ceiling
        self.policy = policy
        self.rate = ceiling
        self._cut_until = -math.inf
        self._burst_start = -math.inf  # when the current run of throttles began
        self._burst = 0

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
        if policy is None or self.rate >= self.ceiling:
            return
        gain = policy.recovery * self.ceiling * count / self.rate
        self.rate = min(self.ceiling, self.rate + gain)

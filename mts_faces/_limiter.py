"""Rate limiting: every attempt the client makes first takes a slot here.

Why not ``aiolimiter.AsyncLimiter(qps, 1)``: it is a leaky bucket, which promises at most
``max_rate + rate * T`` acquisitions in any ``T`` seconds. A full bucket (at start, or after any
lull in demand, such as the backoff after a throttled call) lets up to ``2 * qps`` through in
one second: measured, 187 in one second in the middle of a run, after retries' backoff had
drained the bucket. Configured strict (capacity plus one second's leak at most ``qps``) it
holds, but a capacity of 1 loses throughput to every late wake-up (a timer 1 ms late at 100
calls/s costs 10%), because its next slot counts from the late grant.

So this module keeps an exact log of the last ``qps`` start times (``_window.WindowSchedule``),
which is the window rule itself, and paces calls evenly inside it; a late wake-up delays one
slot a window later instead of every slot after it.

A grant is not an arrival: the server counts requests when they reach it, later by a varying
amount (signing, the HTTP pool, the event loop's other work), and a request that arrives late
can share a second with the one ``qps`` places after it. Hence the window is ``1 s + margin``
(``DEFAULT_MARGIN``), and the windows opened by a new client's first second, whose requests
also open connections, count ``warmup`` longer (``DEFAULT_WARMUP``).

Over a real network the spread is the network's jitter, and it changes; so the margin is
learned (``_window.LearnedMargin``): widened when a throttle may be our own calls bunching at
the server, settled back when calm. A throttle our own calls cannot explain (we were not
sending a full second's worth, or the margin is already as wide as the round trips vary) is
someone else spending the account's quota: only then is the rate cut, straight to the share
our calls were getting (``_window.classify``, ``AimdRate.cut_to``).

Scope: the service counts the quota per account, per region and per API action, so a limiter
keeps one schedule per (region, action); one limiter object serves one account (share it
between the clients of that account). ``RegisterCustomFace`` gets ``qps``; the other actions,
whose limits are not published, get ``action_qps`` or a conservative tenth of ``qps``.

Lanes: each acquire is ``interactive`` (the default) or ``bulk``; a waiting interactive call
takes the next slot ahead of every waiting bulk call, so an interactive call waits about one
pacing slot however deep the bulk queue, and bulk still uses every slot it leaves.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from ._exceptions import ConfigurationError
from ._window import (
    COMPETITION,
    DEFAULT_AIMD,
    DEFAULT_MARGIN_POLICY,
    AimdPolicy,
    AimdRate,
    LearnedMargin,
    MarginPolicy,
    RecentWidenings,
    RoundTrips,
    WindowSchedule,
    call_limit,
    classify,
)

# Extra window length covering the spread of grant-to-arrival delays. Measured on loopback
# (benchmarks/shared_quota.py): 0.4-0.6 ms typical, 1.3-3 ms at the 99th percentile; it costs
# 0.5% of the quota. Over a real network the margin learns from there (``MarginPolicy``).
DEFAULT_MARGIN = 0.005
# Extra for the windows opened by a new limiter's first second of calls: the first request
# also opens a connection and arrived 3-11 ms late on loopback; over TLS to a distant region a
# handshake takes round trips more. Paid once: 50 ms per new limiter.
DEFAULT_WARMUP = 0.05

Priority = Literal["interactive", "bulk"]
INTERACTIVE: Priority = "interactive"
BULK: Priority = "bulk"
PRIORITIES: tuple[Priority, ...] = (INTERACTIVE, BULK)

REGISTER_ACTION = "RegisterCustomFace"
OTHER_ACTION_SHARE = 0.1
"""Actions other than RegisterCustomFace have no published quota: by default a limiter gives
them a tenth of ``qps`` each (10 calls/s for the 100 calls/s account quota)."""
SHARE_SAFETY = 0.97
"""On competition the rate goes to this fraction of the share measured, just under it, so
the additive recovery probes up to the share instead of starting above it."""


def check_margins(margin: float, warmup: float) -> None:
    """Refuse margins that are negative or would stretch the window past two seconds."""
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1) seconds, got {margin!r}")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be in [0, 1) seconds, got {warmup!r}")


def check_priority(priority: str) -> Priority:
    """``priority`` if it names a lane, else a :class:`ConfigurationError` naming the field."""
    if priority not in PRIORITIES:
        raise ConfigurationError(
            f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}"
        )
    return priority


def action_qps_for(action: str, qps: float, action_qps: Mapping[str, float]) -> float:
    """The quota of ``action``: ``action_qps[action]``, ``qps`` for RegisterCustomFace, else
    ``OTHER_ACTION_SHARE * qps`` (at least 1)."""
    if action in action_qps:
        return action_qps[action]
    if action == REGISTER_ACTION:
        return qps
    return max(1.0, qps * OTHER_ACTION_SHARE)


@attrs.frozen
class Grant:
    """One slot a limiter granted: what it was for, and what its feedback must refer to."""

    action: str
    region: str
    at: float
    """When the call was let start, on the limiter's clock."""
    epoch: int
    """How many times the schedule had adapted by then: feedback on a call granted before
    the last adaptation is stale (the schedule already reacted) and changes nothing."""
    headroom: float
    """Seconds beyond one between this start and ours ``limit`` places back."""
    priority: Priority = INTERACTIVE


@runtime_checkable
class Limiter(Protocol):
    """What ``limiter=`` takes: anything with ``async acquire()`` (``aiolimiter.AsyncLimiter``
    included); ``on_success()`` and ``on_throttled()``, when present, are told each outcome.
    An async context manager without ``acquire`` works too (see :class:`LimiterAdapter`)."""

    async def acquire(self) -> Any:
        """Wait until one more call may start now."""


class QuotaLimiter(abc.ABC):
    """Base of this package's limiters: scoped by (region, action), with lanes and grants."""

    @abc.abstractmethod
    async def acquire(
        self,
        *,
        action: str = REGISTER_ACTION,
        region: str = "",
        priority: Priority = INTERACTIVE,
        account: str | None = None,
    ) -> Grant:
        """Wait for a slot of (``account``, ``region``, ``action``) in lane ``priority``."""

    @abc.abstractmethod
    def on_success(self, grant: Grant | None = None) -> None:
        """The call of ``grant`` was answered without throttling."""

    @abc.abstractmethod
    def on_throttled(self, grant: Grant | None = None) -> None:
        """The service throttled the call of ``grant``."""


class LimiterAdapter:
    """The one place that turns what was passed as ``limiter=`` into what the client uses.

    * this package's limiters (:class:`QuotaLimiter`) get the action, region, account and lane,
      and feedback tied to the grant;
    * any object with ``acquire()`` (awaited when it returns an awaitable, as
      ``aiolimiter.AsyncLimiter``'s does) gets a plain ``acquire()``, and ``on_success()`` /
      ``on_throttled()`` only if it has them;
    * an async context manager without ``acquire`` is entered and left before each call
      (a rate limiter's exit releases nothing).
    """

    def __init__(self, limiter: object) -> None:
        self.limiter = limiter
        self._ours = limiter if isinstance(limiter, QuotaLimiter) else None
        self._acquire: Callable[[], Any] | None = getattr(limiter, "acquire", None)
        has_cm = hasattr(limiter, "__aenter__") and hasattr(limiter, "__aexit__")
        if not callable(self._acquire):
            self._acquire = None
            if not has_cm:
                raise ConfigurationError(
                    f"limiter must have an async acquire() or be an async context manager, "
                    f"got {type(limiter).__name__}"
                )
        self._on_success = _optional(limiter, "on_success")
        self._on_throttled = _optional(limiter, "on_throttled")

    async def acquire(
        self, *, action: str, region: str, priority: Priority, account: str | None
    ) -> Grant | None:
        """Wait for a slot; this package's limiters return the :class:`Grant`."""
        if self._ours is not None:
            return await self._ours.acquire(
                action=action, region=region, priority=priority, account=account
            )
        if self._acquire is not None:
            result = self._acquire()
            if inspect.isawaitable(result):
                await result
            return None
        async with self.limiter:  # type: ignore[attr-defined]
            return None

    def feedback(self, grant: Grant | None, *, throttled: bool) -> None:
        """Tell the limiter how the call went (a no-op for limiters that take no feedback)."""
        if self._ours is not None:
            if throttled:
                self._ours.on_throttled(grant)
            else:
                self._ours.on_success(grant)
            return
        hook = self._on_throttled if throttled else self._on_success
        if hook is not None:
            hook()


def _optional(limiter: object, name: str) -> Callable[[], Any] | None:
    hook = getattr(limiter, name, None)
    return hook if callable(hook) else None


class _Scope:
    """One (region, action) schedule: the window log, the rate, the margin, the lanes."""

    def __init__(
        self,
        qps: float,
        margin: float,
        adaptive: AimdPolicy | None,
        learn: MarginPolicy | None,
    ) -> None:
        self.limit = call_limit(qps)
        self.schedule = WindowSchedule(self.limit, 1.0 + margin)
        self.rate = AimdRate(qps, adaptive)
        self.margin = None if learn is None else LearnedMargin(learn, margin)
        self.trips = RoundTrips()
        self.widenings = RecentWidenings()
        self.epoch = 0
        self.cut_settles = -math.inf  # calls granted before this met the last cut's window
        self.first: float | None = None  # the first start
        self.cold_until: float | None = None  # end of the first second of calls
        self.accepted: deque[float] = deque(maxlen=4 * self.limit)  # grants answered OK
        self.waiters: dict[Priority, deque[asyncio.Future[None]]] = {
            INTERACTIVE: deque(),
            BULK: deque(),
        }
        # The waiter released and not yet resumed: nobody else starts until it has taken its
        # slot or given it up, which keeps each lane FIFO and the log exact.
        self.woken: asyncio.Future[None] | None = None
        self.timer: asyncio.Handle | None = None  # the pending call to dispatch

    def interval(self, now: float) -> float:
        return self.schedule.window / self.rate.advance(now)

    def rate_cooldown(self) -> float:
        return (self.rate.policy or DEFAULT_AIMD).cooldown

    def set_margin(self) -> None:
        if self.margin is not None:
            self.schedule.window = 1.0 + self.margin.value

    def share(self, now: float) -> float | None:
        """Our accepted calls per second over the last window whose answers are all in."""
        if self.first is None:
            return None
        end = now - self.trips.high()
        start = end - self.schedule.window
        if start < self.first:
            return None  # not a whole window of our calls yet
        count = sum(1 for at in self.accepted if start < at <= end)
        return count / self.schedule.window


class WindowLimiter(QuotaLimiter):
    """At most ``floor(qps)`` calls start in any ``1 + margin`` seconds, evenly paced.

    One schedule per (region, action): ``qps`` for RegisterCustomFace, ``action_qps`` or a
    tenth of ``qps`` for the others. In each, waiting ``interactive`` calls go before
    waiting ``bulk`` ones, each lane first come, first served.

    ``margin``: the narrowest window margin, where it starts; ``learn`` (None: fixed margin)
    says how it widens on throttles our own calls may have caused and settles when calm.
    ``adaptive`` (None: never) cuts the rate when throttling comes from someone else's calls,
    to the share left to us, and regains it on success; :attr:`current_rate` shows where it
    is. Calls in the first second count ``warmup`` longer (connections are being opened).
    One event loop per limiter; ``clock`` (seconds, advancing with the loop's time) defaults
    to the loop's. One limiter stands for one account: share it between that account's
    clients.
    """

    def __init__(
        self,
        qps: float = 100.0,
        *,
        margin: float = DEFAULT_MARGIN,
        warmup: float = DEFAULT_WARMUP,
        adaptive: AimdPolicy | None = DEFAULT_AIMD,
        learn: MarginPolicy | None = DEFAULT_MARGIN_POLICY,
        action_qps: Mapping[str, float] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        check_margins(margin, warmup)
        call_limit(qps)
        self.qps = qps
        self.margin = margin
        self.warmup = warmup
        self.adaptive = adaptive
        self.learn = None if learn is None else attrs.evolve(learn, base=min(margin, learn.base))
        if self.learn is not None and margin > self.learn.maximum:
            raise ValueError(f"margin {margin!r} is wider than learn.maximum")
        self.action_qps = dict(action_qps or {})
        for name, value in self.action_qps.items():
            try:
                call_limit(value)
            except ValueError as exc:
                raise ValueError(f"action_qps[{name!r}]: {exc}") from None
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scopes: dict[tuple[str, str], _Scope] = {}
        self._default = self._scope("", REGISTER_ACTION)

    def __repr__(self) -> str:
        return (
            f"WindowLimiter(qps={self.qps!r}, margin={self.margin!r}, warmup={self.warmup!r}, "
            f"current_rate={self.current_rate:.2f}, current_margin={self.current_margin:.4f})"
        )

    @property
    def current_rate(self) -> float:
        """RegisterCustomFace's rate now (in the region last used), in calls per second:
        ``qps`` unless competition cut it."""
        return self._default.rate.advance(self._now())

    @property
    def current_margin(self) -> float:
        """RegisterCustomFace's window margin now (in the region last used), in seconds."""
        return self._default.schedule.window - 1.0

    def rate_of(self, action: str, region: str = "") -> float:
        """The current rate of one (region, action) schedule."""
        return self._scope(region, action).rate.advance(self._now())

    def margin_of(self, action: str, region: str = "") -> float:
        """The current window margin of one (region, action) schedule."""
        return self._scope(region, action).schedule.window - 1.0

    async def acquire(
        self,
        *,
        action: str = REGISTER_ACTION,
        region: str = "",
        priority: Priority = INTERACTIVE,
        account: str | None = None,
    ) -> Grant:
        """Wait for a slot; returns at the moment the call may start.

        ``account`` is accepted for the common interface and ignored: this object is one
        account's limiter.
        """
        lane = check_priority(priority)
        scope = self._scope(region, action)
        if action == REGISTER_ACTION:
            self._default = scope  # what current_rate reports, and grant-less feedback hits
        loop = self._bind_loop()
        fut: asyncio.Future[None] = loop.create_future()
        scope.waiters[lane].append(fut)
        if scope.woken is None and scope.timer is None:
            # Even when a slot is free, release through the event loop, never synchronously:
            # the start is then logged after the work already queued has run (such as the
            # thousands of tasks one gather just created). Logged before it, the start would
            # precede the request's send by all of it: 40-45 ms measured for 3,000 tasks.
            scope.timer = loop.call_soon(self._on_timer, scope)
        while True:
            try:
                await fut
            except asyncio.CancelledError:
                if fut is scope.woken:
                    # Released, then cancelled before it resumed: hand the turn on.
                    scope.woken = None
                    self._dispatch(scope)
                # A cancelled waiter still queued is skipped when it reaches the head.
                raise
            scope.woken = None
            now = self._now()
            if scope.schedule.earliest(now, scope.interval(now)) <= now:
                grant = self._take(scope, now, action, region, lane)
                self._dispatch(scope)
                return grant
            # The rate or margin changed between release and resumption, so the slot moved:
            # wait again, still first in its lane.
            fut = loop.create_future()
            scope.waiters[lane].appendleft(fut)
            self._dispatch(scope)

    def on_success(self, grant: Grant | None = None) -> None:
        """Feedback: a call answered without throttling (regains rate, calms the margin)."""
        scope = self._default if grant is None else self._scope(grant.region, grant.action)
        scope.rate.succeeded()
        if scope.margin is not None:
            scope.margin.calm()
            scope.set_margin()
        if grant is not None:
            scope.trips.add(self._now() - grant.at)
            scope.accepted.append(grant.at)

    def on_throttled(self, grant: Grant | None = None) -> None:
        """Feedback: the service throttled a call.

        With its grant: stale feedback (granted before the last adaptation; for a rate cut,
        within a window after it, while the server still counts calls sent before the cut)
        changes nothing; else :func:`_window.classify` decides: our own bunching widens the
        margin, someone else's calls cut the rate to our share (and undo the widenings they
        caused). Without a grant (a caller that cannot tell which call), a bunch of throttles
        cuts the rate.
        """
        now = self._now()
        if grant is None:
            self._default.rate.throttled(now)
            return
        scope = self._scope(grant.region, grant.action)
        scope.trips.add(now - grant.at)
        if grant.epoch != scope.epoch:
            return
        spread = scope.trips.spread()
        margin = scope.margin
        maximum = margin.policy.maximum if margin is not None else 0.0
        current = margin.value if margin is not None else math.inf
        recent = scope.widenings.count(now)
        verdict = classify(grant.headroom, current, spread, maximum, recent)
        if verdict == COMPETITION or margin is None:
            if scope.rate.policy is None or grant.at < scope.cut_settles:
                # The server still counts a window of calls sent before the last cut: a
                # throttle now says nothing about the new rate.
                return
            scope.cut_settles = now + scope.schedule.window
            scope.widenings.clear()
            if margin is not None:
                margin.undo_run()
                scope.set_margin()
            share = scope.share(now)
            sent = scope.schedule.started_since(now - scope.rate_cooldown())
            scope.rate.cut_to(now, share, SHARE_SAFETY, sent=sent)
        else:
            margin.widen(min(spread, margin.policy.maximum))
            scope.widenings.add(now)
            scope.set_margin()
        scope.epoch += 1
        if scope.timer is not None or scope.woken is None:
            self._dispatch(scope)

    # --- internals ------------------------------------------------------------------------

    def _scope(self, region: str, action: str) -> _Scope:
        key = (region, action)
        scope = self._scopes.get(key)
        if scope is None:
            qps = action_qps_for(action, self.qps, self.action_qps)
            scope = self._scopes[key] = _Scope(qps, self.margin, self.adaptive, self.learn)
        return scope

    def _take(self, scope: _Scope, now: float, action: str, region: str, lane: Priority) -> Grant:
        if scope.cold_until is None:
            scope.first = now
            scope.cold_until = now + scope.schedule.window
        extra = self.warmup if now < scope.cold_until else 0.0
        headroom = scope.schedule.headroom(now)
        scope.schedule.take(now, scope.interval(now), extra)
        return Grant(action, region, now, scope.epoch, headroom, lane)

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        if self._loop is not None:
            return self._loop.time()
        return time.monotonic()

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():
            # A closed loop's waiters can never resume; start over on the new one.
            self._loop = loop
            for scope in self._scopes.values():
                for waiters in scope.waiters.values():
                    waiters.clear()
                scope.woken = None
                scope.timer = None
        elif self._loop is not loop:
            raise RuntimeError("a WindowLimiter serves one event loop; create one per loop")
        return loop

    def _dispatch(self, scope: _Scope) -> None:
        """Release the head waiter (interactive first) if its slot has come, else set a timer."""
        if scope.timer is not None:
            scope.timer.cancel()
            scope.timer = None
        if scope.woken is not None:
            return
        head: deque[asyncio.Future[None]] | None = None
        for lane in PRIORITIES:
            waiters = scope.waiters[lane]
            while waiters and waiters[0].done():
                waiters.popleft()  # cancelled while queued: takes nothing
            if waiters:
                head = waiters
                break
        if head is None:
            return
        now = self._now()
        at = scope.schedule.earliest(now, scope.interval(now))
        if at <= now:
            scope.woken = head.popleft()
            scope.woken.set_result(None)
        else:
            assert self._loop is not None
            scope.timer = self._loop.call_later(at - now, self._on_timer, scope)

    def _on_timer(self, scope: _Scope) -> None:
        scope.timer = None
        self._dispatch(scope)


class LaneSemaphore:
    """The client's connection slots, by lane: bulk calls leave ``reserve`` of ``capacity``
    to interactive ones, and a freed slot goes to a waiting interactive call first.

    A call holds its connection slot while it waits for its rate slot (so no rate slot is
    spent queueing for the pool); without a reserve, a saturating bulk run holds every
    connection slot and an interactive call would queue behind it before even reaching the
    limiter's lanes.
    """

    def __init__(self, capacity: int, reserve: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.reserve = min(capacity - 1, max(1, capacity // 16)) if reserve is None else reserve
        self._in_use = 0
        self._waiters: dict[Priority, deque[asyncio.Future[None]]] = {
            INTERACTIVE: deque(),
            BULK: deque(),
        }

    def _room(self, lane: Priority) -> bool:
        limit = self.capacity if lane == INTERACTIVE else self.capacity - self.reserve
        return self._in_use < limit

    async def acquire(self, lane: Priority = INTERACTIVE) -> None:
        """Wait for a connection slot in ``lane``."""
        ahead = self._waiters[INTERACTIVE] if lane == BULK else ()
        if self._room(lane) and not self._waiters[lane] and not ahead:
            self._in_use += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[lane].append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted, then cancelled before it resumed: give it back
            raise

    def release(self) -> None:
        """Give a slot back, to the first waiting interactive call, else bulk if room."""
        self._in_use -= 1
        self._wake()

    def _wake(self) -> None:
        for lane in PRIORITIES:
            waiters = self._waiters[lane]
            while waiters and self._room(lane):
                fut = waiters.popleft()
                if not fut.done():
                    self._in_use += 1
                    fut.set_result(None)
            if waiters:
                return  # this lane still waits: nothing for the lanes below it

    @contextlib.asynccontextmanager
    async def hold(self, lane: Priority = INTERACTIVE) -> AsyncIterator[None]:
        """``async with slots.hold(lane):`` one connection slot for the block."""
        await self.acquire(lane)
        try:
            yield
        finally:
            self.release()

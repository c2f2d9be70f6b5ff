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
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ._window import DEFAULT_AIMD, AimdPolicy, AimdRate, WindowSchedule, call_limit

# Extra window length covering the spread of grant-to-arrival delays. Measured on loopback
# (benchmarks/shared_quota.py): 0.4-0.6 ms typical, 1.3-3 ms at the 99th percentile; it costs
# 0.5% of the quota.
DEFAULT_MARGIN = 0.005
# Extra for the windows opened by a new limiter's first second of calls: the first request
# also opens a connection and arrived 3-11 ms late on loopback; over TLS to a distant region a
# handshake takes round trips more. Paid once: 50 ms per new limiter.
DEFAULT_WARMUP = 0.05


def check_margins(margin: float, warmup: float) -> None:
    """Refuse margins that are negative or would stretch the window past two seconds."""
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1) seconds, got {margin!r}")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be in [0, 1) seconds, got {warmup!r}")


@runtime_checkable
class Limiter(Protocol):
    """What the client needs of a rate limiter: a slot per attempt, and feedback."""

    async def acquire(self) -> None:
        """Wait until one more call may start now."""

    def on_success(self) -> None:
        """The call that took the last slot was answered without throttling."""

    def on_throttled(self) -> None:
        """The service throttled a call: the account quota is busier than we thought."""


class WindowLimiter:
    """At most ``floor(qps)`` calls start in any ``1 + margin`` seconds, evenly paced, FIFO.

    Adaptive (unless ``adaptive=None``): bunched throttled answers cut the rate, successes
    bring it back up to ``qps``; :attr:`current_rate` shows where it is. Calls in the first
    second count ``warmup`` longer (connections are being opened). One event loop per
    limiter; ``clock`` (seconds, advancing with the loop's time) defaults to the loop's.
    """

    def __init__(
        self,
        qps: float = 100.0,
        *,
        margin: float = DEFAULT_MARGIN,
        warmup: float = DEFAULT_WARMUP,
        adaptive: AimdPolicy | None = DEFAULT_AIMD,
        clock: Callable[[], float] | None = None,
    ) -> None:
        check_margins(margin, warmup)
        self.qps = qps
        self.margin = margin
        self.warmup = warmup
        self._cold_until: float | None = None  # end of the first second of calls
        self._schedule = WindowSchedule(call_limit(qps), 1.0 + margin)
        self._rate = AimdRate(qps, adaptive)
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        # The waiter released and not yet resumed: nobody else starts until it has taken its
        # slot or given it up, which keeps FIFO order and the log exact.
        self._woken: asyncio.Future[None] | None = None
        self._timer: asyncio.Handle | None = None  # the pending call to _dispatch

    def __repr__(self) -> str:
        return (
            f"WindowLimiter(qps={self.qps!r}, margin={self.margin!r}, warmup={self.warmup!r}, "
            f"current_rate={self.current_rate:.2f})"
        )

    @property
    def current_rate(self) -> float:
        """The rate now allowed, in calls per second (``qps`` unless throttling cut it)."""
        return self._rate.rate

    async def acquire(self) -> None:
        """Wait for a slot; returns at the moment the call may start."""
        loop = self._bind_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        if self._woken is None and self._timer is None:
            # Even when a slot is free, release through the event loop, never synchronously:
            # the start is then logged after the work already queued has run (such as the
            # thousands of tasks one gather just created). Logged before it, the start would
            # precede the request's send by all of it: 40-45 ms measured for 3,000 tasks.
            self._timer = loop.call_soon(self._on_timer)
        while True:
            try:
                await fut
            except asyncio.CancelledError:
                if fut is self._woken:
                    # Released, then cancelled before it resumed: hand the turn on.
                    self._woken = None
                    self._dispatch()
                # A cancelled waiter still queued is skipped when it reaches the head.
                raise
            self._woken = None
            now = self._now()
            if self._may_start(now):
                self._take(now)
                self._dispatch()
                return
            # The rate was raised between release and resumption, so pacing moved: wait again,
            # still first in line.
            fut = loop.create_future()
            self._waiters.appendleft(fut)
            self._dispatch()

    def on_success(self) -> None:
        """Feedback: one call answered without throttling (regains rate)."""
        self._rate.succeeded()

    def on_throttled(self) -> None:
        """Feedback: the service throttled a call (a bunch of them cuts the rate)."""
        self._rate.throttled(self._now())

    # --- internals ------------------------------------------------------------------------

    def _interval(self) -> float:
        return self._schedule.window / self._rate.rate

    def _may_start(self, now: float) -> bool:
        return self._schedule.earliest(now, self._interval()) <= now

    def _take(self, now: float) -> None:
        if self._cold_until is None:
            self._cold_until = now + self._schedule.window
        extra = self.warmup if now < self._cold_until else 0.0
        self._schedule.take(now, self._interval(), extra)

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
            self._waiters.clear()
            self._woken = None
            self._timer = None
        elif self._loop is not loop:
            raise RuntimeError("a WindowLimiter serves one event loop; create one per loop")
        return loop

    def _dispatch(self) -> None:
        """Release the head waiter if its slot has come, else set one timer for that slot."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._woken is not None:
            return
        waiters = self._waiters
        while waiters and waiters[0].done():
            waiters.popleft()  # cancelled while queued: takes nothing
        if not waiters:
            return
        now = self._now()
        at = self._schedule.earliest(now, self._interval())
        if at <= now:
            self._woken = waiters.popleft()
            self._woken.set_result(None)
        else:
            assert self._loop is not None
            self._timer = self._loop.call_later(at - now, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

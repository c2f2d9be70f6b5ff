"""The exact window limiter: window cap, pacing, FIFO, cancellation, AIMD; all on fake time.

The async tests run on a ``looptime`` event loop (fake time that jumps to the next timer) with a
power-of-two resolution, so float arithmetic on times stays exact and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import looptime
import pytest
from aiolimiter import AsyncLimiter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mts_faces import AimdPolicy, Limiter, MtsFaceClient, WindowLimiter
from mts_faces._window import AimdRate, WindowSchedule, call_limit, pacing_tolerance

T = TypeVar("T")
RESOLUTION = 2.0**-20


def run_fake(main: Callable[[], Coroutine[Any, Any, T]], *, limit: float = 10_000.0) -> T:
    """Run ``main`` on a fresh fake-time loop; a stall ends it with TimeoutError, not a hang.

    The timeout is a timer on the fake clock: if every task waits and no other timer is left,
    fake time jumps straight to it.
    """

    async def guarded() -> T:
        async with asyncio.timeout(limit):
            return await main()

    loop = looptime.new_event_loop(start=0.0, resolution=RESOLUTION, noop_cycles=1)
    try:
        return loop.run_until_complete(guarded())
    finally:
        loop.close()


def max_in_window(starts: list[float], window: float) -> int:
    """Most starts in any half-open window ``[t, t + window)`` (independent of the limiter)."""
    ordered = sorted(starts)
    return max(
        (bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)), default=0
    )


# --- the pure schedule -----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    qps=st.integers(1, 40),
    margin=st.sampled_from([0.0, 0.001, 0.005, 0.01]),
    gaps=st.lists(st.floats(0, 0.3), min_size=1, max_size=400),
    lateness=st.lists(st.floats(0, 0.004), min_size=1, max_size=50),
    rates=st.lists(st.floats(0.3, 1.0), min_size=1, max_size=10),
    extras=st.lists(st.sampled_from([0.0, 0.0, 0.05]), min_size=1, max_size=10),
)
def test_schedule_never_exceeds_the_window_whatever_the_arrivals_lateness_and_rate(
    qps: int,
    margin: float,
    gaps: list[float],
    lateness: list[float],
    rates: list[float],
    extras: list[float],
) -> None:
    schedule = WindowSchedule(qps, 1.0 + margin)
    arrival = 0.0
    previous = -math.inf
    starts: list[float] = []
    opened: list[float] = []
    for i, gap in enumerate(gaps):
        arrival += gap
        interval = schedule.window / (qps * rates[i % len(rates)])
        ready = max(arrival, previous)
        # A real timer fires late; the call starts then, and the log records that.
        start = schedule.earliest(ready, interval) + lateness[i % len(lateness)]
        assert schedule.earliest(start, interval) <= start
        extra = extras[i % len(extras)]
        schedule.take(start, interval, extra)
        starts.append(start)
        opened.append(start + extra)
        previous = start
    assert max_in_window(starts, 1.0 + margin) <= qps
    assert starts == sorted(starts)
    # A start logged with an extra opens a window that late: the start ``qps`` places later
    # is a full window after it.
    assert all(starts[i + qps] >= opened[i] + schedule.window for i in range(len(starts) - qps))


def test_schedule_cold_start_paces_instead_of_bursting() -> None:
    schedule = WindowSchedule(100, 1.0)
    interval = 0.01
    starts = []
    now = 0.0
    for _ in range(100):
        now = schedule.earliest(now, interval)
        schedule.take(now, interval)
        starts.append(now)
    # Pacing: within a few slots' tolerance of even spacing, never a burst of the full quota.
    assert max_in_window(starts, 0.1) <= 11
    assert starts[-1] >= 0.99 - pacing_tolerance(interval) * 2


@pytest.mark.parametrize("late_ms", [0.0, 1.0, 2.0])
def test_schedule_sustains_99_percent_with_late_timers(late_ms: float) -> None:
    """Late wake-ups (epoll rounds up to whole ms) must not compound into lost throughput."""
    rng = random.Random(5)
    margin = 0.005
    schedule = WindowSchedule(100, 1.0 + margin)
    interval = schedule.window / 100
    now = 0.0
    starts = []
    while now < 60.0:
        now = schedule.earliest(now, interval) + rng.uniform(0, late_ms / 1000)
        schedule.take(now, interval)
        starts.append(now)
    assert max_in_window(starts, 1.0 + margin) <= 100
    achieved = len(starts) / 60.0
    assert achieved >= 99.0, achieved


def test_schedule_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        WindowSchedule(0, 1.0)
    with pytest.raises(ValueError):
        WindowSchedule(1, 0.0)
    with pytest.raises(ValueError):
        call_limit(0.5)
    with pytest.raises(ValueError):
        call_limit(math.inf)
    assert call_limit(100.9) == 100


# --- AIMD ------------------------------------------------------------------------------------


def test_aimd_cuts_once_per_cooldown_and_recovers_additively() -> None:
    policy = AimdPolicy(decrease=0.5, recovery=0.1, floor=0.2, cooldown=1.0, threshold=1)
    rate = AimdRate(100.0, policy)
    assert rate.throttled(10.0)
    assert rate.rate == 50.0
    assert not rate.throttled(10.5)  # same congestion event: calls sent before the cut
    assert rate.rate == 50.0
    assert rate.throttled(11.0)
    assert rate.rate == 25.0
    assert rate.throttled(12.0)
    assert rate.rate == 20.0  # floor: 0.2 of the ceiling
    # One second of successes at the current rate regains recovery * ceiling = 10 calls/s.
    rate.succeeded(20)
    assert rate.rate == pytest.approx(30.0)
    for _ in range(10_000):
        rate.succeeded()
    assert rate.rate == 100.0


def test_aimd_ignores_a_lone_throttle_but_cuts_on_a_bunch() -> None:
    rate = AimdRate(100.0, AimdPolicy(decrease=0.5, cooldown=1.0, threshold=2))
    assert not rate.throttled(10.0)  # one late request, most likely
    assert not rate.throttled(11.5)  # another, well over a second later: still lone
    assert rate.rate == 100.0
    assert rate.throttled(11.9)  # two within a second: the quota is busier than we thought
    assert rate.rate == 50.0
    assert not rate.throttled(12.0)  # answers to calls sent before the cut
    assert not rate.throttled(12.5)
    assert rate.rate == 50.0
    assert not rate.throttled(13.0)  # after the cooldown, a bunch must form anew
    assert rate.throttled(13.1, count=1)
    assert rate.rate == 25.0
    assert rate.throttled(20.0, count=3)  # several reported at once count as a bunch
    assert rate.rate == 12.5


def test_aimd_disabled_keeps_the_ceiling() -> None:
    rate = AimdRate(100.0, None)
    assert not rate.throttled(0.0)
    assert rate.rate == 100.0


def test_aimd_policy_validates() -> None:
    bad_values: list[dict[str, Any]] = [
        {"decrease": 1.0},
        {"recovery": 0.0},
        {"floor": 0.0},
        {"cooldown": -1.0},
        {"threshold": 0},
    ]
    for bad in bad_values:
        with pytest.raises(ValueError):
            AimdPolicy(**bad)


# --- the async limiter on fake time ----------------------------------------------------------


async def _scenario(
    limiter: WindowLimiter, arrivals: list[float], cancels: list[float | None]
) -> tuple[list[tuple[float, float]], int]:
    """Start task i at ``arrivals[i]``; cancel it ``cancels[i]`` later if still waiting.

    Returns (call time, start time) of the calls that got a slot, in the order they got it,
    and how many were cancelled.
    """
    loop = asyncio.get_running_loop()
    started: list[tuple[float, float]] = []

    async def one(at: float) -> None:
        await asyncio.sleep(at - loop.time())
        called = loop.time()
        await limiter.acquire()
        started.append((called, loop.time()))

    tasks = [loop.create_task(one(at)) for at in arrivals]
    for task, at, after in zip(tasks, arrivals, cancels, strict=True):
        if after is not None:
            loop.call_at(at + after, task.cancel)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
    return started, cancelled


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    qps=st.integers(1, 30),
    margin=st.sampled_from([0.0, 0.005]),
    warmup=st.sampled_from([0.0, 0.05]),
    calls=st.lists(
        st.tuples(
            st.floats(0, 0.5),  # gap since the previous arrival
            st.one_of(st.none(), st.none(), st.floats(0, 2.0)),  # cancel after, or never
        ),
        min_size=1,
        max_size=150,
    ),
)
def test_async_window_fifo_and_cancellation_for_random_arrivals(
    qps: int, margin: float, warmup: float, calls: list[tuple[float, float | None]]
) -> None:
    arrivals: list[float] = []
    at = 0.0
    for gap, _ in calls:
        # Snap to the fake clock's grid so arrivals are exact on it.
        at = round((at + gap) / RESOLUTION) * RESOLUTION
        arrivals.append(at)
    cancels = [after for _, after in calls]
    limiter = WindowLimiter(qps, margin=margin, warmup=warmup, adaptive=None)

    started, cancelled = run_fake(lambda: _scenario(limiter, arrivals, cancels))

    # Everyone not cancelled got a slot: a cancelled waiter never stalls the rest.
    assert len(started) + cancelled == len(arrivals)
    times = [t for _, t in started]
    assert max_in_window(times, 1.0 + margin) <= qps
    # FIFO: slots go out in the order acquire() was called.
    called = [c for c, _ in started]
    assert called == sorted(called)
    # Work-conserving: each start is the earliest the rules allow given the starts before it
    # (cancelled waiters took nothing; the first second's starts count ``warmup`` longer), up
    # to the fake clock's tick.
    replay = WindowSchedule(qps, 1.0 + margin)
    interval = replay.window / qps
    previous = -math.inf
    cold_until = started[0][1] + replay.window if started else 0.0
    for call, start in started:
        expected = replay.earliest(max(call, previous), interval)
        assert start == pytest.approx(expected, abs=4 * RESOLUTION)
        replay.take(start, interval, warmup if start < cold_until else 0.0)
        previous = start


def test_async_cold_start_has_no_burst_and_paces_evenly() -> None:
    limiter = WindowLimiter(100, margin=0.0, warmup=0.0, adaptive=None)
    started, _ = run_fake(lambda: _scenario(limiter, [0.0] * 300, [None] * 300))
    times = [t for _, t in started]
    assert max_in_window(times, 1.0) == 100
    assert max_in_window(times, 0.1) <= 11
    # Sustained: 300 calls at 100/s take 3 windows, not more.
    assert times[-1] == pytest.approx(2.99, abs=0.01)


def test_warmup_stretches_only_the_windows_the_first_second_opened() -> None:
    limiter = WindowLimiter(100, margin=0.0, warmup=0.05, adaptive=None)
    started, _ = run_fake(lambda: _scenario(limiter, [0.0] * 400, [None] * 400))
    times = [t for _, t in started]
    # Each of the first second's calls is followed, 100 calls later, by one at least a second
    # and the warm-up after it: a first request delayed by up to 50 ms (new connections) still
    # cannot share a second with the call 100 places later.
    assert all(times[i + 100] - times[i] >= 1.05 - 1e-9 for i in range(100))
    # The cost is paid once: later windows are a plain second (400 calls in 3.99 + 0.05 s).
    assert times[-1] == pytest.approx(4.04, abs=0.01)


def test_a_waiter_cancelled_after_release_hands_its_turn_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> tuple[list[float], float]:
        loop = asyncio.get_running_loop()
        limiter = WindowLimiter(1, margin=0.0, warmup=0.0, adaptive=None)
        await limiter.acquire()  # t=0: the only slot of this window
        first = loop.create_task(limiter.acquire())
        await asyncio.sleep(0)
        scope = limiter._default
        target = scope.waiters["interactive"][0]
        second_started: list[float] = []

        async def second() -> None:
            await limiter.acquire()
            second_started.append(loop.time())

        task = loop.create_task(second())
        await asyncio.sleep(0)
        real_dispatch = limiter._dispatch

        def dispatch_then_cancel(scope_: Any) -> None:
            real_dispatch(scope_)
            if scope.woken is target and not first.done():
                # Cancelled after its release, before it could resume and take the slot.
                first.cancel()

        monkeypatch.setattr(limiter, "_dispatch", dispatch_then_cancel)
        with pytest.raises(asyncio.CancelledError):
            await first
        await task
        third_at = loop.time()
        await limiter.acquire()
        return second_started, loop.time() - third_at

    second_started, third_wait = run_fake(main)
    # The second waiter got the slot the first gave up, at t=1 (no stall) ...
    assert second_started == [pytest.approx(1.0, abs=4 * RESOLUTION)]
    # ... and the first took nothing: the next slot is one window after the second's.
    assert third_wait == pytest.approx(1.0, abs=4 * RESOLUTION)


async def test_a_free_slot_is_logged_after_the_work_already_queued() -> None:
    """The start is logged when the caller resumes, not before the tasks queued ahead of it."""
    work = [0.0]  # a clock that only the queued tasks move: each step "takes" one second
    limiter = WindowLimiter(1, margin=0.0, warmup=0.0, adaptive=None, clock=lambda: work[0])

    async def busy() -> None:
        work[0] += 1.0

    async def first() -> float:
        await limiter.acquire()
        return work[0]

    caller = asyncio.create_task(first())
    queued = [asyncio.create_task(busy()) for _ in range(5)]
    assert await caller == 5.0
    await asyncio.gather(*queued)
    # And what was logged is that resumption time: the next slot is a window after it.
    assert limiter._default.schedule.earliest(5.0, 1.0) == 6.0


def test_ten_thousand_waiters_cost_linear_work() -> None:
    def clock_calls(n: int) -> int:
        calls = 0

        async def main() -> None:
            nonlocal calls
            loop = asyncio.get_running_loop()

            def clock() -> float:
                nonlocal calls
                calls += 1
                return loop.time()

            limiter = WindowLimiter(1000, margin=0.0, warmup=0.0, adaptive=None, clock=clock)
            await asyncio.gather(*(limiter.acquire() for _ in range(n)))
            assert loop.time() == pytest.approx(n / 1000, abs=0.01)

        run_fake(main)
        return calls

    small, large = clock_calls(2_000), clock_calls(10_000)
    # A fixed number of clock reads per waiter, whatever the queue length.
    assert large <= 6 * 10_000
    assert large / small <= 5 * 1.1


def test_throttling_lowers_the_paced_rate_and_successes_restore_it() -> None:
    async def main() -> tuple[float, float, int, float]:
        loop = asyncio.get_running_loop()
        policy = AimdPolicy(decrease=0.5, recovery=0.1, floor=0.1, cooldown=1.0, threshold=2)
        limiter = WindowLimiter(100, margin=0.0, warmup=0.0, adaptive=policy)
        limiter.on_throttled()
        limiter.on_throttled()  # a bunch of two: one cut
        limiter.on_throttled()  # within the cooldown: no further cut
        cut = limiter.current_rate
        t0 = loop.time()
        starts = []
        for _ in range(200):
            await limiter.acquire()
            starts.append(loop.time() - t0)
        in_first_second = sum(1 for t in starts if t < 1.0)
        for _ in range(1000):
            limiter.on_success()
        return cut, limiter.current_rate, in_first_second, starts[-1]

    cut, restored, in_first_second, last = run_fake(main)
    assert cut == 50.0
    # 50 calls/s, plus at most the one call the pacing tolerance lets start half a slot early.
    assert 50 <= in_first_second <= 51
    assert last == pytest.approx(3.98, abs=0.01)
    assert restored == 100.0


def test_limiter_serves_one_loop_at_a_time() -> None:
    limiter = WindowLimiter(5, adaptive=None)
    run_fake(limiter.acquire)
    run_fake(limiter.acquire)  # the first loop is closed: the limiter moves to the new one
    first = looptime.new_event_loop(start=0.0, resolution=RESOLUTION)
    second = looptime.new_event_loop(start=0.0, resolution=RESOLUTION)
    try:
        first.run_until_complete(limiter.acquire())
        # Bound to a loop that is still open: another loop is refused, not silently mixed in.
        with pytest.raises(RuntimeError, match="one event loop"):
            second.run_until_complete(limiter.acquire())
    finally:
        first.close()
        second.close()


def test_aiolimiter_bucket_admits_twice_the_quota_where_ours_does_not() -> None:
    """Why the default changed: a full bucket plus one second's leak in one window."""

    async def count(acquire: Callable[[], Awaitable[Any]]) -> int:
        loop = asyncio.get_running_loop()
        starts: list[float] = []

        async def one() -> None:
            await acquire()
            starts.append(loop.time())

        await asyncio.gather(*(one() for _ in range(400)))
        return max_in_window(starts, 1.0)

    bucket = AsyncLimiter(100, 1)
    ours = WindowLimiter(100, margin=0.0, warmup=0.0, adaptive=None)
    assert run_fake(lambda: count(bucket.acquire)) >= 199
    assert run_fake(lambda: count(ours.acquire)) == 100


def test_window_limiter_is_a_limiter_and_the_client_default() -> None:
    limiter = WindowLimiter(50)
    assert isinstance(limiter, Limiter)
    assert "50" in repr(limiter)
    client = MtsFaceClient(access_key_id="id", access_key_secret="secret-value", qps=80)
    assert isinstance(client.limiter, WindowLimiter)
    assert client.current_rate == 80.0
    client.limiter.on_throttled()
    client.limiter.on_throttled()
    assert client.current_rate == pytest.approx(56.0)
    with pytest.raises(ValueError):
        WindowLimiter(10, margin=1.5)
    with pytest.raises(ValueError):
        WindowLimiter(10, warmup=-0.1)

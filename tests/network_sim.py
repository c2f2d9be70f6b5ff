"""A simulated account quota behind a jittery network, on fake time, for the limiter tests.

Each call takes a slot from the limiter, travels ``uniform(0, jitter)`` to the server, meets
the emulator's own quota gate (with the emulator's own rival program spending the same
quota), and its answer comes back after the service time and another trip; a throttled call is
retried. Everything runs on a ``looptime`` loop, so a 3,000-call run takes a fraction of a
second and its figures are exact and repeatable.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import attrs
import looptime

from mts_faces._limiter import BULK, INTERACTIVE, Grant, LaneSemaphore, QuotaLimiter
from mts_faces.emulator._window import Quota, Rival, SlidingWindow

T = TypeVar("T")
RESOLUTION = 2.0**-20
ACTION = "RegisterCustomFace"


def run_fake(main: Callable[[], Coroutine[Any, Any, T]], *, limit: float = 100_000.0) -> T:
    """Run ``main`` on a fresh fake-time loop; a stall ends it with TimeoutError."""

    async def guarded() -> T:
        async with asyncio.timeout(limit):
            return await main()

    loop = looptime.new_event_loop(start=0.0, resolution=RESOLUTION, noop_cycles=1)
    try:
        return loop.run_until_complete(guarded())
    finally:
        loop.close()


@attrs.define
class SimResult:
    """What the server and the limiter saw."""

    accepted: int = 0
    throttled: int = 0
    rival_accepted: int = 0
    rival_throttled: int = 0
    peak: int = 0
    end: float = 0.0
    accepted_at: list[float] = attrs.Factory(list)
    rates: list[tuple[float, float]] = attrs.Factory(list)  # (time, limiter rate)
    margins: list[tuple[float, float]] = attrs.Factory(list)
    waits: dict[str, list[float]] = attrs.Factory(lambda: {INTERACTIVE: [], BULK: []})

    def rate_between(self, start: float, end: float) -> float:
        """Our accepted calls per second in ``[start, end)``."""
        return sum(1 for t in self.accepted_at if start <= t < end) / (end - start)


async def simulate(
    limiter: QuotaLimiter,
    *,
    calls: int,
    jitter: float,
    qps: int = 100,
    service: tuple[float, float] = (0.03, 0.07),
    rival_qps: float = 0.0,
    rival_start: float = 0.0,
    rival_duration: float | None = None,
    concurrency: int = 64,
    interactive_every: float | None = None,
    seed: int = 1,
) -> SimResult:
    """Run ``calls`` bulk calls (and, every ``interactive_every`` s, an interactive one)."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    quota = Quota(qps)
    rival = Rival(rival_qps, rival_start, rival_duration, False) if rival_qps else None
    result = SimResult()
    window = SlidingWindow()
    slots = LaneSemaphore(concurrency)  # as the client holds its connection slots
    done = asyncio.Event()
    remaining = [calls]

    def gate(now: float) -> bool:
        if rival is not None:
            for at in rival.due(now):
                if quota.admit("acct", ACTION, at):
                    result.rival_accepted += 1
                else:
                    result.rival_throttled += 1
        if quota.admit("acct", ACTION, now):
            window.add(now)
            result.accepted_at.append(now)
            return True
        result.throttled += 1
        return False

    async def one(priority: str) -> None:
        while True:
            asked = loop.time()
            async with slots.hold(priority):  # type: ignore[arg-type]
                grant: Grant = await limiter.acquire(priority=priority)  # type: ignore[arg-type]
                result.waits[priority].append(loop.time() - asked)
                await asyncio.sleep(rng.uniform(0, jitter))
                ok = gate(loop.time())
                back = rng.uniform(0, jitter)
                await asyncio.sleep(back + (rng.uniform(*service) if ok else 0.0))
            if ok:
                limiter.on_success(grant)
                result.rates.append((loop.time(), getattr(limiter, "current_rate", 0.0)))
                result.margins.append((loop.time(), getattr(limiter, "current_margin", 0.0)))
                return
            limiter.on_throttled(grant)

    async def bulk() -> None:
        await one(BULK)
        remaining[0] -= 1
        if remaining[0] == 0:
            done.set()

    async def interactive() -> None:
        assert interactive_every is not None
        tasks = []
        while not done.is_set():
            await asyncio.sleep(interactive_every)
            tasks.append(asyncio.create_task(one(INTERACTIVE)))
        await asyncio.gather(*tasks)

    extra = [asyncio.create_task(interactive())] if interactive_every else []
    await asyncio.gather(*(bulk() for _ in range(calls)), *extra)
    result.accepted = len(result.accepted_at)
    result.peak = quota.peak
    result.end = loop.time()
    return result

"""The Redis limiter's scope, lanes across processes, and what it does when Redis fails.

Real ``redis-server`` processes on ephemeral loopback ports; the schedule runs on a fake clock
whose sleep moves it, so nothing here waits on the real clock except Redis restarting.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import random
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from itertools import count, pairwise

import attrs
import pytest
from redis.asyncio import Redis

from mts_faces import Grant, RateLimiterError, RedisWindowLimiter

from .redis_server import REDIS_SERVER, SKIP_REASON, free_port, start_redis

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)
_keys = count()


@pytest.fixture
def server() -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    port = free_port()
    processes = [start_redis(port)]
    yield port, processes
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
async def redis(server: tuple[int, list[subprocess.Popen[bytes]]]) -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=server[0])
    yield client
    await client.aclose()


class SteppingTime:
    """A fake clock that a sleep moves forward: callers take turns, one at a time."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def max_in_window(starts: list[float], window: float) -> int:
    ordered = sorted(round(t * 1_000_000) for t in starts)
    window_us = round(window * 1_000_000)
    return max(
        (bisect.bisect_left(ordered, t + window_us) - i for i, t in enumerate(ordered)), default=0
    )


def new_key() -> str:
    return f"faults-{next(_keys)}-{time.time_ns()}"


async def test_keys_name_account_region_and_action_each_with_its_quota(redis: Redis) -> None:
    fake = SteppingTime()
    key = new_key()
    limiter = RedisWindowLimiter(redis, key=key, qps=100, clock=fake.clock, sleep=fake.sleep)
    for _ in range(3):
        await limiter.acquire(region="cn-beijing", account="LTAIkey1")
        await limiter.acquire(action="ListCustomPersons", region="cn-beijing", account="LTAIkey1")
    names = sorted(k.decode() for k in await redis.keys(f"{{{key}:*"))
    assert names == [
        f"{{{key}:LTAIkey1:cn-beijing:ListCustomPersons}}:log",
        f"{{{key}:LTAIkey1:cn-beijing:ListCustomPersons}}:state",
        f"{{{key}:LTAIkey1:cn-beijing:RegisterCustomFace}}:log",
        f"{{{key}:LTAIkey1:cn-beijing:RegisterCustomFace}}:state",
    ]
    # Listing keeps its own, conservative pace: a tenth of the quota, 10 calls/s.
    fake.now += 10
    start = fake.now
    for _ in range(21):
        await limiter.acquire(action="ListCustomPersons", region="cn-beijing", account="LTAIkey1")
    assert fake.now - start == pytest.approx(2.0, abs=0.06)
    # The limiter's own account name wins over the AccessKeyId a client passes: keys of one
    # account share one schedule.
    named = RedisWindowLimiter(redis, key=key, account="acct", clock=fake.clock, sleep=fake.sleep)
    await named.acquire(account="LTAIkey2")
    assert await redis.exists(f"{{{key}:acct::RegisterCustomFace}}:log")


async def test_an_interactive_call_from_any_process_waits_for_no_more_than_the_bulk_horizon(
    redis: Redis,
) -> None:
    fake = SteppingTime()
    key = new_key()
    other = Redis(connection_pool=redis.connection_pool)
    bulk = RedisWindowLimiter(redis, key=key, qps=100, warmup=0.0, clock=fake.clock)
    interactive = RedisWindowLimiter(other, key=key, qps=100, warmup=0.0, clock=fake.clock)
    scope = bulk._scope(None, "", "RegisterCustomFace")
    # A bulk worker reserves as far as its lane lets it: 50 ms of slots, then is told to wait.
    reserved = []
    while (reply := await bulk._reserve_in(scope, 0.05)).reserved:
        reserved.append(reply.slot)
    assert 5 <= len(reserved) <= 7
    # Another process's interactive call takes the next free slot: right after those.
    grant = await interactive.acquire(priority="interactive")
    assert grant.at - fake.now <= 0.05 + 0.011
    assert grant.at > max(reserved)


async def test_lost_state_restarts_cold_and_paced_never_above_the_quota(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    fake = SteppingTime()
    key = new_key()
    workers = [
        RedisWindowLimiter(
            Redis(connection_pool=redis.connection_pool),
            key=key,
            qps=100,
            clock=fake.clock,
            sleep=fake.sleep,
        )
        for _ in range(2)
    ]
    starts = []
    for i in range(500):
        if i == 250:
            await redis.flushall()  # the state is gone mid-run
        grant = await workers[i % 2].acquire(priority="bulk")
        starts.append(grant.at)
    assert max_in_window(starts, 1.0) <= 100
    assert "was lost; restarting cold and paced" in caplog.text
    # Cold: a gap of a window after the horizon, once; then paced again, not a burst.
    gaps = [b - a for a, b in pairwise(starts)]
    assert max(gaps) == pytest.approx(1.005 + 0.25, abs=0.02)
    assert max_in_window(starts[251:], 0.1) <= 11


async def test_a_redis_blip_makes_callers_wait_and_continue(
    server: tuple[int, list[subprocess.Popen[bytes]]], caplog: pytest.LogCaptureFixture
) -> None:
    port, processes = server
    limiter = RedisWindowLimiter.from_url(f"redis://127.0.0.1:{port}/0", key=new_key(), qps=50)
    try:
        for _ in range(5):
            await limiter.acquire()
        processes[0].terminate()
        processes[0].wait(timeout=10)

        async def come_back() -> None:
            await asyncio.sleep(1.0)
            processes.append(start_redis(port))

        with caplog.at_level(logging.WARNING, logger="mts_faces"):
            back = asyncio.create_task(come_back())
            calls = await asyncio.gather(*(limiter.acquire() for _ in range(10)))
            await back
        assert len(calls) == 10  # every caller waited out the blip, none failed
        assert "Redis unreachable" in caplog.text
        assert "was lost; restarting cold and paced" in caplog.text  # the new one is empty
    finally:
        await limiter.aclose()


async def test_a_redis_that_stays_down_fails_clearly_and_then_at_once(
    server: tuple[int, list[subprocess.Popen[bytes]]],
) -> None:
    port, processes = server
    limiter = RedisWindowLimiter.from_url(
        f"redis://127.0.0.1:{port}/0", key=new_key(), outage_timeout=0.3
    )
    try:
        await limiter.acquire()
        processes[0].terminate()
        processes[0].wait(timeout=10)
        with pytest.raises(RateLimiterError, match="unreachable") as first:
            await limiter.acquire()
        with pytest.raises(RateLimiterError) as second:
            await limiter.acquire()
        assert second.value is first.value  # one error, not a new 30-second wait per caller
    finally:
        await limiter.aclose()


# --- the learned margin and the share, shared ----------------------------------------------


async def test_verdicts_adapt_the_shared_margin_and_rate_once_per_epoch(redis: Redis) -> None:
    fake = SteppingTime()
    key = new_key()
    one, two = (
        RedisWindowLimiter(
            Redis(connection_pool=redis.connection_pool),
            key=key,
            qps=100,
            warmup=0.0,
            clock=fake.clock,
            sleep=fake.sleep,
        )
        for _ in range(2)
    )
    grants = []
    pending: list[tuple[int, Grant]] = []
    rng = random.Random(5)
    for i in range(300):  # three seconds at the full rate: saturated, a full log
        grant = await (one, two)[i % 2].acquire(priority="bulk")
        grants.append(grant)
        pending.append((i % 2, grant))
        # Answers come back after 0-100 ms, so the round trips vary as on a network.
        while pending and (i == 299 or rng.random() < 0.1):
            worker, answered = pending.pop(rng.randrange(len(pending)))
            (one, two)[worker].on_success(answered)
    saturated = grants[-1]
    assert saturated.headroom == pytest.approx(0.005, abs=0.001)
    await two.acquire(priority="bulk")  # sends its feedback so far
    # A throttle right at saturation: our own bunching, the shared margin widens ...
    one.on_throttled(saturated)
    await one.acquire(priority="bulk")
    widened = one.current_margin  # x 1.5, at least 10 ms more, at most the round trips' spread
    assert 0.005 < widened <= 0.015
    await two.acquire(priority="bulk")
    assert two.current_margin == pytest.approx(widened, abs=1e-6)  # ... for every worker
    # A second throttle of a call granted before that widening is stale: nothing changes.
    two.on_throttled(grants[-2])
    await two.acquire(priority="bulk")
    assert two.current_margin == pytest.approx(widened, abs=1e-6)
    # Calm calls settle it back toward the narrowest width that was throttled.
    for _ in range(600):
        grant = await one.acquire(priority="bulk")
        one.on_success(grant)
    assert 0.005 <= one.current_margin < 0.0075
    # Competition: a throttle of a call sent with a second of headroom (far below the quota)
    # cuts the shared rate to what our calls got: here 2 of 3 of the last window's accepted.
    fake.now += 2.0
    for i in range(150):
        grant = await one.acquire(priority="bulk")
        if i % 3 == 2:
            one.on_throttled(attrs.evolve(grant, headroom=math.inf, epoch=grant.epoch + 99))
        else:
            one.on_success(grant)
    late = await one.acquire(priority="bulk")
    one.on_throttled(attrs.evolve(late, headroom=1.0))
    cut_at = fake.now  # the script runs (and cuts) now; the acquire then sleeps to its slot
    await one.acquire(priority="bulk")
    drained = one.current_rate
    await two.acquire(priority="bulk")
    assert two.current_rate == one.current_rate
    # Then, shared, as AimdRate: for a second lower still (our calls sent above the new
    # rate drain from the server's window), held until 3 s (successes add nothing), then a
    # cubic probe, 1.0 * 100 * t**3 calls/s at t s of probing (the default policy).
    fake.now = cut_at + 1.5
    one.on_success(await one.acquire(priority="bulk"))
    await two.acquire(priority="bulk")
    cut = two.current_rate
    assert 55 <= cut <= 70 and drained < cut
    fake.now = cut_at + 2.9
    await one.acquire(priority="bulk")
    assert one.current_rate == pytest.approx(cut, abs=1e-9)
    fake.now = cut_at + 3.5
    await two.acquire(priority="bulk")
    assert two.current_rate == pytest.approx(cut + 100 * 0.5**3, abs=0.5)
    fake.now = cut_at + 5.0  # the whole quota again
    await one.acquire(priority="bulk")
    assert one.current_rate == 100.0

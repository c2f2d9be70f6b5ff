"""The Redis-backed limiter against a real ``redis-server`` on an ephemeral loopback port.

Most tests drive the script's clock (the ``clock`` hook) and a fake sleep, so they check the
shared schedule of many concurrent workers without waiting through real time.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import time
from collections.abc import AsyncIterator, Iterator
from itertools import count
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from mts_faces import AimdPolicy, ConfigurationError, Limiter, RateLimiterError, RedisWindowLimiter
from mts_faces._redis_limiter import MAX_DRIFT, ServerClock
from mts_faces._window import WindowSchedule

from .redis_server import REDIS_SERVER, SKIP_REASON, free_port, redis_server

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)
_keys = count()
# Reservations however far ahead: these tests' fake sleep does not move their fake clock.
UNBOUNDED: dict[str, Any] = {"bulk_horizon": None, "interactive_horizon": None}


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
async def workers(redis_url: str) -> AsyncIterator[list[Redis]]:
    """Four independent connections, standing in for four processes."""
    clients = [Redis.from_url(redis_url) for _ in range(4)]
    yield clients
    for client in clients:
        await client.aclose()


class FakeTime:
    """A clock the test moves, and a sleep that records the wait instead of sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


def max_in_window(starts: list[float], window: float) -> int:
    """Most starts in any half-open window, counted in whole microseconds like the script:
    epoch seconds as floats would blur a slot exactly one window later into the window."""
    ordered = sorted(round(t * 1_000_000) for t in starts)
    window_us = round(window * 1_000_000)
    return max(
        (bisect.bisect_left(ordered, t + window_us) - i for i, t in enumerate(ordered)), default=0
    )


def new_key() -> str:
    return f"test-quota-{next(_keys)}-{random.getrandbits(32)}"


@pytest.mark.parametrize("seed", range(4))
async def test_concurrent_workers_never_exceed_the_window(workers: list[Redis], seed: int) -> None:
    rng = random.Random(seed)
    qps, margin = rng.choice([(5, 0.0), (20, 0.005), (100, 0.005)])
    fake = FakeTime()
    key = new_key()
    limiters = [
        RedisWindowLimiter(
            client,
            key=key,
            qps=qps,
            margin=margin,
            warmup=rng.choice([0.0, 0.05]),
            clock=fake.clock,
            sleep=fake.sleep,
        )
        for client in workers
    ]
    slots: list[float] = []
    for _ in range(30):
        # A burst of concurrent acquires from every worker at one instant, then time moves.
        batch = [rng.choice(limiters) for _ in range(rng.randint(0, 3 * qps // 2 + 1))]
        replies = await asyncio.gather(*(limiter._reserve(0, 0) for limiter in batch))
        for reply in replies:
            assert reply.wait >= 0
            assert reply.slot == pytest.approx(fake.now + reply.wait, abs=2e-6)
            slots.append(reply.slot)
        fake.now += rng.uniform(0, 1.5)
    assert slots, "no reservation was made"
    assert max_in_window(slots, 1.0 + margin) <= qps
    # One shared schedule: no slot is handed to two workers.
    assert len(set(slots)) == len(slots)


async def test_acquire_sleeps_until_the_reserved_slot_and_paces_a_cold_start(
    workers: list[Redis],
) -> None:
    fake = FakeTime()
    key = new_key()
    limiters = [
        RedisWindowLimiter(
            client,
            key=key,
            qps=100,
            margin=0.0,
            warmup=0.0,
            clock=fake.clock,
            sleep=fake.sleep,
            **UNBOUNDED,
        )
        for client in workers
    ]
    await asyncio.gather(*(limiters[i % 4].acquire() for i in range(300)))
    # The first caller starts at once (no sleep); everyone else slept until their slot.
    assert len(fake.waits) == 299
    starts = sorted([fake.now] + [fake.now + wait for wait in fake.waits])
    assert max_in_window(starts, 1.0) == 100
    # Paced, not a burst of the whole quota at once; and sustained: 3 windows for 300 calls.
    assert max_in_window(starts, 0.1) <= 11
    assert starts[-1] - starts[0] == pytest.approx(2.99, abs=0.01)


@pytest.mark.parametrize("warmup", [0.0, 0.05])
async def test_lua_follows_the_same_rules_as_the_python_schedule(
    workers: list[Redis], warmup: float
) -> None:
    rng = random.Random(11)
    fake = FakeTime()
    limiter = RedisWindowLimiter(
        workers[0],
        key=new_key(),
        qps=7,
        margin=0.005,
        warmup=warmup,
        adaptive=None,
        clock=fake.clock,
    )
    schedule = WindowSchedule(7, 1.005)
    interval = 1.005 / 7
    cold_until = math.inf
    for _ in range(200):
        fake.now += rng.choice([0.0, 0.0, rng.uniform(0, 0.4)])
        slot = (await limiter._reserve(0, 0)).slot
        expected = schedule.earliest(fake.now, interval)
        # The script works in whole microseconds and rounds slots up.
        assert slot == pytest.approx(expected, abs=2e-6)
        cold_until = min(cold_until, slot + 1.005)
        schedule.take(slot, interval, warmup if slot < cold_until else 0.0)


async def test_a_new_workers_first_second_opens_later_windows(workers: list[Redis]) -> None:
    fake = FakeTime()
    key = new_key()
    first, late = (
        RedisWindowLimiter(client, key=key, qps=10, margin=0.0, warmup=0.05, clock=fake.clock)
        for client in workers[:2]
    )
    # 4 s of slots, reserved at once by a crowd of concurrent first calls.
    slots = sorted(
        reply.slot for reply in await asyncio.gather(*(first._reserve(0, 0) for _ in range(40)))
    )
    fake.now += 3.5  # the second worker starts later; its slots come after the first's
    slots += [(await late._reserve(0, 0)).slot for _ in range(30)]
    gaps = [slots[i + 10] - slots[i] for i in range(len(slots) - 10)]
    # The first worker's first second of slots (0..9) and the second worker's (40..49) each
    # open windows 50 ms late; every other window is a plain second: with demand waiting,
    # each slot comes exactly when the one ten places back allows.
    for i, gap in enumerate(gaps):
        cold = i < 10 or 40 <= i < 50
        assert gap == pytest.approx(1.05 if cold else 1.0, abs=2e-6), (i, gap)
    assert max_in_window(slots, 1.0) <= 10


async def test_throttling_feedback_from_one_worker_slows_all_of_them(
    workers: list[Redis],
) -> None:
    fake = FakeTime()
    key = new_key()
    policy = AimdPolicy(decrease=0.5, recovery=0.1, floor=0.1, cooldown=1.0, threshold=2)
    one, other = (
        RedisWindowLimiter(
            client,
            key=key,
            qps=100,
            adaptive=policy,
            clock=fake.clock,
            sleep=fake.sleep,
            **UNBOUNDED,
        )
        for client in workers[:2]
    )
    await one.acquire()
    one.on_throttled()
    await one.acquire()  # the feedback rides on this call
    assert one.current_rate == 100.0  # a lone throttle: most likely one late request
    one.on_throttled()
    one.on_throttled()
    one.on_throttled()  # a bunch within the cooldown: one cut
    await one.acquire()
    assert one.current_rate == 50.0
    await other.acquire()
    assert other.current_rate == 50.0
    fake.now += 5.0
    # Recovery is additive: 50 successes at 50 calls/s regain 0.1 * 100 = 10 calls/s.
    for _ in range(50):
        other.on_success()
    await other.acquire()
    assert other.current_rate == pytest.approx(60.0)


async def test_successes_count_when_a_batch_also_holds_a_throttle(
    workers: list[Redis],
) -> None:
    fake = FakeTime()
    policy = AimdPolicy(decrease=0.5, recovery=0.1, floor=0.1, cooldown=1.0, threshold=2)
    limiter = RedisWindowLimiter(
        workers[0],
        key=new_key(),
        qps=100,
        adaptive=policy,
        clock=fake.clock,
        sleep=fake.sleep,
        **UNBOUNDED,
    )
    await limiter.acquire()
    limiter.on_throttled()
    limiter.on_throttled()
    await limiter.acquire()
    assert limiter.current_rate == 50.0
    fake.now += 5.0
    limiter.on_throttled()  # a lone throttle: no cut, but it must not hide the successes
    for _ in range(50):
        limiter.on_success()
    await limiter.acquire()
    assert limiter.current_rate == pytest.approx(60.0)


async def test_feedback_survives_a_failed_round_trip() -> None:
    client = Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    limiter = RedisWindowLimiter(client, key=new_key(), outage_timeout=0)
    limiter.on_throttled()
    limiter.on_success()
    with pytest.raises(RateLimiterError) as caught:
        await limiter.acquire()
    assert isinstance(caught.value.__cause__, RedisConnectionError)
    assert (limiter._default.successes, limiter._default.throttles) == (1, 1)
    await client.aclose()


async def test_workers_of_one_key_must_agree_on_qps(workers: list[Redis]) -> None:
    key = new_key()
    await RedisWindowLimiter(workers[0], key=key, qps=100).acquire()
    with pytest.raises(ConfigurationError, match="disagree"):
        await RedisWindowLimiter(workers[1], key=key, qps=50).acquire()


async def test_one_round_trip_per_acquire_on_the_server_clock(redis_url: str) -> None:
    limiter = RedisWindowLimiter.from_url(redis_url, key=new_key(), qps=20, margin=0.0, warmup=0.0)
    admin = Redis.from_url(redis_url)
    try:
        assert isinstance(limiter, Limiter)
        await limiter._reserve(0, 0)  # loads the script
        await admin.config_resetstat()
        slots = [(await limiter._reserve(0, 0)).slot for _ in range(60)]
        stats = await admin.info("commandstats")
        calls = {name: value["calls"] for name, value in stats.items()}
        # Commands a script runs are counted too; the ones a client sent are only EVALSHA.
        script_commands = {"hmget", "hset", "llen", "lindex", "rpush", "ltrim", "pexpire", "time"}
        sent = {
            name: n
            for name, n in calls.items()
            if name.removeprefix("cmdstat_") not in script_commands
            and not name.startswith(("cmdstat_config", "cmdstat_info"))
        }
        assert sent == {"cmdstat_evalsha": 60}
        assert calls["cmdstat_hmget"] == 60  # the state was read once per acquire
        # Slots come from the server's TIME: a second of them from roughly now on, reserved
        # ahead (no sleeping here), never more than 20 in a window.
        assert max_in_window(slots, 1.0) <= 20
        assert abs(slots[0] - time.time()) < 60
        assert slots[-1] - slots[0] == pytest.approx(59 / 20, abs=0.06)
        ttl = await admin.pttl(limiter._keys[0])
        assert 0 < ttl <= 10_000
    finally:
        await limiter.reset()
        await limiter.aclose()
        await admin.aclose()
    assert "RedisWindowLimiter" in repr(limiter)
    assert math.isfinite(limiter.current_rate)


def test_server_clock_keeps_the_tightest_round_trip_and_follows_a_step() -> None:
    clock = ServerClock()
    server_minus_local = 1_700_000_000.0
    # A slow round trip (40 ms) then a fast one (1 ms): the fast one fixes the mapping.
    clock.sample(server_minus_local + 10.030, sent=10.0, received=10.040)
    assert clock.uncertainty(10.040) == pytest.approx(0.020)
    clock.sample(server_minus_local + 11.0005, sent=11.0, received=11.001)
    assert clock.uncertainty(11.001) == pytest.approx(0.0005)
    # A later slow reply, consistent with it, does not spoil it ...
    clock.sample(server_minus_local + 12.010, sent=12.0, received=12.050)
    assert clock.uncertainty(12.050) == pytest.approx(0.0005 + 1.049 * MAX_DRIFT)
    # ... and a slot maps to its local time, never early: late by at most the uncertainty.
    local = clock.to_local(server_minus_local + 13.0, now=12.050)
    assert 13.0 <= local <= 13.0 + 2 * clock.uncertainty(12.050)
    # The server's clock is stepped 5 s forward: the first contradicting sample wins at once.
    clock.sample(server_minus_local + 5 + 14.020, sent=14.0, received=14.040)
    assert clock.to_local(server_minus_local + 5 + 15.0, now=14.040) == pytest.approx(
        15.0, abs=0.021
    )


async def test_a_late_reply_does_not_make_its_call_late(workers: list[Redis]) -> None:
    fake = FakeTime()
    limiter = RedisWindowLimiter(
        workers[0], key=new_key(), qps=20, margin=0.0, warmup=0.0, clock=fake.clock, **UNBOUNDED
    )
    delays = iter([0.0, 0.03, 0.01, 0.05] * 10)
    slots: list[float] = []
    received: list[float] = []
    starts: list[float] = []
    script = limiter._script

    async def late_reply(**kwargs: Any) -> Any:
        reply = await script(**kwargs)
        slots.append(int(reply[1]) / 1_000_000)
        fake.now += next(delays)  # the reply spends this long on its way back
        received.append(fake.now)
        return reply

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    limiter._script = late_reply  # type: ignore[assignment]
    limiter._sleep = sleep
    for _ in range(40):
        slept.clear()
        await limiter.acquire()
        starts.append(fake.now + sum(slept))
    # Each call sleeps to its slot on the local clock (mapped through the fastest round trip),
    # not for the wait counted from its late reply: late only by the clocks' drift bound, or
    # by the reply itself when that came back after the slot had passed.
    for slot, start, back in zip(slots, starts, received, strict=True):
        assert slot - 1e-6 <= start <= max(slot + 0.001, back)
    assert sum(start > back for start, back in zip(starts, received, strict=True)) >= 30

"""One account quota shared by many processes and machines, kept in Redis.

Each ``acquire`` is one round trip: a Lua script, atomic on the server, applies this worker's
feedback since its last call to the shared AIMD rate, reserves the next slot under the same
rules as the in-process limiter (``_window.WindowSchedule``: a log of the last ``qps`` slots,
a window apart, plus even pacing), and returns it. Time is the Redis server's ``TIME``, so
the workers' clocks never enter the schedule. Slots are reserved ahead, so a worker cancelled
while waiting wastes its slot: the quota is under-used, never exceeded. (A step of the Redis
host's wall clock moves the schedule with it; keep that host's clock slewed, not stepped.)

A worker sleeps until its slot mapped onto its own clock (``ServerClock``), not for the wait
counted from when the reply came: replies come back late by a varying amount (measured with 4
workers on loopback: 0.5 ms typical, 50 ms at the 99th percentile while 256 first calls
connect at once), and each late reply would start its call late, out of step with the
others' calls. Mapped, a slot that is still ahead when its reply arrives is kept exactly.

Needs the ``redis`` extra: ``pip install 'mts-faces[redis]'``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from ._limiter import (
    DEFAULT_MARGIN,
    DEFAULT_WARMUP,
    INTERACTIVE,
    REGISTER_ACTION,
    Grant,
    Priority,
    QuotaLimiter,
    check_margins,
)
from ._window import DEFAULT_AIMD, MIN_TOLERANCE, AimdPolicy, call_limit

if TYPE_CHECKING:
    from redis.asyncio import Redis

_MIN_TOLERANCE_US = str(round(MIN_TOLERANCE * 1_000_000))
# The most two clocks drift apart, in seconds per second (NTP slews a clock 500 ppm at most).
MAX_DRIFT = 5e-4


class ServerClock:
    """Maps the Redis server's clock onto this process's, from the tightest recent round trip.

    A reply that came back ``rtt`` after its request carries a server time that was read within
    ``rtt / 2`` of the request's local midpoint. The sample with the least uncertainty is kept,
    its uncertainty growing with age by the clocks' possible drift; a sample that contradicts it
    (the server's clock was stepped) replaces it at once.
    """

    def __init__(self) -> None:
        self._offset = 0.0  # server time minus local time
        self._uncertainty = math.inf
        self._at = 0.0  # local time of the kept sample

    def sample(self, server_now: float, sent: float, received: float) -> None:
        """Learn from one round trip: the server read ``server_now`` between sent and received."""
        uncertainty = max(0.0, received - sent) / 2
        offset = server_now - (sent + received) / 2
        kept = self.uncertainty(received)
        if uncertainty <= kept or abs(offset - self._offset) > uncertainty + kept:
            self._offset, self._uncertainty, self._at = offset, uncertainty, received

    def uncertainty(self, now: float) -> float:
        """How far off the mapping may be at local time ``now``."""
        return self._uncertainty + max(0.0, now - self._at) * MAX_DRIFT

    def to_local(self, server_time: float, now: float) -> float:
        """The local time by which ``server_time`` has surely passed on the server."""
        return server_time - self._offset + self.uncertainty(now)


# Times are whole microseconds (exact in a Lua double for the next ~280 years of epoch time),
# written with %d: Redis would otherwise format numbers with 14 significant digits.
_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local log, state = KEYS[1], KEYS[2]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local ceiling = tonumber(ARGV[3])
local adaptive = ARGV[4] == '1'
local floor_rate = tonumber(ARGV[5])
local decrease = tonumber(ARGV[6])
local recovery = tonumber(ARGV[7])
local cooldown = tonumber(ARGV[8])
local threshold = tonumber(ARGV[9])
local min_tolerance = tonumber(ARGV[10])
local successes = tonumber(ARGV[11])
local throttles = tonumber(ARGV[12])
local extra = tonumber(ARGV[13])
local now
if ARGV[14] ~= '' then
  now = tonumber(ARGV[14])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local config = ARGV[1] .. '/' .. ARGV[2]
local st = redis.call('HMGET', state, 'config', 'rate', 'tat', 'last', 'cut_until',
  'burst_start', 'burst')
if st[1] and st[1] ~= config then
  return redis.error_reply('mts-faces limiter: workers of one key disagree on qps/margin: '
    .. st[1] .. ' here, ' .. config .. ' asked')
end
local rate = math.min(tonumber(st[2]) or ceiling, ceiling)
local tat = tonumber(st[3]) or 0
local last = tonumber(st[4]) or 0
local cut_until = tonumber(st[5]) or 0
local burst_start = tonumber(st[6]) or 0
local burst = tonumber(st[7]) or 0

-- AIMD on the shared rate (as _window.AimdRate): a bunch of throttles cuts, successes add.
if not adaptive then
  rate = ceiling
elseif throttles > 0 then
  if now >= cut_until then
    if now >= burst_start + cooldown then
      burst_start, burst = now, 0
    end
    burst = burst + throttles
    if burst >= threshold then
      rate = math.max(floor_rate, rate * decrease)
      cut_until = now + cooldown
      burst = 0
    end
  end
end
-- A batch may hold both kinds of feedback; successes count either way, as in AimdRate.
if adaptive and successes > 0 and rate < ceiling then
  rate = math.min(ceiling, rate + recovery * successes / rate)
end

-- The slot (as _window.WindowSchedule): paced, not before the last one, and a full window
-- after the window opened by the reservation ``limit`` places back.
local interval = window / rate
local slot = math.max(now, last, tat - math.max(interval / 2, min_tolerance))
local n = redis.call('LLEN', log)
if n >= limit then
  slot = math.max(slot, tonumber(redis.call('LINDEX', log, -limit)) + window)
end
slot = math.ceil(slot)
tat = math.max(tat, slot) + interval

-- This worker's first second of slots (ARGV[15]: when it ends; empty: no slot yet) opens
-- windows ``extra`` later: its first requests open connections and arrive late.
if ARGV[15] ~= '' and slot >= tonumber(ARGV[15]) then
  extra = 0
end
redis.call('RPUSH', log, string.format('%d', slot + extra))
if n + 1 > limit then
  redis.call('LTRIM', log, -limit, -1)
end
redis.call('HSET', state, 'config', config, 'rate', string.format('%.17g', rate),
  'tat', string.format('%.17g', tat), 'last', string.format('%d', slot),
  'cut_until', string.format('%d', cut_until), 'burst_start', string.format('%d', burst_start),
  'burst', string.format('%d', burst))
local ttl = math.ceil((math.max(tat, cut_until, slot + extra) - now) / 1000 + 2 * window / 1000)
redis.call('PEXPIRE', log, ttl + 1000)
redis.call('PEXPIRE', state, ttl + 1000)
return {string.format('%d', slot - now), string.format('%d', slot), string.format('%.17g', rate)}
"""


class RedisWindowLimiter(QuotaLimiter):
    """The :class:`WindowLimiter` rules over one Redis key, for every worker of an account.

    All workers sharing ``key`` must use the same ``qps`` and ``margin`` (the script refuses a
    mismatch). ``redis`` is a ``redis.asyncio.Redis`` client, or use :meth:`from_url`. Each
    worker's first second of slots counts ``warmup`` longer (its connections are new).
    ``clock`` and ``sleep`` exist for tests: a clock replaces the server's ``TIME``.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        key: str = "mts-faces:quota",
        qps: float = 100.0,
        margin: float = DEFAULT_MARGIN,
        warmup: float = DEFAULT_WARMUP,
        adaptive: AimdPolicy | None = DEFAULT_AIMD,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        check_margins(margin, warmup)
        self.qps = qps
        self.margin = margin
        self.warmup = warmup
        self._warmup_us = str(round(warmup * 1_000_000))
        self._window_us = round((1.0 + margin) * 1_000_000)
        self._cold_until_us = ""  # end of this worker's first second of slots (server clock)
        # The first reservation runs alone: it fixes when this worker's first second ends, so
        # that a crowd of first calls does not all count as cold.
        self._first = asyncio.Lock()
        self.key = key
        self._redis = redis
        self._owns_redis = False
        # One hash tag, so both keys live on one node of a Redis Cluster.
        self._keys = [f"{{{key}}}:log", f"{{{key}}}:state"]
        self._script = redis.register_script(_SCRIPT)
        self._config = self._static_args(call_limit(qps), qps, margin, adaptive)
        self._clock = clock
        self._sleep = sleep
        self._server_clock = ServerClock()
        self._rate = float(qps)
        self._successes = 0
        self._throttles = 0

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisWindowLimiter:
        """Connect to ``redis://host:port/db`` (closed by :meth:`aclose`); options as above."""
        try:
            from redis.asyncio import Redis
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ImportError("RedisWindowLimiter needs: pip install 'mts-faces[redis]'") from exc
        limiter = cls(Redis.from_url(url), **options)
        limiter._owns_redis = True
        return limiter

    def __repr__(self) -> str:
        return (
            f"RedisWindowLimiter(key={self.key!r}, qps={self.qps!r}, margin={self.margin!r}, "
            f"current_rate={self._rate:.2f})"
        )

    @property
    def current_rate(self) -> float:
        """The shared rate in calls per second, as of this worker's last acquire."""
        return self._rate

    async def acquire(
        self,
        *,
        action: str = REGISTER_ACTION,
        region: str = "",
        priority: Priority = INTERACTIVE,
        account: str | None = None,
    ) -> Grant:
        """Reserve the next shared slot (one round trip), then sleep until it comes."""
        successes, throttles = self._successes, self._throttles
        self._successes = self._throttles = 0
        try:
            reservation = await self._reserve(successes, throttles)
        except asyncio.CancelledError:
            # The script may already have run: sending the feedback again could count a
            # throttle twice and cut the rate for nothing, so it is dropped instead.
            raise
        except Exception:
            # The feedback most likely did not reach the shared rate: keep it for the next
            # acquire.
            self._successes += successes
            self._throttles += throttles
            raise
        now = self._local_now()
        delay = self._server_clock.to_local(reservation.slot, now) - now
        if delay > 0:
            await self._sleep(delay)
        return Grant(action, region, reservation.slot, 0, math.inf, priority)

    def on_success(self, grant: Grant | None = None) -> None:
        """Feedback, sent with the next acquire: a call answered without throttling."""
        self._successes += 1

    def on_throttled(self, grant: Grant | None = None) -> None:
        """Feedback, sent with the next acquire: the service throttled a call."""
        self._throttles += 1

    async def reset(self) -> None:
        """Forget the shared schedule and rate (all workers start afresh)."""
        await self._redis.delete(*self._keys)

    async def aclose(self) -> None:
        """Close the Redis connection if :meth:`from_url` opened it."""
        if self._owns_redis:
            await self._redis.aclose()

    def _local_now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def _reserve(self, successes: int, throttles: int) -> _Reservation:
        """Run the script once: the reserved slot, on the script's clock."""
        if not self._cold_until_us:
            async with self._first:
                if not self._cold_until_us:
                    return await self._run_script(successes, throttles)
        return await self._run_script(successes, throttles)

    async def _run_script(self, successes: int, throttles: int) -> _Reservation:
        now = "" if self._clock is None else str(round(self._clock() * 1_000_000))
        args = [*self._config, str(successes), str(throttles), self._warmup_us, now]
        sent = self._local_now()
        reply = await self._script(keys=self._keys, args=[*args, self._cold_until_us])
        received = self._local_now()
        wait_us, slot_us = (int(_text(part)) for part in reply[:2])
        self._rate = float(_text(reply[2]))
        if not self._cold_until_us:
            self._cold_until_us = str(slot_us + self._window_us)
        self._server_clock.sample((slot_us - wait_us) / 1_000_000, sent, received)
        return _Reservation(wait_us / 1_000_000, slot_us / 1_000_000)

    @staticmethod
    def _static_args(
        limit: int, qps: float, margin: float, adaptive: AimdPolicy | None
    ) -> list[str]:
        policy = adaptive or DEFAULT_AIMD
        return [
            str(limit),
            str(round((1.0 + margin) * 1_000_000)),
            repr(float(qps)),
            "1" if adaptive is not None else "0",
            repr(qps * policy.floor),
            repr(policy.decrease),
            repr(policy.recovery * qps),
            str(round(policy.cooldown * 1_000_000)),
            str(policy.threshold),
            _MIN_TOLERANCE_US,
        ]


@attrs.frozen
class _Reservation:
    """A reserved slot on the script's clock, and how far ahead of the script's now it was."""

    wait: float
    slot: float


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

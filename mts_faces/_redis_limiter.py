"""One account quota shared by many processes and machines, kept in Redis.

Each reservation is one round trip: a Lua script, atomic on the server, applies this worker's
feedback since its last call (successes, and its verdicts on its throttles: our bunching
widens the shared margin, someone else's calls cut the shared rate to our share, each at most
once per epoch, as ``WindowLimiter.on_throttled``), reserves the next slot under the same
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
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ._exceptions import ConfigurationError, RateLimiterError
from ._limiter import (
    BULK,
    DEFAULT_MARGIN,
    DEFAULT_WARMUP,
    INTERACTIVE,
    REGISTER_ACTION,
    SHARE_SAFETY,
    Grant,
    Priority,
    QuotaLimiter,
    action_qps_for,
    check_margins,
    check_priority,
)
from ._window import (
    DEFAULT_AIMD,
    DEFAULT_MARGIN_POLICY,
    JITTER,
    MIN_TOLERANCE,
    AimdPolicy,
    MarginPolicy,
    RecentWidenings,
    RoundTrips,
    call_limit,
    classify,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger("mts_faces")
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
-- ARGV[16]: '1' when this worker has reserved from these keys before; ARGV[17]: how far
-- ahead of now a slot may be reserved ('' = any); ARGV[18]: the gap before the first slot
-- after the state was lost.
local seen = ARGV[16] == '1'
local horizon = tonumber(ARGV[17])
local restart_gap = tonumber(ARGV[18])
-- ARGV[19..31]: the learned margin (as _window.LearnedMargin), and this worker's verdicts on
-- its throttles (as WindowLimiter.on_throttled): a widening or a cut, each for an epoch.
local learn = ARGV[19] == '1'
local max_margin = tonumber(ARGV[20])
local widen = tonumber(ARGV[21])
local step = tonumber(ARGV[22])
local headroom_f = tonumber(ARGV[23])
local settle = tonumber(ARGV[24])
local memory = tonumber(ARGV[25])
local widen_vote = tonumber(ARGV[26])
local cut_vote = tonumber(ARGV[27])
local cut_slot = tonumber(ARGV[28]) or 0
local share_factor = tonumber(ARGV[29])
local high = tonumber(ARGV[30]) or 0
local bound = tonumber(ARGV[31]) or max_margin
-- ARGV[32..36]: after a competition cut, the hold and its longest, the probe's cubic
-- (calls/s after one second of probing), the onset span, and the safety under the share.
local hold = tonumber(ARGV[32])
local hold_max = tonumber(ARGV[33])
local probe_c = tonumber(ARGV[34])
local onset = tonumber(ARGV[35])
local safety = tonumber(ARGV[36])
local base_margin = window - 1000000

local config = ARGV[1] .. '/' .. ARGV[2]
local st = redis.call('HMGET', state, 'config', 'rate', 'tat', 'last', 'cut_until',
  'burst_start', 'burst', 'margin', 'bad', 'before_m', 'before_b', 'calm', 'epoch', 'settles',
  'competed_at', 'competing', 'probe_base', 'probe_start', 'drain_until', 'drain_rate')
if st[1] and st[1] ~= config then
  return redis.error_reply('mts-faces limiter: workers of one key disagree on qps/margin: '
    .. st[1] .. ' here, ' .. config .. ' asked')
end
local rate = math.min(tonumber(st[2]) or ceiling, ceiling)
local tat = tonumber(st[3]) or 0
local last = tonumber(st[4]) or 0
local restarted = 0
if not st[1] and seen then
  -- The state is gone (flushed, expired during an outage, an empty replica) while this
  -- worker still knows it: slots reserved before the loss may still be ahead, at most the
  -- largest horizon. A cold window that opens a full window after them cannot share a
  -- window with them; it is paced from there.
  redis.call('DEL', log)
  tat = now + restart_gap
  last = tat
  restarted = 1
end
local cut_until = tonumber(st[5]) or 0
local burst_start = tonumber(st[6]) or 0
local burst = tonumber(st[7]) or 0
local margin = tonumber(st[8]) or base_margin
local bad = tonumber(st[9]) or 0
local before_m = tonumber(st[10])
local before_b = tonumber(st[11]) or 0
local calm = tonumber(st[12]) or 0
local epoch = tonumber(st[13]) or 0
local settles = tonumber(st[14]) or 0
local competed_at = tonumber(st[15])
local competing = tonumber(st[16]) or 0
local probe_base = tonumber(st[17])
local probe_start = tonumber(st[18])
local drain_until = tonumber(st[19])
local drain_rate = tonumber(st[20])

-- After a competition cut: the drain, the rate held, then probing on a cubic (as
-- AimdRate.advance).
local function advance()
  if not (adaptive and probe_start) then return end
  if drain_until and now < drain_until then
    rate = drain_rate
  elseif now > probe_start then
    local t = (now - probe_start) / 1000000
    rate = math.min(ceiling, probe_base + probe_c * t * t * t)
    if rate >= ceiling then probe_base, probe_start = nil, nil end
  else
    rate = probe_base
  end
end
advance()

-- The margin settles with calm calls, widens on our own bunching (LearnedMargin).
if learn and successes > 0 then
  bad = bad * math.exp(-successes / memory)
  local target = math.max(base_margin, math.min(margin, bad * headroom_f))
  margin = target + (margin - target) * math.exp(-successes / settle)
  calm = calm + successes
  if calm >= settle then before_m = nil end
end
if learn and widen_vote and widen_vote == epoch then
  if not before_m then before_m, before_b = margin, bad end
  bad = math.max(bad, margin)
  local wider = math.max(margin * widen, margin + step)
  margin = math.min(max_margin, math.max(margin, bound), wider)
  calm = 0
  epoch = epoch + 1
elseif adaptive and cut_vote and cut_vote == epoch and cut_slot >= settles then
  -- Someone else's calls: undo the widenings they caused, cut to the share our calls got
  -- (the grants of the last window whose answers are in, times the part accepted).
  if before_m then margin, bad, before_m = before_m, before_b, nil end
  local w = 1000000 + margin
  local stop = now - high
  local entries = redis.call('LRANGE', log, 0, -1)
  local share = nil
  if share_factor and #entries > 0 and tonumber(entries[1]) <= stop - w then
    local grants = 0
    for _, e in ipairs(entries) do
      local t = tonumber(e)
      if t > stop - w and t <= stop then grants = grants + 1 end
    end
    share = grants * share_factor * 1000000 / w
  end
  -- (as AimdRate.cut_to: the share is already just under itself; a new program's onset
  -- cuts by decrease at least; the hold grows half again with each cut of one run)
  local cut = rate * decrease * safety
  local target = cut
  if share then target = math.min(share, rate * safety) end
  if not competed_at or now - competed_at > onset then
    target = math.min(target, cut)
    competing = 0
  end
  competing = competing + 1
  rate = math.max(floor_rate, target)
  competed_at = now
  probe_base = rate
  probe_start = now + math.min(hold_max, hold * 1.5 ^ (competing - 1))
  -- Our calls of the last cooldown above the new rate drain from the server's window at
  -- a rate lower by them, for cooldown (as AimdRate.cut_to).
  local sent = 0
  for _, e in ipairs(entries) do
    if tonumber(e) > now - cooldown then sent = sent + 1 end
  end
  drain_until, drain_rate = nil, nil
  if cooldown > 0 then
    local excess = math.max(0, sent - rate * cooldown / 1000000) * 1000000 / cooldown
    drain_until, drain_rate = now + cooldown, math.max(floor_rate, rate - excess)
  end
  advance()
  settles = now + w
  epoch = epoch + 1
end
if not learn then margin = base_margin end
window = 1000000 + margin

local function save(last_slot)
  redis.call('HSET', state, 'config', config, 'rate', string.format('%.17g', rate),
    'tat', string.format('%.17g', tat), 'last', string.format('%d', last_slot),
    'cut_until', string.format('%d', cut_until), 'burst_start', string.format('%d', burst_start),
    'burst', string.format('%d', burst), 'margin', string.format('%.17g', margin),
    'bad', string.format('%.17g', bad),
    'before_m', before_m and string.format('%.17g', before_m) or '',
    'before_b', string.format('%.17g', before_b), 'calm', string.format('%.17g', calm),
    'epoch', string.format('%d', epoch), 'settles', string.format('%d', settles),
    'competed_at', competed_at and string.format('%d', competed_at) or '',
    'competing', string.format('%d', competing),
    'probe_base', probe_base and string.format('%.17g', probe_base) or '',
    'probe_start', probe_start and string.format('%d', probe_start) or '',
    'drain_until', drain_until and string.format('%d', drain_until) or '',
    'drain_rate', drain_rate and string.format('%.17g', drain_rate) or '')
end

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
if adaptive and successes > 0 and rate < ceiling and not probe_start then
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
if horizon and slot - now > horizon then
  -- Too far ahead for this lane: reserve nothing, keep the feedback, say when to ask again.
  save(last)
  redis.call('PEXPIRE', state, math.ceil((math.max(tat, slot) - now) / 1000) + 10000)
  return {string.format('%d', slot - now), string.format('%d', slot), string.format('%.17g', rate),
    '0', tostring(restarted), tostring(epoch), '-1', string.format('%d', margin)}
end
local headroom = -1
if n >= limit then
  headroom = slot - tonumber(redis.call('LINDEX', log, -limit)) - 1000000
end
tat = math.max(tat, slot) + interval

-- This worker's first second of slots (ARGV[15]: when it ends; empty: no slot yet) opens
-- windows ``extra`` later: its first requests open connections and arrive late.
if ARGV[15] ~= '' and slot >= tonumber(ARGV[15]) then
  extra = 0
end
redis.call('RPUSH', log, string.format('%d', slot + extra))
if n + 1 > 2 * limit then  -- two windows: the share is measured on the one before the last
  redis.call('LTRIM', log, -2 * limit, -1)
end
save(slot)
local ttl = math.ceil((math.max(tat, cut_until, slot + extra) - now) / 1000 + 2 * window / 1000)
redis.call('PEXPIRE', log, ttl + 1000)
redis.call('PEXPIRE', state, ttl + 1000)
return {string.format('%d', slot - now), string.format('%d', slot), string.format('%.17g', rate),
  '1', tostring(restarted), tostring(epoch), string.format('%d', headroom),
  string.format('%d', margin)}
"""


class _RedisScope:
    """One (account, region, action) schedule as this worker sees it."""

    def __init__(self, prefix: str, account: str, region: str, action: str, qps: float) -> None:
        name = f"{prefix}:{account}:{region}:{action}"
        # One hash tag, so both keys live on one node of a Redis Cluster.
        self.keys = [f"{{{name}}}:log", f"{{{name}}}:state"]
        self.qps = qps
        self.cold_until_us = ""  # end of this worker's first second of slots (server clock)
        # The first reservation runs alone: it fixes when this worker's first second ends, so
        # that a crowd of first calls does not all count as cold.
        self.first = asyncio.Lock()
        # One caller per lane talks to Redis at a time; the rest queue here, in order.
        self.lanes = {INTERACTIVE: asyncio.Lock(), BULK: asyncio.Lock()}
        self.last_slot_local = -math.inf  # local time of this worker's last reserved slot
        self.rate = float(qps)
        self.successes = 0
        self.throttles = 0  # without a grant: the bunch rule
        # As of the last reply: the shared epoch and margin (seconds).
        self.epoch = 0
        self.margin = 0.0
        self.trips = RoundTrips()
        self.widenings = RecentWidenings()  # this worker's widening verdicts
        self.outcomes: deque[tuple[float, bool]] = deque(maxlen=1024)  # (slot, accepted)
        # This worker's verdicts, sent with its next reservation.
        self.widen_vote: int | None = None
        self.cut_vote: tuple[int, float] | None = None


class RedisWindowLimiter(QuotaLimiter):
    """The :class:`WindowLimiter` rules over Redis, for every worker of an account.

    One schedule per (account, region, action), under keys that name all three:
    ``{key}:{account}:{region}:{action}``. ``account`` (default: the AccessKeyId the client
    passes) names whose quota it is: give every worker of one account the same name, even
    with different keys. ``qps`` is RegisterCustomFace's quota; ``action_qps`` or a tenth of
    ``qps`` the others'. All workers of one scope must use the same ``qps`` and ``margin``
    (the script refuses a mismatch). ``redis`` is a ``redis.asyncio.Redis`` client, or use
    :meth:`from_url`. Each worker's first second of slots counts ``warmup`` longer.

    Lanes across processes: a slot is reserved at most ``bulk_horizon`` seconds ahead for a
    bulk call, ``interactive_horizon`` for an interactive one; a caller whose slot is further
    off asks again when it comes within reach, so an interactive call from any process takes
    the first slot no bulk call has reserved yet. The horizons also bound what a loss of the
    Redis state can leave outstanding: after one (``FLUSHALL``, failover to an empty
    replica), the next slot comes a window after the furthest horizon, then paced, so the
    old and new slots never crowd one window.

    Outages: while Redis cannot be reached, callers wait and try again (backing off up to
    1 s) for up to ``outage_timeout`` seconds, then get :class:`RateLimiterError`; after
    that, each caller gets one quick try before the same error. A script error is a
    :class:`RateLimiterError` too (a mismatch of ``qps`` a :class:`ConfigurationError`).
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
        learn: MarginPolicy | None = DEFAULT_MARGIN_POLICY,
        account: str | None = None,
        action_qps: Mapping[str, float] | None = None,
        bulk_horizon: float | None = 0.05,
        interactive_horizon: float | None = 0.25,
        outage_timeout: float = 30.0,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        check_margins(margin, warmup)
        call_limit(qps)
        for horizon in (bulk_horizon, interactive_horizon):
            if horizon is not None and not 0 < horizon <= 10:
                raise ValueError(f"horizons must be in (0, 10] seconds, got {horizon!r}")
        if not outage_timeout >= 0:
            raise ValueError(f"outage_timeout must be >= 0, got {outage_timeout!r}")
        self.qps = qps
        self.margin = margin
        self.warmup = warmup
        self.adaptive = adaptive
        self.learn = None if learn is None else attrs.evolve(learn, base=min(margin, learn.base))
        self.account = account
        self.action_qps = dict(action_qps or {})
        self.horizons: dict[Priority, float | None] = {
            INTERACTIVE: interactive_horizon,
            BULK: bulk_horizon,
        }
        self.outage_timeout = outage_timeout
        self._warmup_us = str(round(warmup * 1_000_000))
        self._window = 1.0 + margin
        self._window_us = round(self._window * 1_000_000)
        self.key = key
        self._redis = redis
        self._owns_redis = False
        self._script = redis.register_script(_SCRIPT)
        self._clock = clock
        self._sleep = sleep
        self._server_clock = ServerClock()
        self._scopes: dict[tuple[str, str, str], _RedisScope] = {}
        self._default = self._scope(account, "", REGISTER_ACTION)
        self._keys = self._default.keys
        self._down: RateLimiterError | None = None

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
            f"current_rate={self.current_rate:.2f})"
        )

    @property
    def current_rate(self) -> float:
        """RegisterCustomFace's shared rate in calls per second, as of the last acquire."""
        return self._default.rate

    async def acquire(
        self,
        *,
        action: str = REGISTER_ACTION,
        region: str = "",
        priority: Priority = INTERACTIVE,
        account: str | None = None,
    ) -> Grant:
        """Reserve the next shared slot in reach of ``priority``'s lane, sleep until it comes."""
        lane = check_priority(priority)
        scope = self._scope(self.account or account, region, action)
        if action == REGISTER_ACTION:
            self._default = scope
        horizon = self.horizons[lane]
        async with scope.lanes[lane]:
            while True:
                reservation = await self._reserve_in(scope, horizon)
                if reservation.reserved:
                    break
                # Out of reach: ask again when the slot comes within the horizon.
                assert horizon is not None
                await self._sleep_until(reservation.slot - horizon)
        now = self._local_now()
        scope.last_slot_local = self._server_clock.to_local(reservation.slot, now)
        await self._sleep_until(reservation.slot)
        return Grant(action, region, reservation.slot, scope.epoch, reservation.headroom, lane)

    @property
    def current_margin(self) -> float:
        """RegisterCustomFace's shared window margin in seconds, as of the last acquire."""
        return self._default.margin

    def on_success(self, grant: Grant | None = None) -> None:
        """Feedback, sent with the next acquire: a call answered without throttling."""
        scope = self._feedback_scope(grant)
        scope.successes += 1
        if grant is not None:
            self._observe(scope, grant, accepted=True)

    def on_throttled(self, grant: Grant | None = None) -> None:
        """Feedback, sent with the next acquire: the service throttled a call.

        The same rules as :meth:`WindowLimiter.on_throttled`: this worker classifies the
        throttle (our own bunching, or someone else's calls) and sends its verdict for the
        grant's epoch; the script applies the first verdict of each epoch to the shared
        margin or rate, and ignores the rest. Without a grant: the bunch rule.
        """
        scope = self._feedback_scope(grant)
        if grant is None:
            scope.throttles += 1
            return
        self._observe(scope, grant, accepted=False)
        if grant.epoch != scope.epoch:
            return  # granted before the last adaptation: stale
        maximum = self.learn.maximum if self.learn is not None else 0.0
        margin = scope.margin if self.learn is not None else math.inf
        now = self._local_now()
        recent = scope.widenings.count(now)
        verdict = classify(grant.headroom, margin, scope.trips.spread(), maximum, recent)
        if verdict == JITTER and self.learn is not None:
            scope.widen_vote = grant.epoch
            scope.widenings.add(now)
        else:
            scope.cut_vote = (grant.epoch, grant.at)
            scope.widenings.clear()

    def _observe(self, scope: _RedisScope, grant: Grant, *, accepted: bool) -> None:
        now = self._local_now()
        scope.trips.add(max(0.0, now - self._server_clock.to_local(grant.at, now)))
        scope.outcomes.append((grant.at, accepted))

    def _accepted_share(self, scope: _RedisScope) -> float | None:
        """The part of this worker's calls of the last measured window that were accepted,
        just under it (``SHARE_SAFETY``): the script scales the shared grants by it."""
        if scope.cut_vote is None:
            return None
        stop = scope.cut_vote[1] - scope.trips.high()
        start = stop - (1.0 + scope.margin)
        seen = [ok for at, ok in scope.outcomes if start < at <= stop]
        if not seen:
            return None
        return SHARE_SAFETY * sum(seen) / len(seen)

    async def reset(self) -> None:
        """Forget the shared schedules and rates this worker used (all workers start afresh)."""
        keys = [key for scope in self._scopes.values() for key in scope.keys]
        await self._redis.delete(*keys)

    async def aclose(self) -> None:
        """Close the Redis connection if :meth:`from_url` opened it."""
        if self._owns_redis:
            await self._redis.aclose()

    # --- internals ------------------------------------------------------------------------

    def _scope(self, account: str | None, region: str, action: str) -> _RedisScope:
        name = (account or "default", region, action)
        scope = self._scopes.get(name)
        if scope is None:
            qps = action_qps_for(action, self.qps, self.action_qps)
            scope = self._scopes[name] = _RedisScope(self.key, *name, qps)
        return scope

    def _feedback_scope(self, grant: Grant | None) -> _RedisScope:
        if grant is None:
            return self._default
        for (_, region, action), scope in self._scopes.items():
            if region == grant.region and action == grant.action:
                return scope
        return self._default

    def _local_now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def _sleep_until(self, server_time: float) -> None:
        now = self._local_now()
        delay = self._server_clock.to_local(server_time, now) - now
        if delay > 0:
            await self._sleep(delay)

    async def _reserve(self, successes: int, throttles: int) -> _Reservation:
        """Reserve a slot of the default scope however far ahead (tests use it)."""
        scope = self._default
        scope.successes += successes
        scope.throttles += throttles
        return await self._reserve_in(scope, None)

    async def _reserve_in(self, scope: _RedisScope, horizon: float | None) -> _Reservation:
        """Run the script once (waiting out a Redis outage): a slot, reserved or in sight."""
        successes, throttles = scope.successes, scope.throttles
        votes = scope.widen_vote, scope.cut_vote
        scope.successes = scope.throttles = 0
        try:
            if not scope.cold_until_us:
                async with scope.first:
                    if not scope.cold_until_us:
                        return await self._outage_proof(scope, successes, throttles, horizon)
            return await self._outage_proof(scope, successes, throttles, horizon)
        except asyncio.CancelledError:
            # The script may already have run: sending the feedback again could count a
            # throttle twice and cut the rate for nothing, so it is dropped instead.
            raise
        except Exception:
            # The feedback most likely did not reach the shared rate: keep it for the next
            # acquire.
            scope.successes += successes
            scope.throttles += throttles
            scope.widen_vote, scope.cut_vote = votes
            raise

    async def _outage_proof(
        self, scope: _RedisScope, successes: int, throttles: int, horizon: float | None
    ) -> _Reservation:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import ResponseError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        loop_now = asyncio.get_running_loop().time
        started = loop_now()
        pause = 0.05
        while True:
            try:
                reservation = await self._run_script(scope, successes, throttles, horizon)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if self._down is not None or loop_now() - started >= self.outage_timeout:
                    error = RateLimiterError(
                        f"the shared rate limiter's Redis was unreachable for "
                        f"{loop_now() - started:.1f} s (outage_timeout {self.outage_timeout:g} s)"
                        f": {type(exc).__name__}: {exc}"
                    )
                    self._down = self._down or error
                    raise self._down from exc
                logger.warning("rate limiter: Redis unreachable (%s); waiting", exc)
                await asyncio.sleep(pause)
                pause = min(1.0, pause * 2)
                continue
            except ResponseError as exc:
                text = str(exc)
                if "disagree" in text:
                    raise ConfigurationError(text) from exc
                outage = text.startswith(("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN"))
                if outage and loop_now() - started < self.outage_timeout:
                    # Restarting, loading or failing over: an outage like any other.
                    await asyncio.sleep(pause)
                    pause = min(1.0, pause * 2)
                    continue
                raise RateLimiterError(f"the shared rate limiter's script failed: {text}") from exc
            self._down = None
            return reservation

    async def _run_script(
        self, scope: _RedisScope, successes: int, throttles: int, horizon: float | None
    ) -> _Reservation:
        now = "" if self._clock is None else str(round(self._clock() * 1_000_000))
        config = self._static_args(call_limit(scope.qps), scope.qps, self.margin, self.adaptive)
        args = [*config, str(successes), str(throttles), self._warmup_us, now]
        local = self._local_now()
        # Slots this worker reserved recently may still be ahead: if the state is missing
        # now, it was lost, not expired.
        seen = local - scope.last_slot_local < 2 * self._window
        furthest = max((h for h in self.horizons.values() if h is not None), default=0.0)
        restart_gap = round((furthest + self._window) * 1_000_000)
        args += [
            scope.cold_until_us,
            "1" if seen else "0",
            "" if horizon is None else str(round(horizon * 1_000_000)),
            str(restart_gap),
        ]
        args += self._learn_args(scope)
        args += self._probe_args(scope.qps, self.adaptive)
        scope.widen_vote = scope.cut_vote = None
        sent = self._local_now()
        reply = await self._script(keys=scope.keys, args=args)
        received = self._local_now()
        scope.epoch = int(_text(reply[5]))
        headroom_us = int(_text(reply[6]))
        scope.margin = int(_text(reply[7])) / 1_000_000
        wait_us, slot_us = (int(_text(part)) for part in reply[:2])
        scope.rate = float(_text(reply[2]))
        reserved = _text(reply[3]) == "1"
        if _text(reply[4]) == "1":
            logger.warning(
                "rate limiter: the shared state of %s was lost; restarting cold and paced",
                scope.keys[1],
            )
        if reserved and not scope.cold_until_us:
            scope.cold_until_us = str(slot_us + self._window_us)
        self._server_clock.sample((slot_us - wait_us) / 1_000_000, sent, received)
        headroom = math.inf if headroom_us < 0 else headroom_us / 1_000_000
        return _Reservation(wait_us / 1_000_000, slot_us / 1_000_000, reserved, headroom)

    def _learn_args(self, scope: _RedisScope) -> list[str]:
        policy = self.learn or DEFAULT_MARGIN_POLICY
        spread = scope.trips.spread()
        bound = min(spread, policy.maximum)
        cut = scope.cut_vote
        return [
            "1" if self.learn is not None else "0",
            str(round(policy.maximum * 1_000_000)),
            repr(policy.widen),
            str(round(policy.step * 1_000_000)),
            repr(policy.headroom),
            repr(policy.settle),
            repr(policy.memory),
            "" if scope.widen_vote is None else str(scope.widen_vote),
            "" if cut is None else str(cut[0]),
            "" if cut is None else str(round(cut[1] * 1_000_000)),
            "" if (share := self._accepted_share(scope)) is None else repr(share),
            str(round(scope.trips.high() * 1_000_000)),
            str(round(bound * 1_000_000)),
        ]

    @staticmethod
    def _probe_args(qps: float, adaptive: AimdPolicy | None) -> list[str]:
        policy = adaptive or DEFAULT_AIMD
        return [
            str(round(policy.hold * 1_000_000)),
            str(round(policy.hold_max * 1_000_000)),
            repr(policy.probe * qps),
            str(round(policy.onset * 1_000_000)),
            repr(SHARE_SAFETY),
        ]

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
    reserved: bool = True
    headroom: float = math.inf


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

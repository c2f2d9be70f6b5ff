"""The limiter over a jittery network, beside other programs, in lanes, for any caller.

Network behaviour is checked on the simulated network of ``network_sim`` (fake time, the
emulator's own quota gate and rival): every figure is exact and repeatable, nothing is timed.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from aiolimiter import AsyncLimiter

from mts_faces import ConfigurationError, MarginPolicy, MtsFaceClient, WindowLimiter
from mts_faces._limiter import BULK, INTERACTIVE, LaneSemaphore, LimiterAdapter
from mts_faces._window import (
    COMPETITION,
    JITTER,
    AimdPolicy,
    AimdRate,
    LearnedMargin,
    RoundTrips,
    classify,
)
from mts_faces.emulator import Emulator, EmulatorConfig

from .network_sim import run_fake, simulate

# --- the arithmetic ----------------------------------------------------------------------------


def test_classify_tells_our_bunching_from_someone_elses_calls() -> None:
    # Saturated (our 100th-previous start 10 ms more than a second back), margin 5 ms, round
    # trips varying by 40 ms: our own calls may have bunched.
    assert classify(0.010, 0.005, 0.040, 0.25) == JITTER
    # We were sending at 70/s: 0.43 s of headroom, which no 40 ms spread can close.
    assert classify(0.43, 0.005, 0.040, 0.25) == COMPETITION
    # Saturated, but the margin is already as wide as the round trips vary: not jitter.
    assert classify(0.040, 0.040, 0.040, 0.25) == COMPETITION
    # No round trips known yet: the margin's maximum bounds the spread.
    assert classify(0.010, 0.005, math.inf, 0.25) == JITTER
    assert classify(0.30, 0.005, math.inf, 0.25) == COMPETITION


def test_margin_widens_on_bunching_settles_when_calm_and_undoes_competition() -> None:
    policy = MarginPolicy(base=0.005, widen=1.5, step=0.01, headroom=1.05, settle=300)
    margin = LearnedMargin(policy)
    assert margin.widen(0.25) == pytest.approx(0.015)  # at least one step wider
    assert margin.widen(0.25) == pytest.approx(0.025)
    assert margin.widen(0.25) == pytest.approx(0.0375)  # then by half
    assert margin.widen(0.03) == pytest.approx(0.0375)  # never past the network's bound...
    assert margin.bad == pytest.approx(0.0375)  # ...and the evidence is remembered
    margin.calm(300)  # calm, but it was throttled at this width: it stays
    assert margin.value == pytest.approx(0.0375)
    margin.widen(0.25)  # once more: 0.05625, the widest bad margin now 0.0375
    margin.calm(300)  # one settle constant: 1/e of the way back to 1.05 x that
    target = 0.0375 * math.exp(-300 / policy.memory) * 1.05
    assert margin.value == pytest.approx(target + (0.05625 - target) / math.e, rel=1e-3)
    margin.calm(100_000)  # a long calm spell: the evidence fades, back to the base
    assert margin.value == pytest.approx(0.005, abs=1e-4)
    # Widenings that turn out to be competition are undone: back to before the run.
    margin.widen(0.25)
    margin.widen(0.25)
    margin.undo_run()
    assert margin.value == pytest.approx(0.005, abs=1e-4)


def test_round_trip_spread_is_p95_minus_p5_once_enough_are_known() -> None:
    trips = RoundTrips(size=100, minimum=20)
    for i in range(19):
        trips.add(0.05 + i / 1000)
    assert trips.spread() == math.inf
    for i in range(81):
        trips.add(0.05 + (19 + i) / 1000)
    assert trips.spread() == pytest.approx(0.090, abs=0.0011)
    assert trips.high() == pytest.approx(0.145, abs=0.0011)


def test_competition_cuts_to_the_share_not_by_a_factor() -> None:
    rate = AimdRate(100.0, AimdPolicy(decrease=0.7, floor=0.1))
    assert rate.cut_to(0.0, 68.0) == 68.0  # straight to what the others leave us
    # A share above the rate: the edge is the rate itself.
    assert rate.cut_to(1.0, 90.0) == pytest.approx(68.0)
    assert rate.cut_to(2.0, None) == pytest.approx(47.6)  # unmeasured: by a factor
    assert rate.cut_to(3.0, 1.0) == 10.0  # never below the floor


# --- on the simulated network ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("jitter", "at_least"), [(0.0, 99.0), (0.01, 98.0), (0.03, 96.8), (0.05, 95.0)]
)
def test_jitter_widens_the_margin_and_never_cuts_the_rate(jitter: float, at_least: float) -> None:
    limiter = WindowLimiter(100)
    result = run_fake(lambda: simulate(limiter, calls=3000, jitter=jitter))
    first, last = min(result.accepted_at), max(result.accepted_at)
    assert result.accepted == 3000 and result.peak <= 100
    assert result.accepted / (last - first) >= at_least
    assert result.throttled <= 9  # 0.3% of 3,000
    assert min(rate for _, rate in result.rates) == 100.0  # jitter is not competition
    widest = max(margin for _, margin in result.margins)
    if jitter:
        assert widest > 0.005 and widest <= 2 * jitter  # learned, and within reason
    else:
        assert widest == pytest.approx(0.005)


def test_a_rival_is_competition_the_share_is_found_and_regained_when_it_stops() -> None:
    limiter = WindowLimiter(100)
    result = run_fake(
        lambda: simulate(
            limiter, calls=3000, jitter=0.0, rival_qps=30, rival_start=2, rival_duration=15
        )
    )
    assert result.throttled <= 30  # 1% of 3,000
    # The rival retries nothing: each throttle of its calls is a failure we caused.
    rival_calls = result.rival_accepted + result.rival_throttled
    assert rival_calls == 450
    assert result.rival_throttled <= 9  # 2% of its calls
    # While the rival runs (after a second to find the share), the two keep the quota busy.
    during = result.rate_between(4, 17)
    assert 60 <= during <= 72
    assert during + 30 >= 95
    # After it stops at 17 s (its calls leave the window by 18 s), back to >= 98 calls/s
    # within 5 s.
    recovered = [t for t in range(17, 40) if result.rate_between(t, t + 1) >= 98]
    assert recovered and recovered[0] <= 22
    # The margin the rival's throttles widened was given back.
    assert limiter.current_margin < 0.01


def test_after_competition_the_rate_holds_then_probes_on_a_cubic() -> None:
    policy = AimdPolicy(decrease=0.7, hold=2.0, hold_max=3.0, probe=0.4, onset=10.0)  # not defaults
    rate = AimdRate(100.0, policy)
    # A new program's onset: the share measured (99) still counts our calls from before it
    # came, so the cut is by decrease at least, then a little under (safety).
    assert rate.cut_to(0.0, 99.0, 0.97) == pytest.approx(67.9)
    rate.succeeded(1000)  # successes do not creep the rate up while it holds
    assert rate.advance(1.9) == pytest.approx(67.9)
    # After the hold: 67.9 + 0.4 * 100 * t**3 calls/s at t s of probing.
    assert rate.advance(2.5) == pytest.approx(67.9 + 40 * 0.125)
    # Met again within the onset span: straight to the share, and the hold is longer.
    assert rate.cut_to(3.0, 70.0, 0.97) == pytest.approx(67.9)
    assert rate.advance(5.9) == pytest.approx(67.9)  # held 3 s, not 2
    assert rate.advance(6.5) == pytest.approx(67.9 + 40 * 0.125)
    # The program left: the cubic reaches the whole quota (0.93 s from 67.9), probing ends
    # and additive recovery rules again.
    assert rate.advance(8.0) == 100.0
    rate.throttled(9.0, 2)  # a bunch (no competition verdict): cut by decrease, then regained
    assert rate.rate == pytest.approx(70.0)
    rate.succeeded(70)  # one second's worth regains recovery * ceiling
    assert rate.rate == pytest.approx(75.0)
    # Calls we sent above the new rate in the last cooldown still fill the server's window:
    # for that long the rate is lower by them, so the window drains.
    # (A share above the rate puts the edge at the rate: 75.)
    assert rate.cut_to(12.0, 90.0, 1.0, sent=90) == pytest.approx(75 - 15)
    assert rate.advance(12.9) == pytest.approx(60.0)
    assert rate.advance(13.0) == pytest.approx(75.0)  # then held (3 s: the third cut)
    assert rate.advance(14.9) == pytest.approx(75.0)
    assert rate.advance(16.0) == 100.0
    # Long after the last competition: a new onset again, where a share under the rate
    # (90 of 100) is not trusted alone: cut by decrease.
    assert rate.cut_to(30.0, 90.0) == pytest.approx(70.0)


def test_interactive_calls_skip_the_bulk_queue_and_bulk_keeps_the_quota() -> None:
    limiter = WindowLimiter(100)
    result = run_fake(
        lambda: simulate(limiter, calls=3000, jitter=0.0, interactive_every=0.25, seed=3)
    )
    waits = sorted(result.waits[INTERACTIVE])
    assert len(waits) >= 100
    p95 = waits[len(waits) * 95 // 100]
    assert p95 <= 2 * 1.005 / 100  # two pacing slots
    # Bulk waited behind the interactive calls, and the quota stayed full.
    assert sorted(result.waits[BULK])[len(result.waits[BULK]) // 2] > 0.1
    first, last = min(result.accepted_at), max(result.accepted_at)
    assert result.accepted / (last - first) >= 97.0


# --- scope: one schedule per (region, action) ------------------------------------------------


def test_each_action_and_region_has_its_own_schedule() -> None:
    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        limiter = WindowLimiter(100, action_qps={"TagCustomPerson": 50}, adaptive=None)
        for _ in range(100):  # fills RegisterCustomFace's window in cn-shanghai
            await limiter.acquire(region="cn-shanghai")
        t0 = loop.time()
        await limiter.acquire(action="ListCustomPersons", region="cn-shanghai")
        await limiter.acquire(region="cn-beijing")
        free = loop.time() - t0
        t0 = loop.time()
        for _ in range(20):
            await limiter.acquire(action="ListCustomPersons", region="cn-shanghai")
        listing = loop.time() - t0
        t0 = loop.time()
        for _ in range(50):
            await limiter.acquire(action="TagCustomPerson")
        tagging = loop.time() - t0
        return {"free": free, "listing": listing, "tagging": tagging}

    waited = run_fake(main)
    assert waited["free"] < 0.001  # neither waited for the full RegisterCustomFace window
    assert waited["listing"] >= 1.0  # the default for other actions: a tenth, 10/s
    assert waited["tagging"] < 1.0  # its own configured 50/s: 50 fit in the first second


# --- any limiter ---------------------------------------------------------------------------------


class PlainLimiter:
    """A limiter with only ``acquire`` (a coroutine), and no feedback."""

    def __init__(self) -> None:
        self.acquired = 0

    async def acquire(self) -> None:
        self.acquired += 1


class FeedbackLimiter(PlainLimiter):
    def __init__(self) -> None:
        super().__init__()
        self.outcomes: list[str] = []

    def on_success(self) -> None:
        self.outcomes.append("ok")

    def on_throttled(self) -> None:
        self.outcomes.append("throttled")


class ContextLimiter:
    def __init__(self) -> None:
        self.entered = 0

    async def __aenter__(self) -> None:
        self.entered += 1

    async def __aexit__(self, *exc: object) -> None:
        pass


@pytest.mark.parametrize("kind", ["aiolimiter", "plain", "feedback", "context"])
async def test_any_limiter_paces_the_client(kind: str) -> None:
    limiter: Any = {
        "aiolimiter": lambda: AsyncLimiter(1000, 1),
        "plain": PlainLimiter,
        "feedback": FeedbackLimiter,
        "context": ContextLimiter,
    }[kind]()
    async with Emulator(EmulatorConfig(qps=2)) as emu:
        async with MtsFaceClient(
            **emu.client_kwargs(limiter=limiter, max_retries=0, backoff_base=0.0)
        ) as client:
            for i in range(2):
                await client.register_custom_face("lib", "p", f"https://i/{i}.jpg")
            with pytest.raises(Exception, match="Throttling"):
                await client.register_custom_face("lib", "p", "https://i/3.jpg")
            await client.list_custom_persons(priority=BULK)
        assert emu.stats.accepted == 3
    if kind in ("plain", "feedback"):
        assert limiter.acquired == 4
    if kind == "feedback":
        assert limiter.outcomes == ["ok", "ok", "throttled", "ok"]
    if kind == "context":
        assert limiter.entered == 4
    assert client.current_rate is None or kind == "aiolimiter"


def test_a_limiter_must_have_acquire_or_be_an_async_context_manager() -> None:
    with pytest.raises(ConfigurationError, match="limiter"):
        MtsFaceClient(access_key_id="id", access_key_secret="secret", limiter=object())  # type: ignore[arg-type]
    LimiterAdapter(AsyncLimiter(5, 1))  # accepted as it is


async def test_an_unknown_priority_is_refused_before_any_call() -> None:
    limiter = FeedbackLimiter()
    async with MtsFaceClient(
        access_key_id="id", access_key_secret="secret", limiter=limiter
    ) as client:
        with pytest.raises(ConfigurationError, match="priority"):
            await client.list_custom_persons(priority="urgent")  # type: ignore[arg-type]
    assert limiter.acquired == 0


# --- the client's connection slots, by lane --------------------------------------------------


async def test_bulk_leaves_the_reserve_and_a_freed_slot_goes_to_interactive_first() -> None:
    slots = LaneSemaphore(4, reserve=1)
    assert LaneSemaphore(64).reserve == 4 and LaneSemaphore(1).reserve == 0
    for _ in range(3):
        await slots.acquire(BULK)
    bulk_waiting = asyncio.ensure_future(slots.acquire(BULK))
    await asyncio.sleep(0)
    assert not bulk_waiting.done()  # the last slot is the interactive reserve
    await slots.acquire(INTERACTIVE)  # ... which an interactive call takes at once
    interactive_waiting = asyncio.ensure_future(slots.acquire(INTERACTIVE))
    await asyncio.sleep(0)
    slots.release()  # one slot frees: the interactive waiter, queued later, gets it
    await asyncio.sleep(0)
    assert interactive_waiting.done() and not bulk_waiting.done()
    slots.release()
    slots.release()  # back under the bulk limit: now bulk
    await asyncio.sleep(0)
    assert bulk_waiting.done()


async def test_a_lane_waiter_cancelled_after_its_grant_gives_the_slot_back() -> None:
    slots = LaneSemaphore(1, reserve=0)
    await slots.acquire(BULK)
    first = asyncio.ensure_future(slots.acquire(BULK))
    second = asyncio.ensure_future(slots.acquire(BULK))
    await asyncio.sleep(0)
    slots.release()  # granted to the first ...
    first.cancel()  # ... which is cancelled before it resumes
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert second.done()  # the slot went on, not lost
    slots.release()
    async with slots.hold(INTERACTIVE):  # and hold() releases what it takes
        pass
    async with asyncio.timeout(1):  # (a guard: a lost slot would hang here)
        await slots.acquire(BULK)

"""The emulator's quota as the service counts it, behind an emulated network.

Service-level tests drive the emulator's clock by hand and deliver each request when its
emulated network delay says it arrives, so they check arrival order, the quota's scope, the
rival program and the retry hint on exact times, with nothing waiting on a real clock.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import pytest

from mts_faces import MtsFaceClient, ThrottlingError
from mts_faces._signing import canonical_query, percent_encode, v1_signature
from mts_faces.emulator import AccessKey, Emulator, EmulatorConfig
from mts_faces.emulator._command import add_parser, config_from_args
from mts_faces.emulator._service import Deferred, Reply, Request, Service

KEY = AccessKey("LTAImainkey", "main-secret")
OTHER = AccessKey("LTAIotherkey", "other-secret")
REGISTER = "RegisterCustomFace"
LIST = "ListCustomPersons"


class Clock:
    """A monotonic clock set by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def signed(action: str, key: AccessKey = KEY, **params: str) -> Request:
    """A version-1 signed request, as a client would send it."""
    query = {
        **params,
        "Action": action,
        "Version": "2014-06-18",
        "Format": "json",
        "AccessKeyId": key.access_key_id,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "SignatureNonce": uuid.uuid4().hex,
        "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    canonical = canonical_query(query)
    signature = percent_encode(v1_signature("POST", canonical, key.access_key_secret))
    return Request("POST", f"/?{canonical}&Signature={signature}", [("host", "emu")])


def register(key: AccessKey = KEY, person: str = "p") -> Request:
    return signed(REGISTER, key, CategoryId="lib", PersonId=person, ImageUrl="https://i/x.jpg")


def service(clock: Clock, **options: Any) -> Service:
    config = EmulatorConfig(access_key=KEY, **options)
    keys = {KEY.access_key_id: KEY.access_key_secret, OTHER.access_key_id: OTHER.access_key_secret}
    return Service(config, keys, clock=clock, main_key_id=KEY.access_key_id)


def settle(outcome: Any, clock: Clock) -> Reply:
    """Follow an outcome's deferrals to its reply, moving the clock along (the answer's trip)."""
    while isinstance(outcome, Deferred):
        clock.now += outcome.delay
        outcome = outcome.finish()
    assert isinstance(outcome, Reply)
    return outcome


def code(reply: Reply) -> str | None:
    body: dict[str, Any] = json.loads(reply.body)
    return body.get("Code")


# --- the network in front of the gate ----------------------------------------------------------


def test_jitter_reorders_arrivals_and_the_gate_counts_arrivals_not_sends() -> None:
    clock = Clock()
    emu = service(clock, qps=2, network_delay=0.01, network_jitter=0.2, seed=7)
    # Three requests sent 10 ms apart; each comes back as a trip through the network.
    sends = []
    for i in range(3):
        clock.now = i * 0.01
        trip = emu.handle(register(person=f"p{i}"))
        assert isinstance(trip, Deferred)
        assert 0.01 <= trip.delay <= 0.21  # delay + uniform jitter
        sends.append((clock.now + trip.delay, i, trip))
    arrivals = sorted(sends)
    order = [i for _, i, _ in arrivals]
    assert order != [0, 1, 2]  # this seed reorders them: the gate must see arrival order
    replies: dict[int, Reply] = {}
    for at, i, trip in arrivals:
        clock.now = at
        outcome = trip.finish()  # the request reaches the checks and the quota now
        replies[i] = settle(outcome, clock) if not isinstance(outcome, Reply) else outcome
    # The third to *arrive* is throttled, whichever was sent third.
    assert [code(replies[i]) for i in order] == [None, None, "Throttling.User"]
    # Its retry hint: milliseconds until the first arrival leaves the window.
    hint = dict(replies[order[2]].headers)["x-acs-retry-after"]
    assert int(hint) == pytest.approx((arrivals[0][0] + 1 - arrivals[2][0]) * 1000, abs=1)
    stats = emu.stats
    assert (stats.accepted, stats.throttled, stats.max_window_quota) == (2, 1, 2)


def test_network_draws_are_seeded_and_both_ways() -> None:
    def delays(seed: int) -> list[float]:
        clock = Clock()
        emu = service(clock, qps=None, network_delay=0.02, network_jitter=0.03, seed=seed)
        out = []
        for i in range(20):
            trip = emu.handle(register(person=f"p{i}"))
            assert isinstance(trip, Deferred)
            back = trip.finish()  # the answer travels back too
            assert isinstance(back, Deferred) and 0.02 <= back.delay <= 0.05
            out += [trip.delay, back.delay]
        return out

    assert delays(1) == delays(1) != delays(2)
    assert all(0.02 <= d <= 0.05 for d in delays(3))


def test_no_network_model_answers_at_once() -> None:
    clock = Clock()
    reply = service(clock, qps=1).handle(register())
    assert isinstance(reply, Reply) and reply.status == 200


# --- the quota's scope -------------------------------------------------------------------------


def test_each_action_has_its_own_quota_and_limit() -> None:
    clock = Clock()
    emu = service(clock, qps=3, action_qps={LIST: 1})
    registered = [emu.handle(register(person=f"p{i}")) for i in range(4)]
    listed = [emu.handle(signed(LIST)) for _ in range(2)]
    assert [code(r) for r in registered] == [None, None, None, "Throttling.User"]  # type: ignore[arg-type]
    assert [code(r) for r in listed] == [None, "Throttling.User"]  # type: ignore[arg-type]


def test_keys_of_one_account_share_its_quota() -> None:
    clock = Clock()
    accounts = {KEY.access_key_id: "acct", OTHER.access_key_id: "acct"}
    emu = service(clock, qps=3, accounts=accounts)
    replies = [emu.handle(register(key, f"p{i}")) for i, key in enumerate([KEY, OTHER] * 2)]
    assert [code(r) for r in replies] == [None, None, None, "Throttling.User"]  # type: ignore[arg-type]
    separate = service(Clock(), qps=3)  # not mapped: each key is an account of its own
    replies = [separate.handle(register(key, f"p{i}")) for i, key in enumerate([KEY, OTHER] * 2)]
    assert all(code(r) is None for r in replies)  # type: ignore[arg-type]


# --- the rival ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bursty", [False, True])
def test_a_rival_spends_the_account_quota_for_its_span(bursty: bool) -> None:
    clock = Clock()
    emu = service(clock, qps=10, rival_qps=5, rival_duration=1.0, rival_bursty=bursty)
    assert code(emu.handle(register(person="first"))) is None  # type: ignore[arg-type]
    clock.now = 0.95  # the rival's 5 calls of its first second are in the window
    replies = [emu.handle(register(person=f"p{i}")) for i in range(10)]
    assert sum(code(r) is None for r in replies) == 4  # type: ignore[arg-type]
    assert emu.stats.rival_accepted == 5 and emu.stats.max_window_quota == 10
    clock.now = 3.0  # the rival stopped after one second: the whole quota is ours again
    replies = [emu.handle(register(person=f"q{i}")) for i in range(12)]
    assert sum(code(r) is None for r in replies) == 10  # type: ignore[arg-type]
    stats = emu.stats
    assert (stats.rival_accepted, stats.rival_throttled) == (5, 0)
    assert stats.max_window_quota == 10


def test_a_rival_on_another_account_or_action_leaves_ours_alone() -> None:
    clock = Clock()
    emu = service(clock, qps=5, rival_qps=5, rival_key=OTHER.access_key_id)
    clock.now = 0.0
    emu.handle(signed(LIST))  # starts the rival's clock
    clock.now = 0.9
    replies = [emu.handle(register(person=f"p{i}")) for i in range(5)]
    assert all(code(r) is None for r in replies)  # type: ignore[arg-type]
    assert emu.stats.rival_accepted == 5


def test_rival_and_network_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="network_jitter"):
        EmulatorConfig(network_jitter=-1)
    with pytest.raises(ValueError, match="action_qps"):
        EmulatorConfig(action_qps={"Nope": 5})
    with pytest.raises(ValueError, match="action_qps"):
        EmulatorConfig(action_qps={LIST: 0.5})
    with pytest.raises(ValueError, match="rival_duration"):
        EmulatorConfig(rival_duration=-1)


def test_emulate_flags_set_the_network_rival_and_action_quotas() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "emulate",
            "--network-delay",
            "0.01",
            "--network-jitter",
            "0.03",
            "--rival-qps",
            "30",
            "--rival-start",
            "2",
            "--rival-duration",
            "15",
            "--rival-bursty",
            "--action-qps",
            "ListCustomPersons=10",
            "--no-retry-after",
        ]
    )
    config = config_from_args(args, None)
    assert (config.network_delay, config.network_jitter) == (0.01, 0.03)
    assert (config.rival_qps, config.rival_start, config.rival_duration) == (30, 2, 15)
    assert config.rival_bursty and not config.retry_after
    assert config.rival_client == "plain"  # the command line's rival is a real program
    assert dict(config.action_qps) == {LIST: 10.0}
    with pytest.raises(SystemExit):
        parser.parse_args(["emulate", "--action-qps", "Nope=3"])


# --- the hint, honoured by our client ----------------------------------------------------------


async def test_the_client_waits_as_the_retry_hint_says() -> None:
    # qps 1: the retry is accepted only if it waits until the first call has left the window;
    # with no hint the backoff (base 0) would retry at once and be throttled again.
    async with Emulator(EmulatorConfig(qps=1)) as emu:
        async with MtsFaceClient(
            **emu.client_kwargs(qps=1000, max_retries=1, backoff_base=0.0)
        ) as client:
            await client.register_custom_face("lib", "p", "https://i/1.jpg")
            await client.register_custom_face("lib", "p", "https://i/2.jpg")
        stats = emu.stats
    assert (stats.accepted, stats.throttled) == (2, 1)


async def test_without_the_hint_the_immediate_retry_is_throttled_again() -> None:
    async with Emulator(EmulatorConfig(qps=1, retry_after=False)) as emu:
        async with MtsFaceClient(
            **emu.client_kwargs(qps=1000, max_retries=1, backoff_base=0.0)
        ) as client:
            await client.register_custom_face("lib", "p", "https://i/1.jpg")
            with pytest.raises(ThrottlingError) as caught:
                await client.register_custom_face("lib", "p", "https://i/2.jpg")
        assert caught.value.retry_after is None
        assert emu.stats.throttled == 2

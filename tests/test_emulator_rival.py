"""The emulator's rival as a real program: a separate process, its own connections, its own
counts, on the same account's quota as the client under test."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from mts_faces import MtsFaceClient
from mts_faces.emulator import Emulator, EmulatorConfig
from mts_faces.emulator._rival_client import due_time


async def _until_rival_done(emulator: Emulator, calls: int) -> None:
    for _ in range(600):  # the process's own pace; a count, not a time, is asserted
        stats = emulator.stats
        if stats.rival_accepted + stats.rival_throttled >= calls:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the rival made {emulator.stats} of {calls} calls")


@pytest.mark.parametrize("client", ["plain", "official"])
async def test_a_process_rival_spends_the_same_accounts_quota(client: str) -> None:
    if client == "official" and importlib.util.find_spec("alibabacloud_mts20140618") is None:
        pytest.skip("the official SDK is in the bench extra")
    # A quota of 5 calls/s; the rival sends 8 in its first second, starting at our first call.
    config = EmulatorConfig(qps=5, rival_qps=8, rival_duration=1.0, rival_client=client)
    emulator = Emulator(config)
    async with emulator:
        async with MtsFaceClient(**emulator.client_kwargs()) as ours:
            await ours.list_custom_persons()  # the first request: the rival's origin
            await _until_rival_done(emulator, 8)
        stats = emulator.stats
    # Counted apart from ours: ours is the one listing, the rival's 8 are its own figures.
    assert stats.accepted == 1 and stats.throttled == 0
    assert stats.rival_accepted + stats.rival_throttled == 8
    # One second holds 5 calls of the account: at least 3 of its 8 were turned away.
    assert 1 <= stats.rival_accepted <= 5 and stats.rival_throttled >= 3
    assert stats.max_window_quota <= 5
    report = emulator.rival_report
    assert report is not None
    assert report["sent"] == 8 and report["accepted"] == stats.rival_accepted
    assert report["throttled"] == stats.rival_throttled and report["failed"] == 0


async def test_a_rival_never_begun_ends_with_the_emulator() -> None:
    emulator = Emulator(
        EmulatorConfig(qps=5, rival_qps=5, rival_duration=1.0, rival_client="plain")
    )
    async with emulator:
        pass  # no request came: the rival never started sending
    assert emulator.stats.rival_accepted == emulator.stats.rival_throttled == 0
    assert emulator.rival_report is None


def test_a_process_rival_is_refused_where_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="rival_client"):
        EmulatorConfig(rival_qps=5, rival_client="telepathy")
    with pytest.raises(ValueError, match="main key"):
        EmulatorConfig(rival_qps=5, rival_client="plain", rival_key="LTAIother")
    with pytest.raises(ValueError, match="tls"):
        EmulatorConfig(rival_qps=5, rival_client="plain", tls=True)


def test_the_rivals_calls_are_paced_or_bursty() -> None:
    assert [due_time(i, 4, bursty=False) for i in range(5)] == [0, 0.25, 0.5, 0.75, 1.0]
    assert [due_time(i, 4, bursty=True) for i in range(5)] == [0, 0, 0, 0, 1.0]

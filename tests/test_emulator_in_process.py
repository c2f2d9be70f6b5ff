"""The emulator's in-process transport: the same outcomes as over sockets, faults included."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from mts_faces import (
    AmbiguousOutcomeError,
    MtsFaceClient,
    RequestTimeoutError,
    ThrottlingError,
    TransportError,
)
from mts_faces.emulator import Emulator, EmulatorConfig


def _client(emulator: Emulator, **overrides: object) -> MtsFaceClient:
    return MtsFaceClient(**emulator.client_kwargs(in_process=True, **overrides))


async def test_commit_then_hang_times_out_and_the_face_is_stored() -> None:
    emulator = Emulator(EmulatorConfig(qps=None, commit_timeout_rate=1.0, hang=600, seed=1))
    async with _client(emulator, timeout=0.2, max_retries=0) as client:
        with pytest.raises(AmbiguousOutcomeError) as info:
            await client.register_custom_face("c", "p", "https://img.example/1.jpg")
    assert isinstance(info.value.cause, RequestTimeoutError)
    assert emulator.stats.faces_stored == 1 and emulator.stats.faulted["commit_timeout"] == 1


async def test_a_dropped_connection_is_sent_without_answer() -> None:
    emulator = Emulator(
        EmulatorConfig(qps=None, drop_rate=1.0, fault_actions=frozenset({"ListCustomPersons"}))
    )
    async with _client(emulator, max_retries=1, backoff_base=0.0) as client:
        with pytest.raises(TransportError) as info:
            await client.list_custom_persons()
    assert info.value.request_sent is True and "disconnected" in str(info.value)
    assert emulator.stats.faulted["drop"] == 2  # listing is idempotent: retried once


async def test_the_quota_applies_in_process() -> None:
    emulator = Emulator(EmulatorConfig(qps=2))
    async with _client(emulator, qps=1000, max_retries=0) as client:
        results = await asyncio.gather(
            *(client.list_custom_persons() for _ in range(5)), return_exceptions=True
        )
    assert sum(isinstance(r, ThrottlingError) for r in results) == 3
    assert emulator.stats.throttled == 3 and emulator.stats.max_window_accepted == 2


async def test_closing_cancels_calls_waiting_out_their_latency() -> None:
    emulator = Emulator(EmulatorConfig(qps=None, latency=600))
    transport = emulator.transport()
    async with httpx.AsyncClient(transport=transport) as raw:
        kwargs = emulator.client_kwargs(in_process=True)
        kwargs.pop("transport")
        async with MtsFaceClient(**kwargs, http_client=raw, max_retries=0) as client:
            call = asyncio.ensure_future(client.list_custom_persons())
            await asyncio.sleep(0.05)
            assert not call.done()
            await transport.aclose()
            with pytest.raises(TransportError, match="closed before answering") as info:
                await call
    assert info.value.request_sent is True


def test_kwargs_carry_the_quota_or_an_unlimited_rate() -> None:
    assert Emulator(EmulatorConfig(qps=7)).client_kwargs(in_process=True)["qps"] == 7.0
    unlimited = Emulator(EmulatorConfig(qps=None)).client_kwargs(in_process=True)["qps"]
    assert unlimited >= 1_000_000
    assert Emulator(EmulatorConfig(qps=7)).client_kwargs(in_process=True, qps=3)["qps"] == 3

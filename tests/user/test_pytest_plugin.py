"""The pytest plugin, as a user's suite would use it: fixtures, an overridden quota.

Written against the public API only. ``pytest_plugins = ["mts_faces.testing"]`` goes in the
user's top-level ``conftest.py`` (or, as here, in a test module).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mts_faces import MtsFaceClient
from mts_faces.emulator import Emulator, EmulatorConfig, EmulatorThread

pytest_plugins = ["mts_faces.testing"]

QPS = 5


@pytest.fixture
def mts_emulator_config() -> EmulatorConfig:
    return EmulatorConfig(qps=QPS, seed=7)


async def _register(client: MtsFaceClient, n: int) -> None:
    await asyncio.gather(
        *(
            client.register_custom_face("lib", f"p{i // 10}", f"https://img.example/{i}.jpg")
            for i in range(n)
        )
    )


@pytest.mark.asyncio
async def test_socket_emulator_with_overridden_quota_is_never_throttled(
    mts_emulator: EmulatorThread, mts_client_kwargs: dict[str, Any]
) -> None:
    assert mts_client_kwargs["qps"] == QPS  # the quota travels with the kwargs
    async with MtsFaceClient(**mts_client_kwargs) as client:
        await _register(client, 2 * QPS)
    stats = mts_emulator.stats
    assert (stats.throttled, stats.faces_stored) == (0, 2 * QPS)
    assert stats.max_window_accepted <= QPS


@pytest.mark.asyncio
async def test_in_process_emulator_with_overridden_quota_is_never_throttled(
    mts_emulator_in_process: Emulator, mts_client_kwargs_in_process: dict[str, Any]
) -> None:
    async with MtsFaceClient(**mts_client_kwargs_in_process) as client:
        await _register(client, 2 * QPS)
    stats = mts_emulator_in_process.stats
    assert (stats.throttled, stats.faces_stored) == (0, 2 * QPS)
    assert stats.max_window_accepted <= QPS


def test_sync_test_can_drive_the_socket_emulator(
    mts_emulator: EmulatorThread, mts_client_kwargs: dict[str, Any]
) -> None:
    async def go() -> int:
        async with MtsFaceClient(**mts_client_kwargs) as client:
            await client.register_custom_face("lib", "p", "https://img.example/x.jpg")
            listing = await client.list_custom_persons("lib")
        return len(list(listing.iter_faces()))

    assert asyncio.run(go()) == 1
    assert mts_emulator.library()["Category"][0]["CategoryId"] == "lib"

"""The emulator knobs exactly-once is tested with: late commits (committed D seconds after
arrival, then answered, even when the client has gone), malformed listings, emptying a
library from a test; all seeded."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from mts_faces import AmbiguousOutcomeError, MtsFaceClient, ResponseFormatError
from mts_faces.emulator import Emulator, EmulatorConfig
from mts_faces.emulator._command import add_parser, config_from_args


def client_for(emulator: Emulator, **options: object) -> MtsFaceClient:
    return MtsFaceClient(**emulator.client_kwargs(qps=1000, **options))


async def faces(client: MtsFaceClient, category: str = "lib") -> list[str]:
    listing = await client.list_custom_persons(category)
    return [face.image_url for _, _, face in listing.iter_faces()]


async def test_a_late_commit_lands_after_the_client_gave_up() -> None:
    config = EmulatorConfig(qps=None, seed=1, late_commit_rate=1.0, late_commit_delay=1.0)
    async with Emulator(config) as emulator, client_for(emulator, timeout=0.1) as client:
        with pytest.raises(AmbiguousOutcomeError):
            await client.register_custom_face("lib", "p", "https://img.example/1.jpg")
        # The client has gone; the face is not there yet (0.9 s before its commit) ...
        assert await faces(client) == []
        # ... and appears once the commit is due.
        for _ in range(100):
            if await faces(client):
                break
            await asyncio.sleep(0.05)
        assert await faces(client) == ["https://img.example/1.jpg"]
        assert emulator.stats.faulted["late_commit"] == 1


async def test_a_late_commit_within_the_timeout_is_answered() -> None:
    config = EmulatorConfig(qps=None, seed=1, late_commit_rate=1.0, late_commit_delay=0.05)
    async with Emulator(config) as emulator, client_for(emulator, timeout=5) as client:
        face = await client.register_custom_face("lib", "p", "https://img.example/1.jpg")
        listing = await client.list_custom_persons("lib")
        assert [f.face_id for _, _, f in listing.iter_faces()] == [face.face_id]


async def late_draws(seed: int) -> int:
    config = EmulatorConfig(qps=None, seed=seed, late_commit_rate=0.3, late_commit_delay=0.01)
    async with Emulator(config) as emulator, client_for(emulator) as client:
        for i in range(40):
            await client.register_custom_face("lib", f"p{i}", f"https://img.example/{i}.jpg")
        return int(emulator.stats.faulted.get("late_commit", 0))


async def test_late_commits_are_seeded() -> None:
    first, again = await late_draws(5), await late_draws(5)
    assert first == again and 0 < first < 40


async def test_malformed_listings_are_errors_of_each_kind_and_seeded() -> None:
    async def kinds(seed: int) -> list[str]:
        config = EmulatorConfig(qps=None, seed=seed, malformed_listing_rate=1.0)
        async with Emulator(config) as emulator, client_for(emulator, max_retries=0) as client:
            await client.register_custom_face("lib", "p", "https://img.example/1.jpg")
            seen = []
            for _ in range(30):
                with pytest.raises(ResponseFormatError) as info:
                    await client.list_custom_persons("lib")
                seen.append(str(info.value))
            assert emulator.stats.faulted["malformed_listing"] == 30
            return seen

    first = await kinds(3)
    assert first == await kinds(3)
    assert any("no Categories" in m for m in first)
    assert any("without FaceId" in m for m in first)
    assert any("without ImageUrl" in m for m in first)


async def test_empty_library_removes_one_library_only() -> None:
    async with Emulator(EmulatorConfig(qps=None)) as emulator, client_for(emulator) as client:
        for i in range(3):
            await client.register_custom_face("gone", f"p{i}", f"https://img.example/{i}.jpg")
        await client.register_custom_face("kept", "p", "https://img.example/k.jpg")
        assert emulator.empty_library("GONE") == 3
        assert await faces(client, "gone") == []
        assert await faces(client, "kept") == ["https://img.example/k.jpg"]
        assert emulator.empty_library() == 1


def test_emulate_command_exposes_the_knobs() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["emulate", "--late-commit-rate", "0.1", "--late-commit-delay", "3",
         "--malformed-listing-rate", "0.2", "--seed", "4"]
    )  # fmt: skip
    config = config_from_args(args, None)
    assert (config.late_commit_rate, config.late_commit_delay) == (0.1, 3.0)
    assert config.malformed_listing_rate == 0.2 and config.seed == 4
    with pytest.raises(ValueError):
        EmulatorConfig(late_commit_rate=1.5)

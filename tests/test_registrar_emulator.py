"""The registrar against the emulator: every FaceId collected, the cap, duplicates, lost
answers, stop and resume. The service's own listing is the judge of what was stored."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from mts_faces import MtsFaceClient
from mts_faces.emulator import Emulator, EmulatorConfig
from mts_faces.manifest import FaceRow
from mts_faces.registrar import Registrar, RowOutcome


def rows(persons: int, faces: int, category: str = "stars", start: int = 0) -> list[FaceRow]:
    return [
        FaceRow(category, f"p{p:03d}", f"https://img.example/{p:03d}/{i}.jpg")
        for p in range(start, start + persons)
        for i in range(faces)
    ]


def client_for(emulator: Emulator, **options: Any) -> MtsFaceClient:
    options.setdefault("qps", 1000)
    options.setdefault("backoff_base", 0.01)
    return MtsFaceClient(
        endpoint=emulator.url,
        access_key_id=emulator.key.access_key_id,
        access_key_secret=emulator.key.access_key_secret,
        **options,
    )


async def stored(client: MtsFaceClient, category: str = "stars") -> Counter[tuple[str, str]]:
    """(person, image URL) → number of faces the service holds for it."""
    listing = await client.list_custom_persons(category)
    return Counter(
        (person.person_id.casefold(), face.image_url) for _, person, face in listing.iter_faces()
    )


async def stored_ids(client: MtsFaceClient, category: str = "stars") -> set[str]:
    listing = await client.list_custom_persons(category)
    return {face.face_id for _, _, face in listing.iter_faces()}


async def run_all(registrar: Registrar, data: Iterable[FaceRow]) -> list[RowOutcome]:
    return [outcome async for outcome in registrar.run(data)]


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(qps=1000, seed=7)) as emu:
        yield emu


async def test_every_face_id_collected_and_stored(emulator: Emulator) -> None:
    data = rows(30, 5)
    async with client_for(emulator) as client:
        registrar = Registrar(client)
        outcomes = await run_all(registrar, data)
        held = await stored(client)
        ids = await stored_ids(client)

    assert [o.status for o in outcomes].count("registered") == len(data)
    assert sorted(o.row.row for o in outcomes) == list(range(1, len(data) + 1))
    collected = [face_id for faces in registrar.report.faces.values() for face_id in faces]
    assert len(collected) == len(set(collected)) == len(data)
    assert set(collected) == ids
    assert held == Counter((r.person_id, r.image_url) for r in data)
    assert registrar.report.registered == len(data)
    assert registrar.report.failed == registrar.report.skipped == 0


async def test_cap_counts_faces_already_in_the_library(emulator: Emulator) -> None:
    async with client_for(emulator) as client:
        for i in range(8):  # person p000 already has 8 faces
            await client.register_custom_face("stars", "P000", f"https://old.example/{i}.jpg")
        data = rows(1, 4) + [
            FaceRow("stars", "p001", f"https://new.example/{i}.jpg") for i in range(12)
        ]
        outcomes = await run_all(Registrar(client), data)
        held = await stored(client)

    by_person = Counter((o.row.person_id, o.status) for o in outcomes if isinstance(o.row, FaceRow))
    assert by_person[("p000", "registered")] == 2
    assert by_person[("p000", "skipped")] == 2
    assert by_person[("p001", "registered")] == 10
    assert by_person[("p001", "skipped")] == 2
    capped = [o for o in outcomes if o.status == "skipped"]
    assert all("cap" in (o.reason or "") for o in capped)
    per_person = Counter(person for person, _ in held.elements())
    assert per_person == {"p000": 10, "p001": 10}


async def test_duplicates_and_existing_faces_are_skipped_not_sent(emulator: Emulator) -> None:
    async with client_for(emulator) as client:
        await client.register_custom_face("stars", "p000", "https://img.example/000/0.jpg")
        data = [*rows(1, 3), FaceRow("Stars", "P000", "https://img.example/000/1.jpg")]
        attempts_before = client.attempts
        outcomes = await run_all(Registrar(client), data)
        sent = client.attempts - attempts_before
        held = await stored(client)

    statuses = {o.row.row: (o.status, o.reason or "") for o in outcomes}
    assert statuses[1][0] == "skipped" and "already in the library" in statuses[1][1]
    assert statuses[2][0] == "registered"
    assert statuses[3][0] == "registered"
    assert statuses[4][0] == "skipped" and "duplicate of row 2" in statuses[4][1]
    assert sent == 1 + 2  # one listing, two registrations
    assert all(count == 1 for count in held.values())


async def test_lost_answers_are_reconciled_without_duplicates() -> None:
    # A third of the registrations are stored and then their answer never comes.
    config = EmulatorConfig(qps=1000, seed=3, commit_timeout_rate=0.3, hang=30.0)
    async with Emulator(config) as emulator, client_for(emulator, timeout=0.3) as client:
        data = rows(10, 4)
        registrar = Registrar(client, settle=0.0)
        outcomes = await run_all(registrar, data)
        held = await stored(client)
        ids = await stored_ids(client)
        hung = emulator.stats.faulted.get("commit_timeout", 0)

    assert hung > 0
    assert registrar.report.reconciled > 0
    assert Counter(o.status for o in outcomes) == {"registered": len(data)}
    assert held == Counter((r.person_id, r.image_url) for r in data)  # no duplicates
    assert {o.face_id for o in outcomes} == ids  # no FaceId lost


async def test_stop_then_resume_with_the_ledger(emulator: Emulator, tmp_path: Path) -> None:
    ledger = tmp_path / "run.ledger"
    data = rows(20, 5)
    async with client_for(emulator, qps=200) as client:
        first = Registrar(client, ledger=ledger)
        seen: list[RowOutcome] = []
        async for outcome in first.run(data):
            seen.append(outcome)
            if len(seen) == 30:
                first.stop()
        assert first.report.stopped
        assert first.report.rows == len(seen)
        registered_first = {o.row.row for o in seen if o.status == "registered"}
        assert 30 <= len(registered_first) < len(data)
        # Rows read ahead but not sent come back as "not attempted", never silently.
        not_sent = [o for o in seen if o.status != "registered"]
        assert not_sent and {o.status for o in not_sent} == {"not attempted"}

        second = Registrar(client, ledger=ledger)
        again = await run_all(second, data)
        held = await stored(client)

    assert len(again) == len(data)
    resumed = {o.row.row for o in again if o.resumed}
    assert registered_first <= resumed
    assert Counter(o.status for o in again) == {"registered": len(data)}
    assert held == Counter((r.person_id, r.image_url) for r in data)


async def test_async_source_and_progress_callback(emulator: Emulator) -> None:
    data = rows(5, 2)

    async def source() -> AsyncIterator[FaceRow]:
        for row in data:
            await asyncio.sleep(0)
            yield row

    snapshots: list[int] = []
    async with client_for(emulator) as client:
        registrar = Registrar(client, progress=lambda p: snapshots.append(p.done), total=len(data))
        report = await registrar.register_all(source())

    assert report.registered == len(data)
    assert snapshots == sorted(snapshots) and snapshots[-1] == len(data)

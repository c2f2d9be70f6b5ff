"""Registrar logic against an in-memory fake service: cap, duplicates, ambiguity, journal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mts_faces import RateLimiterError
from mts_faces.manifest import BadRow, FaceRow
from mts_faces.registrar import Registrar, RowOutcome

from .fake_client import FakeClient


def rows(persons: int, per_person: int, category: str = "cat") -> list[FaceRow]:
    return [
        FaceRow(category, f"p{p}", f"https://img.example/{p}/{i}.jpg")
        for p in range(persons)
        for i in range(per_person)
    ]


async def run(client: FakeClient, data: Any, **kw: Any) -> tuple[Registrar, list[RowOutcome]]:
    kw.setdefault("settle", 0.0)
    kw.setdefault("retry_backoff", 0.0)
    registrar = Registrar(client, **kw)  # type: ignore[arg-type]
    outcomes = [o async for o in registrar.run(data)]
    return registrar, outcomes


def by_status(outcomes: list[RowOutcome], status: str) -> list[RowOutcome]:
    return [o for o in outcomes if o.status == status]


async def test_every_row_registered_and_face_ids_collected() -> None:
    client = FakeClient()
    registrar, outcomes = await run(client, rows(30, 10))
    assert len(outcomes) == 300
    registered = by_status(outcomes, "registered")
    assert len(registered) == 300
    assert sorted(o.face_id or "" for o in registered) == sorted(client.all_face_ids())
    report = registrar.report
    assert (report.rows, report.registered, report.skipped, report.failed) == (300, 300, 0, 0)
    assert sum(len(v) for v in report.faces.values()) == 300
    assert client.max_in_flight_per_person == 1


async def test_cap_counts_input_and_existing_faces_case_insensitively() -> None:
    client = FakeClient()
    await run(client, rows(1, 4, category="Cat"))  # 4 faces exist for person p0
    data = [FaceRow("CAT", "P0", f"https://img.example/new/{i}.jpg") for i in range(8)]
    data += [FaceRow("cat", "p1", f"https://img.example/p1/{i}.jpg") for i in range(12)]
    _registrar, outcomes = await run(client, data)
    p0 = sorted((o for o in outcomes if o.row.row <= 8), key=lambda o: o.row.row)
    assert [o.status for o in p0] == ["registered"] * 6 + ["skipped"] * 2
    assert all("at most 10" in (o.reason or "") for o in by_status(p0, "skipped"))
    p1 = [o for o in outcomes if o.row.row > 8]
    assert len(by_status(p1, "registered")) == 10 and len(by_status(p1, "skipped")) == 2
    assert all(len(faces) == 10 for faces in client.store.values())


async def test_check_existing_can_be_turned_off() -> None:
    client = FakeClient()
    await run(client, rows(1, 4))
    before = client.calls.get("ListCustomPersons", 0)
    _, outcomes = await run(
        client, [FaceRow("cat", "p0", f"https://x/{i}") for i in range(10)], check_existing=False
    )
    assert client.calls.get("ListCustomPersons", 0) == before
    # Without the listing, the service's own cap refuses the 11th and later faces.
    assert len(by_status(outcomes, "registered")) == 6
    assert len(by_status(outcomes, "failed")) == 4


async def test_duplicates_and_existing_faces_are_not_registered_again() -> None:
    client = FakeClient()
    data = rows(2, 3) + rows(2, 3)  # every row twice
    _registrar, outcomes = await run(client, data)
    assert len(by_status(outcomes, "registered")) == 6
    dups = by_status(outcomes, "skipped")
    assert len(dups) == 6 and all("duplicate of row" in (o.reason or "") for o in dups)
    # A second run sees them in the library.
    _, again = await run(client, rows(2, 3))
    assert [o.status for o in again] == ["skipped"] * 6
    assert all(o.face_id and o.reason == "already in the library" for o in again)
    assert len(client.all_face_ids()) == 6


async def test_lost_answers_are_reconciled_without_duplicates() -> None:
    # Every third registration stores the face but loses the answer; every fifth is dropped
    # before storing. Neither may produce a duplicate or a lost row.
    def fault(action: str, n: int) -> str | None:
        if action != "RegisterCustomFace":
            return None
        return "lost" if n % 3 == 0 else "drop" if n % 5 == 0 else None

    client = FakeClient(fault)
    registrar, outcomes = await run(client, rows(20, 5))
    assert len(by_status(outcomes, "registered")) == 100
    urls = [f.image_url for faces in client.store.values() for f in faces]
    assert len(urls) == len(set(urls)) == 100
    assert sorted(o.face_id or "" for o in outcomes) == sorted(client.all_face_ids())
    assert registrar.report.reconciled > 0


async def test_bad_rows_and_invalid_rows_fail_with_reasons() -> None:
    client = FakeClient()
    data: list[Any] = [
        BadRow(1, "missing or empty", "PersonId"),
        FaceRow("cat", "x" * 121, "https://x/1"),
        {"category_id": "cat", "person_id": "p", "image_url": "ftp://nope"},
        {"CategoryId": "cat", "PersonId": "p", "ImageUrl": "https://ok/1"},
    ]
    _, outcomes = await run(client, data)
    assert [o.status for o in outcomes] == ["failed", "failed", "failed", "registered"]
    assert "PersonId" in (outcomes[0].reason or "")
    assert "120" in (outcomes[1].reason or "")
    assert "ImageUrl" in (outcomes[2].reason or "")


async def test_ledger_resume_skips_finished_rows(tmp_path: Path) -> None:
    ledger = tmp_path / "run.ledger"
    client = FakeClient()
    await run(client, rows(5, 4), ledger=ledger)
    calls = client.attempts
    registrar, outcomes = await run(client, rows(5, 4), ledger=ledger, check_existing=False)
    assert client.attempts == calls  # nothing sent again, not even a listing
    assert all(o.status == "registered" and o.resumed for o in outcomes)
    assert registrar.report.resumed == 20


async def test_ledger_resume_checks_the_library_and_reregisters_what_is_gone(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "run.ledger"
    client = FakeClient()
    await run(client, rows(3, 2), ledger=ledger)
    del client.store[("cat", "p1")]  # someone removed a person's faces
    registrar, outcomes = await run(client, rows(3, 2), ledger=ledger)
    assert registrar.report.reregistered == 2
    assert registrar.report.resumed == 4
    assert [o.status for o in outcomes] == ["registered"] * 6
    assert sorted(o.face_id or "" for o in outcomes) == sorted(client.all_face_ids())
    assert len(client.all_face_ids()) == 6


async def test_rows_in_flight_at_a_crash_are_settled_not_resent(tmp_path: Path) -> None:
    from mts_faces.ledger import Ledger, LedgerIdentity

    path = tmp_path / "run.ledger"
    client = FakeClient()
    stored = FaceRow("cat", "p", "https://x/stored.jpg", row=1)
    lost = FaceRow("cat", "p", "https://x/never.jpg", row=2)
    await client.register_custom_face("cat", "p", stored.image_url)
    # A run that died after recording both starts: one face was stored, one was not.
    crashed = Ledger(path, LedgerIdentity("fake.example.com", "fake-key")).open()
    for r in (stored, lost):
        await crashed.start(r.row_key, r.row, r.category_id, r.person_id, r.image_url)
    await crashed.aclose()
    for check in (True, False):
        registrar, outcomes = await run(client, [stored, lost], ledger=path, check_existing=check)
        assert [o.status for o in outcomes] == ["registered", "registered"], check
        assert len(client.store[("cat", "p")]) == 2, check  # nothing stored twice
        assert registrar.report.duplicates_found == 0


async def test_progress_callback_and_streaming_async_input() -> None:
    seen: list[int] = []

    async def source() -> Any:
        for row in rows(4, 5):
            yield row

    client = FakeClient()
    _registrar, outcomes = await run(
        client, source(), progress=lambda p: seen.append(p.done), total=20
    )
    assert len(outcomes) == 20
    assert seen[-1] == 20 and seen == sorted(seen)


async def test_stop_leaves_every_read_row_accounted() -> None:
    client = FakeClient()
    registrar = Registrar(client, concurrency=2)  # type: ignore[arg-type]
    outcomes: list[RowOutcome] = []
    async for outcome in registrar.run(rows(50, 2)):
        outcomes.append(outcome)
        if len(outcomes) == 10:
            registrar.stop()
    assert registrar.report.stopped
    assert len(outcomes) == registrar.report.rows
    registered = {o.face_id for o in by_status(outcomes, "registered")}
    assert registered == set(client.all_face_ids())
    assert not by_status(outcomes, "failed")
    not_attempted = by_status(outcomes, "not attempted")
    assert not_attempted and all("stopped" in (o.reason or "") for o in not_attempted)
    assert registrar.report.not_attempted == len(not_attempted)


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_streams_without_reading_everything_first(concurrency: int) -> None:
    read = 0

    def source() -> Any:
        nonlocal read
        for row in rows(2000, 1):
            read += 1
            yield row

    client = FakeClient()
    registrar = Registrar(client, concurrency=concurrency, buffer_size=50)  # type: ignore[arg-type]
    gen = registrar.run(source())
    first = await gen.__anext__()
    assert first.status == "registered"
    assert read < 200  # read-ahead is bounded by the buffer, not by the input
    await gen.aclose()


async def test_every_call_of_the_registrar_takes_the_bulk_lane() -> None:
    # Lost answers make it list persons and check the library too: every kind of call.
    client = FakeClient(
        fault=lambda action, n: "lost" if action == "RegisterCustomFace" and n % 7 == 0 else None
    )
    _, outcomes = await run(client, rows(5, 4))
    assert len(by_status(outcomes, "registered")) == 20
    assert {"RegisterCustomFace", "ListCustomPersons"} <= set(client.calls)
    assert client.priorities and set(client.priorities) == {"bulk"}


async def test_a_shared_limiter_that_gives_up_stops_the_run_and_sends_nothing_more() -> None:
    client = FakeClient(
        fault=lambda action, n: (
            "limiter-down" if action == "RegisterCustomFace" and n >= 4 else None
        )
    )
    registrar = Registrar(client, settle=0.0, retry_backoff=0.0, concurrency=1)  # type: ignore[arg-type]
    outcomes: list[RowOutcome] = []
    with pytest.raises(RateLimiterError):
        async for outcome in registrar.run(rows(1, 8)):
            outcomes.append(outcome)
    assert len(outcomes) == 8  # every row accounted for
    assert len(client.all_face_ids()) == 3
    assert len(by_status(outcomes, "registered")) == 3
    # The row that met the outage and every row after it were never sent: not attempted,
    # never "failed", and not one more registration was tried after the error.
    assert client.calls["RegisterCustomFace"] == 4
    assert by_status(outcomes, "failed") == []
    assert all(o.status in ("registered", "not attempted") for o in outcomes)


async def test_concurrency_beyond_the_connection_pool_is_capped_by_it() -> None:
    # A huge --concurrency must not size the read-ahead buffer (memory) from the wish.
    client = FakeClient()
    registrar = Registrar(client, concurrency=100_000_000)  # type: ignore[arg-type]
    assert registrar.concurrency == client.max_connections

"""Exactly once in the field, against the emulator: late commits beyond the client's timeout,
concurrent runs, a wiped library, malformed listings after lost answers, a failing listing,
the retry budget, stop and early exit. Each ends with the emulator's own store as the judge:
0 duplicates and 0 rows lost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mts_faces import MtsFaceClient
from mts_faces.cli import main
from mts_faces.emulator import Emulator, EmulatorConfig
from mts_faces.ledger import LedgerLockedError
from mts_faces.manifest import FaceRow
from mts_faces.registrar import Registrar, RowOutcome

CATEGORY = "stars"


def rows(persons: int, faces: int, category: str = CATEGORY) -> list[FaceRow]:
    return [
        FaceRow(category, f"p{p:03d}", f"https://img.example/{category}/{p:03d}/{i}.jpg")
        for p in range(persons)
        for i in range(faces)
    ]


def client_for(emulator: Emulator, **options: Any) -> MtsFaceClient:
    options.setdefault("qps", 1000)
    options.setdefault("backoff_base", 0.01)
    return MtsFaceClient(**emulator.client_kwargs(**options))


def store(emulator: Emulator, category: str = CATEGORY) -> Counter[tuple[str, str]]:
    """(person, image URL) → faces stored, from the emulator's own library."""
    held: Counter[tuple[str, str]] = Counter()
    for cat in emulator.library()["Category"]:
        if cat["CategoryId"].casefold() != category.casefold():
            continue
        for person in cat["Persons"]["Person"]:
            for face in person["Faces"]["Face"]:
                held[(person["PersonId"].casefold(), face["ImageUrl"])] += 1
    return held


def wanted(data: list[FaceRow]) -> Counter[tuple[str, str]]:
    return Counter((r.person_id.casefold(), r.image_url) for r in data)


async def run_all(registrar: Registrar, data: Any) -> list[RowOutcome]:
    return [o async for o in registrar.run(data)]


# --- late commits -----------------------------------------------------------------------------


async def test_late_commits_beyond_the_client_timeout_are_settled_not_resent(
    tmp_path: Path,
) -> None:
    # 30% of registrations are committed 0.5 s after arrival; the client gives up at 0.2 s.
    config = EmulatorConfig(qps=None, seed=21, late_commit_rate=0.3, late_commit_delay=0.5)
    data = rows(12, 4)
    async with Emulator(config) as emulator, client_for(emulator, timeout=0.2) as client:
        registrar = Registrar(client, ledger=tmp_path / "l.db", settle=1.0, retry_backoff=0.01)
        outcomes = await run_all(registrar, data)
        await asyncio.sleep(0.6)  # any commit still pending lands now
        late = emulator.stats.faulted.get("late_commit", 0)
        held = store(emulator)
    print(f"late commits {late} of {len(data)} rows: reconciled {registrar.report.reconciled}")
    assert late >= 5
    assert registrar.report.ambiguous >= 5 and registrar.report.reconciled >= 5
    assert Counter(o.status for o in outcomes) == {"registered": len(data)}
    assert held == wanted(data)  # 0 duplicates, 0 lost
    assert registrar.report.duplicates_found == 0


async def test_without_settling_late_commits_do_duplicate() -> None:
    """The control: the same service with settle=0 and no verification stores duplicates,
    so the test above could fail."""
    config = EmulatorConfig(qps=None, seed=21, late_commit_rate=0.3, late_commit_delay=0.5)
    data = rows(12, 4)
    async with Emulator(config) as emulator, client_for(emulator, timeout=0.2) as client:
        registrar = Registrar(client, settle=0.0, verify=False, retry_backoff=0.01)
        await run_all(registrar, data)
        await asyncio.sleep(0.6)
        held = store(emulator)
    print(f"settle=0, no verification: {sum(n - 1 for n in held.values())} duplicates")
    assert sum(n - 1 for n in held.values()) > 0


# --- concurrent runs --------------------------------------------------------------------------


async def test_a_second_run_on_the_same_ledger_refuses_at_once(tmp_path: Path) -> None:
    ledger = tmp_path / "l.db"
    data = rows(20, 5)
    config = EmulatorConfig(qps=None, seed=4, latency=0.005)
    async with Emulator(config) as emulator, client_for(emulator) as client:
        first = Registrar(client, ledger=ledger)
        outcomes: list[RowOutcome] = []
        async for outcome in first.run(data):
            outcomes.append(outcome)
            if len(outcomes) == 3:
                async with client_for(emulator) as other:
                    with pytest.raises(LedgerLockedError) as info:
                        await run_all(Registrar(other, ledger=ledger), data)
                    assert other.attempts == 0  # refused before sending anything
        held = store(emulator)
    assert f"PID {os.getpid()}" in str(info.value) and socket.gethostname() in str(info.value)
    assert held == wanted(data)
    # A Registrar runs once.
    with pytest.raises(RuntimeError, match="has run already"):
        await run_all(first, data)


async def test_two_runs_on_two_ledgers_then_verify_repair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = rows(15, 4)
    config = EmulatorConfig(qps=None, seed=5, latency=0.002)
    async with Emulator(config) as emulator:
        async with client_for(emulator) as a, client_for(emulator) as b:
            await asyncio.gather(
                run_all(Registrar(a, ledger=tmp_path / "a.db"), data),
                run_all(Registrar(b, ledger=tmp_path / "b.db"), data),
            )
        before = store(emulator)
        duplicates = sum(n - 1 for n in before.values())
        assert duplicates > 0  # two ledgers cannot see each other: this is what verify is for
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emulator.key.access_key_id)
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", emulator.key.access_key_secret)
        base = ["verify", "--category", CATEGORY, "--endpoint", emulator.url]
        ledger = ["--ledger", str(tmp_path / "a.db")]
        # The CLI runs its own event loop: run it in a thread beside the emulator's.
        dry = await asyncio.to_thread(main, base)
        assert store(emulator) == before  # a dry run removes nothing
        fixed = await asyncio.to_thread(main, [*base, "--repair", *ledger])
        after = store(emulator)
        again = await asyncio.to_thread(main, base)
        listing = emulator.library()
    err = capsys.readouterr().err
    print(f"two ledgers at once: {duplicates} duplicates of {len(data)} rows; after repair 0")
    assert (dry, fixed, again) == (1, 0, 0)
    assert f"{duplicates} extra FaceIds would remove" in err
    assert after == wanted(data)  # 0 duplicates, 0 rows lost
    # The FaceIds the ledger holds are the ones kept.
    import sqlite3

    kept = {
        face["FaceId"]
        for cat in listing["Category"]
        for person in cat["Persons"]["Person"]
        for face in person["Faces"]["Face"]
    }
    db = sqlite3.connect(tmp_path / "a.db")
    ledger_ids = {row[0] for row in db.execute("SELECT face_id FROM rows")}
    assert ledger_ids <= kept


# --- the library wins -------------------------------------------------------------------------


async def test_a_wiped_library_is_registered_again_on_rerun(tmp_path: Path) -> None:
    ledger = tmp_path / "l.db"
    data = rows(10, 3)
    async with Emulator(EmulatorConfig(qps=None, seed=6)) as emulator:
        async with client_for(emulator) as client:
            await run_all(Registrar(client, ledger=ledger), data)
        assert emulator.empty_library(CATEGORY) == len(data)
        async with client_for(emulator) as client:
            rerun = Registrar(client, ledger=ledger)
            outcomes = await run_all(rerun, data)
        held = store(emulator)
    assert rerun.report.reregistered == len(data) and rerun.report.resumed == 0
    assert Counter(o.status for o in outcomes) == {"registered": len(data)}
    assert held == wanted(data)


# --- malformed listings -----------------------------------------------------------------------


async def test_malformed_listings_after_lost_answers_never_read_as_nothing_stored(
    tmp_path: Path,
) -> None:
    # A fifth of the registrations are stored and their answer lost; 40% of the listings
    # come back 200 without Categories or with a face missing its FaceId or ImageUrl.
    config = EmulatorConfig(
        qps=None, seed=8, commit_timeout_rate=0.2, hang=0.05, malformed_listing_rate=0.4
    )
    data = rows(15, 4)
    ledger = tmp_path / "l.db"
    async with Emulator(config) as emulator:
        for _ in range(4):  # rows left in doubt are settled by a rerun
            async with client_for(emulator, timeout=1.0) as client:
                registrar = Registrar(client, ledger=ledger, settle=0.2, retry_backoff=0.01)
                outcomes = await run_all(registrar, data)
            if all(o.status == "registered" for o in outcomes):
                break
        malformed = emulator.stats.faulted.get("malformed_listing", 0)
        lost = emulator.stats.faulted.get("commit_timeout", 0)
        held = store(emulator)
    print(f"malformed listings {malformed}, lost answers {lost}, {len(data)} rows")
    assert malformed >= 5 and lost >= 5
    assert Counter(o.status for o in outcomes) == {"registered": len(data)}
    assert held == wanted(data)


# --- a failing listing ------------------------------------------------------------------------


async def test_a_failing_listing_opens_a_circuit_for_its_category_only() -> None:
    from .fake_client import FakeClient

    class OneBadLibrary(FakeClient):
        async def list_custom_persons(
            self, category_id: str | None = None, *a: Any, **k: Any
        ) -> Any:
            if category_id == "broken":
                self._count("ListCustomPersons")
                from mts_faces import ServerError

                raise ServerError("ServiceUnavailable", "busy", http_status=503)
            return await super().list_custom_persons(category_id, *a, **k)

    client = OneBadLibrary()
    data = rows(5, 2, "broken") + rows(5, 2, "fine")
    registrar = Registrar(client, listing_attempts=3, retry_backoff=0.0)  # type: ignore[arg-type]
    outcomes = await run_all(registrar, data)
    broken = [o for o in outcomes if isinstance(o.row, FaceRow) and o.row.category_id == "broken"]
    fine = [o for o in outcomes if isinstance(o.row, FaceRow) and o.row.category_id == "fine"]
    assert {o.status for o in broken} == {"failed"}
    assert all("listing library 'broken' failed 3 times" in (o.reason or "") for o in broken)
    assert {o.status for o in fine} == {"registered"}
    # Three listings of the broken library in all, not three per row; nothing sent for it.
    assert client.calls["ListCustomPersons"] == 3 + 1
    assert client.calls["RegisterCustomFace"] == len(fine)


async def test_a_listing_that_always_fails_costs_a_bounded_number_of_calls() -> None:
    config = EmulatorConfig(
        qps=None,
        seed=9,
        unavailable_rate=1.0,
        fault_actions=frozenset({"ListCustomPersons"}),
    )
    data = rows(20, 5)
    async with Emulator(config) as emulator, client_for(emulator) as client:
        registrar = Registrar(client, retry_backoff=0.001)
        outcomes = await run_all(registrar, data)
        by_action = emulator.stats.requests_by_action
    assert {o.status for o in outcomes} == {"failed"}
    assert by_action.get("RegisterCustomFace", 0) == 0
    assert by_action["ListCustomPersons"] == 5  # listing_attempts, once for the library


# --- one retry budget -------------------------------------------------------------------------


async def test_client_and_row_retries_do_not_multiply() -> None:
    config = EmulatorConfig(qps=None, seed=10, unavailable_rate=1.0)
    data = rows(4, 2)
    async with Emulator(config) as emulator, client_for(emulator, max_retries=5) as client:
        registrar = Registrar(client, max_attempts=3, retry_backoff=0.001)
        outcomes = await run_all(registrar, data)
        registrations = emulator.stats.requests_by_action["RegisterCustomFace"]
    assert {o.status for o in outcomes} == {"failed"}
    assert all("gave up after 3 attempts" in (o.reason or "") for o in outcomes)
    assert registrations == 3 * len(data)  # not 3 x (5 + 1)


# --- stopping ---------------------------------------------------------------------------------


async def test_leaving_run_early_stops_at_once_and_closes_the_input(tmp_path: Path) -> None:
    closed = asyncio.Event()
    data = rows(50, 4)

    async def source() -> AsyncIterator[FaceRow]:
        try:
            for row in data:
                yield row
        finally:
            closed.set()

    ledger = tmp_path / "l.db"
    config = EmulatorConfig(qps=None, seed=12, latency=0.002)
    async with Emulator(config) as emulator:
        async with client_for(emulator) as client:
            registrar = Registrar(client, ledger=ledger, concurrency=4)
            seen = 0
            async with contextlib.aclosing(registrar.run(source())) as outcomes:
                async for _ in outcomes:
                    seen += 1
                    if seen == 10:
                        break
            assert closed.is_set()
            assert registrar.report.stopped
            sent = emulator.stats.requests_by_action["RegisterCustomFace"]
            await asyncio.sleep(0.05)
            assert emulator.stats.requests_by_action["RegisterCustomFace"] == sent
            assert sent < len(data) // 2
        # The ledger was released and the same job resumes from it.
        async with client_for(emulator) as client:
            rerun = Registrar(client, ledger=ledger)
            outcomes_again = await run_all(rerun, data)
        held = store(emulator)
    assert Counter(o.status for o in outcomes_again) == {"registered": len(data)}
    assert rerun.report.resumed >= 10
    assert held == wanted(data)


async def test_stop_ends_unsent_rows_not_attempted_and_a_rerun_finishes(tmp_path: Path) -> None:
    ledger = tmp_path / "l.db"
    data = rows(30, 3)
    config = EmulatorConfig(qps=None, seed=13, latency=0.002)
    async with Emulator(config) as emulator:
        async with client_for(emulator) as client:
            registrar = Registrar(client, ledger=ledger, concurrency=2)
            outcomes = []
            async for outcome in registrar.run(data):
                outcomes.append(outcome)
                if len(outcomes) == 5:
                    registrar.stop()
        statuses = Counter(o.status for o in outcomes)
        assert statuses["not attempted"] > 0 and statuses["failed"] == 0
        assert registrar.report.not_attempted == statuses["not attempted"]
        async with client_for(emulator) as client:
            rerun = Registrar(client, ledger=ledger)
            again = await run_all(rerun, data)
        held = store(emulator)
    assert Counter(o.status for o in again) == {"registered": len(data)}
    assert held == wanted(data)

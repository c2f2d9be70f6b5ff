"""Review fixes around the settle window, the retry predicate, the ledger lock and
--no-check-existing. Clocks are injected: nothing here measures real time."""

from __future__ import annotations

from typing import Any

from mts_faces import AmbiguousOutcomeError, CustomPersons, RegisteredFace, TransportError
from mts_faces.manifest import FaceRow
from mts_faces.reconcile import (
    Gate,
    ListingCircuit,
    RetryBudget,
    ServiceCalls,
    SettleHooks,
    Settler,
)


class FakeTime:
    """A wall clock that only moves when someone sleeps (or the client waits)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class SlowLimiterClient:
    """Waits ``limiter_wait`` seconds (its limiter) before each send; the first send's answer
    is lost. Records when each request actually left."""

    endpoint = "https://fake.example.com"
    timeout = 1.0
    qps = 100.0
    current_rate = None
    max_connections = 4
    attempts = 0
    credentials: Any = None

    def __init__(self, time: FakeTime, limiter_wait: float) -> None:
        self.time = time
        self.limiter_wait = limiter_wait
        self.sent_at: list[float] = []

    async def register_custom_face(
        self, category_id: str, person_id: str, image_url: str, *a: Any, **k: Any
    ) -> RegisteredFace:
        self.time.now += self.limiter_wait  # queued in the client's rate limiter
        self.sent_at.append(self.time.now)
        if len(self.sent_at) == 1:
            raise AmbiguousOutcomeError(
                "RegisterCustomFace", TransportError("answer lost", request_sent=True)
            )
        return RegisteredFace(request_id="r", face_id=f"f{len(self.sent_at)}")

    async def list_custom_persons(self, *a: Any, **k: Any) -> CustomPersons:
        return CustomPersons(request_id="l")  # well-formed, holds nothing

    async def unregister_custom_face(self, *a: Any, **k: Any) -> Any:
        raise AssertionError("not called")


class Known:
    def __init__(self) -> None:
        self.faces: dict[str, str] = {}

    def know(self, image_url: str, face_id: str) -> None:
        self.faces[image_url] = face_id


async def test_settle_deadline_counts_from_the_send_not_from_the_start_before_the_limiter() -> None:
    time = FakeTime()
    client = SlowLimiterClient(time, limiter_wait=30.0)
    settle = 10.0
    settler = Settler(
        ServiceCalls(client, Gate(1)),  # type: ignore[arg-type]
        None,
        settle=settle,
        budget=RetryBudget(),
        circuit=ListingCircuit(10),
        hooks=SettleHooks(lambda: False, lambda row, at: None, lambda: None),
        clock=time.clock,
        sleep=time.sleep,
    )
    row = FaceRow("stars", "p1", "https://img.example/1.jpg")
    outcome = await settler.register_row(Known(), row, None)
    assert outcome.status == "registered"
    first, second = client.sent_at
    # Not resent before the settle period has passed since the first request actually left.
    # (Counted from the start recorded before the 30 s limiter wait, the resend decision
    # would be taken at start + 10 s, long before first + 10 s.)
    assert second - client.limiter_wait >= first + settle


def _crash(path: Any, pid: int, heartbeat: float) -> None:
    """Leave the ledger as a process killed while holding it would: its lock row stays."""
    import socket
    import sqlite3

    db = sqlite3.connect(path)
    db.execute(
        "INSERT OR REPLACE INTO lock (id, host, pid, since, heartbeat, token) "
        "VALUES (1, ?, ?, ?, ?, 'dead')",
        (socket.gethostname(), pid, heartbeat, heartbeat),
    )
    db.commit()
    db.close()


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_a_rerun_settles_a_row_left_started_from_when_the_crashed_run_was_last_alive(
    tmp_path: Any,
) -> None:
    from mts_faces.ledger import HEARTBEAT_EVERY, Ledger, LedgerIdentity

    time = FakeTime()
    path = tmp_path / "l.db"
    identity = LedgerIdentity("fake.example.com", "fake-key")
    row = FaceRow("stars", "p1", "https://img.example/1.jpg")
    first = Ledger(path, identity, clock=time.clock).open()
    await first.start(row.row_key, row.row, row.category_id, row.person_id, row.image_url)
    first.close_sync()
    # The start was recorded at 1000; the request then waited 30 s in the limiter and left;
    # the process was killed at 1035, its last heartbeat at 1032.
    _crash(path, _dead_pid(), heartbeat=1_032.0)
    time.now = 1_050.0
    ledger = Ledger(path, identity, clock=time.clock).open()
    try:
        assert ledger.previous_seen == 1_032.0 + HEARTBEAT_EVERY
        prior = ledger.get(row.row_key)
        assert prior is not None and prior.state == "started" and prior.started_at == 1_000.0
        client = SlowLimiterClient(time, limiter_wait=0.0)
        client.sent_at.append(0.0)  # its first request was the crashed run's
        settle = 10.0
        settler = Settler(
            ServiceCalls(client, Gate(1)),  # type: ignore[arg-type]
            ledger,
            settle=settle,
            budget=RetryBudget(),
            circuit=ListingCircuit(10),
            hooks=SettleHooks(lambda: False, lambda row, at: None, lambda: None),
            clock=time.clock,
            sleep=time.sleep,
        )
        outcome = await settler.register_row(Known(), row, prior)
        assert outcome.status == "registered"
        # Resent only once the settle period has passed since the crashed run was last seen
        # alive (start + settle = 1010 would have resent at once).
        assert client.sent_at[1] >= 1_032.0 + HEARTBEAT_EVERY + settle
    finally:
        await ledger.aclose()


async def test_a_rerun_with_a_short_settle_still_settles_inherited_rows_for_the_default(
    tmp_path: Any,
) -> None:
    from mts_faces.ledger import Ledger, LedgerIdentity
    from mts_faces.reconcile import default_settle

    time = FakeTime()
    path = tmp_path / "l.db"
    identity = LedgerIdentity("fake.example.com", "fake-key")
    row = FaceRow("stars", "p1", "https://img.example/1.jpg")
    first = Ledger(path, identity, clock=time.clock).open()
    await first.start(row.row_key, row.row, row.category_id, row.person_id, row.image_url)
    await first.aclose()  # ended cleanly at 1000 with the row in flight (drain timed out)
    time.now = 1_001.0
    ledger = Ledger(path, identity, clock=time.clock).open()
    try:
        prior = ledger.get(row.row_key)
        client = SlowLimiterClient(time, limiter_wait=0.0)
        client.sent_at.append(0.0)
        settler = Settler(
            ServiceCalls(client, Gate(1)),  # type: ignore[arg-type]
            ledger,
            settle=0.0,  # the rerun's --settle 0
            budget=RetryBudget(),
            circuit=ListingCircuit(10),
            hooks=SettleHooks(lambda: False, lambda row, at: None, lambda: None),
            clock=time.clock,
            sleep=time.sleep,
            inherited_settle=max(0.0, default_settle(client.timeout)),
        )
        outcome = await settler.register_row(Known(), row, prior)
        assert outcome.status == "registered"
        assert client.sent_at[1] >= 1_000.0 + default_settle(client.timeout)
    finally:
        await ledger.aclose()


async def test_the_registrar_settles_inherited_rows_for_at_least_the_default(
    tmp_path: Any,
) -> None:
    from mts_faces.registrar import Registrar
    from mts_faces.scheduler import Scheduler

    from .fake_client import FakeClient

    registrar = Registrar(FakeClient(), settle=0.0)  # type: ignore[arg-type]
    scheduler = Scheduler(
        registrar.client,
        None,
        registrar._options,
        registrar.report,
        registrar._stop,
    )
    assert scheduler.settler.settle == 0.0
    assert scheduler.settler.inherited_settle == 5.0  # default_settle(1 s timeout)


def test_a_settle_shorter_than_the_timeout_warns_that_duplicates_may_remain(
    caplog: Any,
) -> None:
    import logging

    from mts_faces.registrar import Registrar

    from .fake_client import FakeClient

    with caplog.at_level(logging.WARNING, logger="mts_faces"):
        Registrar(FakeClient(), settle=0.5)  # type: ignore[arg-type]
    assert "duplicates may remain" in caplog.text and "verify --repair" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mts_faces"):
        Registrar(FakeClient(), settle=1.0)  # type: ignore[arg-type]
    assert caplog.text == ""


async def test_with_settle_0_the_end_of_run_verification_waits_for_late_commits() -> None:
    """settle=0 resends at once, so late commits duplicate; the end-of-run verification
    waits max(settle, timeout) after each last send and removes them all."""
    import asyncio
    from collections import Counter

    from mts_faces import MtsFaceClient
    from mts_faces.emulator import Emulator, EmulatorConfig
    from mts_faces.registrar import Registrar

    # Committed 0.45 s after arrival; the client gives up at 0.3 s.
    config = EmulatorConfig(qps=None, seed=21, late_commit_rate=0.3, late_commit_delay=0.45)
    data = [
        FaceRow("stars", f"p{p:03d}", f"https://img.example/{p:03d}/{i}.jpg")
        for p in range(12)
        for i in range(4)
    ]
    async with Emulator(config) as emulator:
        kwargs = emulator.client_kwargs(in_process=True, qps=1000, backoff_base=0.01)
        async with MtsFaceClient(**kwargs, timeout=0.3) as client:
            registrar = Registrar(client, settle=0.0, retry_backoff=0.01)
            report = await registrar.register_all(data)
            await asyncio.sleep(0.6)  # any commit still pending lands now
            held: Counter[tuple[str, str]] = Counter()
            for cat in emulator.library()["Category"]:
                for person in cat["Persons"]["Person"]:
                    for face in person["Faces"]["Face"]:
                        held[(person["PersonId"], face["ImageUrl"])] += 1
    assert emulator.stats.faulted.get("late_commit", 0) >= 5
    assert report.duplicates_found >= 1  # the control: settle=0 did duplicate
    assert held == Counter((r.person_id, r.image_url) for r in data)  # all removed


def test_the_cli_warns_on_a_settle_shorter_than_the_timeout(
    tmp_path: Any, monkeypatch: Any, capsys: Any
) -> None:
    from mts_faces.cli import main
    from mts_faces.emulator import Emulator, EmulatorConfig

    manifest = tmp_path / "m.csv"
    manifest.write_text("category_id,person_id,image_url\nstars,p1,https://img.example/1.jpg\n")
    with Emulator.in_thread(EmulatorConfig(qps=None, seed=1)) as emu:
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emu.key.access_key_id)
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", emu.key.access_key_secret)
        argv = ["register", str(manifest), "--endpoint", emu.url, "--no-progress"]
        argv += ["--no-ledger", "--output", str(tmp_path / "out.jsonl"), "--timeout", "2"]
        assert main([*argv, "--settle", "0"]) == 0
        err = capsys.readouterr().err
        assert "--settle 0 is shorter than the request timeout 2s" in err
        assert "verify --repair" in err and "Traceback" not in err
        assert main([*argv, "--settle", "2"]) == 0
        assert "shorter than the request timeout" not in capsys.readouterr().err


class RefusedClient(SlowLimiterClient):
    """Every request fails with a transport error no retry can cure (a refused certificate)."""

    async def register_custom_face(self, *a: Any, **k: Any) -> RegisteredFace:
        self.sent_at.append(self.time.now)
        raise TransportError("certificate verify failed", request_sent=False, retryable=False)


async def test_a_non_retryable_transport_error_is_not_retried_by_the_row_budget() -> None:
    from mts_faces._exceptions import ThrottlingError, is_retryable

    time = FakeTime()
    client = RefusedClient(time, limiter_wait=0.0)
    settler = Settler(
        ServiceCalls(client, Gate(1)),  # type: ignore[arg-type]
        None,
        settle=1.0,
        budget=RetryBudget(max_attempts=6),
        circuit=ListingCircuit(10),
        hooks=SettleHooks(lambda: False, lambda row, at: None, lambda: None),
        clock=time.clock,
        sleep=time.sleep,
    )
    row = FaceRow("stars", "p1", "https://img.example/1.jpg")
    outcome = await settler.register_row(Known(), row, None)
    assert outcome.status == "failed" and "certificate verify failed" in (outcome.reason or "")
    assert len(client.sent_at) == 1  # the client would not retry it either
    # The one predicate both use.
    assert not is_retryable(TransportError("x", request_sent=False, retryable=False))
    assert is_retryable(TransportError("x", request_sent=True))
    assert is_retryable(ThrottlingError("Throttling", "busy", http_status=503))
    assert not is_retryable(ValueError("not ours"))


async def test_no_check_existing_says_rows_from_the_ledger_were_not_checked(
    tmp_path: Any,
) -> None:
    import io

    from mts_faces._outcomes import NOT_CHECKED
    from mts_faces.cli import print_summary
    from mts_faces.registrar import Registrar

    from .fake_client import FakeClient

    client = FakeClient()
    data = [FaceRow("stars", f"p{p}", f"https://img.example/{p}.jpg") for p in range(5)]
    first = await Registrar(client, ledger=tmp_path / "l.db").register_all(data)  # type: ignore[arg-type]
    assert first.registered == 5 and first.library_checked
    client.store.clear()  # the library was emptied behind the ledger's back
    calls = client.attempts
    rerun = Registrar(client, ledger=tmp_path / "l.db", check_existing=False)  # type: ignore[arg-type]
    outcomes = [o async for o in rerun.run(data)]
    assert client.attempts == calls  # trusted the ledger: nothing listed or sent
    assert {o.reason for o in outcomes} == {NOT_CHECKED}
    assert rerun.report.unchecked == 5 and not rerun.report.library_checked
    summary = io.StringIO()
    print_summary(rerun.report, summary)
    assert "NOTE: the library was not checked (--no-check-existing): 5 rows" in summary.getvalue()
    # With the check (the default) the rows are found gone and registered again.
    again = await Registrar(client, ledger=tmp_path / "l.db").register_all(data)  # type: ignore[arg-type]
    assert again.reregistered == 5 and again.unchecked == 0
    summary = io.StringIO()
    print_summary(again, summary)
    assert "not checked" not in summary.getvalue()


def test_a_lock_whose_pid_was_reused_is_taken_over_once_its_heartbeat_is_stale(
    tmp_path: Any,
) -> None:
    from mts_faces.ledger import STALE_HEARTBEAT, Ledger, LedgerIdentity, LedgerLockedError

    time = FakeTime()
    path = tmp_path / "l.db"
    identity = LedgerIdentity("fake.example.com", "fake-key")
    Ledger(path, identity, clock=time.clock).open().close_sync()
    # PID 1 is always alive (init), but its heartbeat is ancient: not the holder.
    _crash(path, 1, heartbeat=time.now - 10 * STALE_HEARTBEAT)
    ledger = Ledger(path, identity, clock=time.clock).open()
    ledger.close_sync()
    # A live PID with a fresh heartbeat still holds it.
    _crash(path, 1, heartbeat=time.now - 1.0)
    try:
        Ledger(path, identity, clock=time.clock).open().close_sync()
    except LedgerLockedError as exc:
        assert "PID 1" in str(exc)
    else:
        raise AssertionError("a live holder's lock was taken over")

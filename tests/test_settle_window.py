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

"""The ledger on its own: the lock (refusal naming its holder, takeover of a dead one),
identity, an old journal refused, a full disk, rows read by key and by person."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mts_faces.ledger import (
    Ledger,
    LedgerError,
    LedgerIdentity,
    LedgerIdentityError,
    LedgerLockedError,
)

IDENTITY = LedgerIdentity("mts.cn-shanghai.aliyuncs.com", "LTAIledgertest")


async def test_rows_are_durable_and_read_by_key_and_person(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    ledger = Ledger(path, IDENTITY).open()
    started = await ledger.start("k1", 1, "Cat", "P", "https://x/1")
    await ledger.start("k2", 2, "cat", "p", "https://x/2")
    await ledger.registered("k1", 1, "Cat", "P", "https://x/1", "face-1", "req-1")
    await ledger.ambiguous("k2", "timeout")
    await ledger.flush()
    row = ledger.get("k1")
    assert row is not None and row.state == "registered" and row.face_id == "face-1"
    assert row.started_at == started
    assert {r.key for r in ledger.person_rows("CAT", "p")} == {"k1", "k2"}
    assert [p[:2] for p in ledger.ambiguous_persons()] == [("cat", "p")]
    await ledger.aclose()
    # Another process reads what was committed; the lock is released.
    db = sqlite3.connect(path)
    assert db.execute("SELECT state FROM rows WHERE key = 'k2'").fetchone() == ("ambiguous",)
    assert db.execute("SELECT COUNT(*) FROM lock").fetchone() == (0,)
    secretless = db.execute("SELECT name, value FROM identity").fetchall()
    assert ("access_key_id", "LTAIledgertest") in secretless


async def test_writes_of_one_loop_turn_share_one_commit(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db", IDENTITY).open()
    commits = 0
    original = ledger._commit

    def counting(writes: list[tuple[str, tuple[object, ...]]]) -> LedgerError | None:
        nonlocal commits
        commits += 1
        return original(writes)

    ledger._commit = counting  # type: ignore[method-assign]
    await asyncio.gather(*(ledger.start(f"k{i}", i, "c", "p", f"u{i}") for i in range(200)))
    assert commits <= 2  # one batch (plus at most one already under way)
    assert ledger.get("k199") is not None
    await ledger.aclose()


async def test_second_open_in_this_process_refuses_naming_the_holder(tmp_path: Path) -> None:
    first = Ledger(tmp_path / "l.db", IDENTITY).open()
    with pytest.raises(LedgerLockedError) as info:
        Ledger(tmp_path / "l.db", IDENTITY).open()
    text = str(info.value)
    assert f"PID {os.getpid()}" in text and socket.gethostname() in text and "since" in text
    await first.aclose()
    Ledger(tmp_path / "l.db", IDENTITY).open().close_sync()  # free again


def test_another_live_process_holds_it_and_a_dead_ones_lock_is_taken_over(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.db"
    code = (
        "import sys, time\n"
        "from mts_faces.ledger import Ledger, LedgerIdentity\n"
        f"Ledger({str(path)!r}, LedgerIdentity({IDENTITY.endpoint_host!r}, "
        f"{IDENTITY.access_key_id!r})).open()\n"
        "print('held', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        with pytest.raises(LedgerLockedError) as info:
            Ledger(path, IDENTITY).open()
        assert f"PID {child.pid}" in str(info.value)
    finally:
        child.kill()  # dies holding the lock, as after kill -9
        child.wait()
    ledger = Ledger(path, IDENTITY).open()  # the dead holder's lock is taken over
    ledger.close_sync()


def test_another_endpoint_or_account_refuses_unless_rebound(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    Ledger(path, IDENTITY).open().close_sync()
    for other in (
        LedgerIdentity("mts.cn-beijing.aliyuncs.com", IDENTITY.access_key_id),
        LedgerIdentity(IDENTITY.endpoint_host, "LTAIsomeoneelse"),
    ):
        with pytest.raises(LedgerIdentityError, match="belongs to"):
            Ledger(path, other).open()
    Ledger(path, LedgerIdentity("h", "k"), rebind=True).open().close_sync()
    with pytest.raises(LedgerIdentityError):
        Ledger(path, IDENTITY).open()  # now bound to the new identity


def test_an_old_journal_or_garbage_is_refused_clearly(tmp_path: Path) -> None:
    journal = tmp_path / "run.journal.jsonl"
    journal.write_text(json.dumps({"v": 1, "event": "start", "key": "k", "row": 1}) + "\n")
    with pytest.raises(LedgerError, match="JSON Lines journal") as info:
        Ledger(journal, IDENTITY).open()
    assert "not imported" in str(info.value)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00\x01not sqlite at all" * 100)
    with pytest.raises(LedgerError, match="not an mts-faces ledger"):
        Ledger(garbage, IDENTITY).open()


async def test_a_full_disk_fails_the_write_and_every_later_one(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db", IDENTITY).open()
    assert ledger._writer is not None
    pages = ledger._writer.execute("PRAGMA page_count").fetchone()[0]
    ledger._writer.execute(f"PRAGMA max_page_count = {pages + 1}")  # the disk is full
    with pytest.raises(LedgerError, match="full"):
        for i in range(5000):
            await ledger.start(f"key-{i:05d}-" + "x" * 200, i, "c", "p", "u" * 200)
    with pytest.raises(LedgerError):
        await ledger.start("after", 1, "c", "p", "u")
    await ledger.aclose()

"""``mts-faces register`` and its ledger: on by default beside the manifest, resumed by running
the same command again, Ctrl-C and SIGTERM (exit 130, a summary saying how to resume), a
second run refused, ``--output`` that would overwrite the manifest or the ledger refused
before anything is written, an unreadable or full ledger reported in one message."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mts_faces.cli import main
from mts_faces.emulator import Emulator, EmulatorConfig, EmulatorThread
from mts_faces.ledger import Ledger

from .soak_harness import stored_faces

REPO = Path(__file__).resolve().parents[1]
CATEGORY = "soak"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorThread]:
    # Slow enough (20 ms a call, 100 calls/s) that a run is still going when signalled.
    config = EmulatorConfig(
        qps=100, latency=0.02, seed=31, late_commit_rate=0.05, late_commit_delay=0.3
    )
    with Emulator.in_thread(config) as emu:
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emu.key.access_key_id)
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", emu.key.access_key_secret)
        yield emu


def write_manifest(path: Path, persons: int = 40, faces: int = 5) -> Path:
    lines = ["category_id,person_id,image_url"]
    for p in range(persons):
        lines += [
            f"{CATEGORY},p{p:03d},https://img.example.com/{p:03d}/{i}.jpg" for i in range(faces)
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def environment(emu: EmulatorThread) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}
    env["ALIBABA_CLOUD_ACCESS_KEY_ID"] = emu.key.access_key_id
    env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = emu.key.access_key_secret
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def command(emu: EmulatorThread, manifest: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "mts_faces.cli", "register", str(manifest),
        "--endpoint", emu.url, "--output", str(output), "--no-progress", "--settle", "1",
        "--timeout", "2", *extra,
    ]  # fmt: skip


def registered_count(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    try:
        db = sqlite3.connect(f"{ledger.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            found = db.execute("SELECT COUNT(*) FROM rows WHERE state = 'registered'")
            return int(found.fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_interrupt_exits_130_says_how_to_resume_and_the_same_command_finishes(
    emulator: EmulatorThread, tmp_path: Path, signum: int
) -> None:
    manifest = write_manifest(tmp_path / "faces.csv")
    ledger = tmp_path / "faces.csv.ledger"  # the default, beside the manifest
    first_out, second_out = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    env = environment(emulator)
    first = subprocess.Popen(
        command(emulator, manifest, first_out), env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and first.poll() is None:
        if registered_count(ledger) >= 20:
            first.send_signal(signum)
            break
        time.sleep(0.01)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    assert "Traceback" not in err
    assert "to resume, run the same command again" in err and str(ledger) in err
    statuses = Counter(str(r["status"]) for r in records(first_out))
    assert statuses["registered"] >= 20 and statuses["failed"] == 0
    assert statuses["not attempted"] > 0  # read ahead, never sent: the rerun does them

    second = subprocess.run(
        command(emulator, manifest, second_out), env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    outcomes = records(second_out)
    assert Counter(str(r["status"]) for r in outcomes) == {"registered": 200}
    stored = list(stored_faces(emulator.library(), CATEGORY))
    per_face = Counter((person, url) for person, url, _ in stored)
    assert len(per_face) == 200 and set(per_face.values()) == {1}  # 0 lost, 0 duplicates
    assert {str(r["face_id"]) for r in outcomes} == {face for _, _, face in stored}


def test_a_second_process_on_the_same_ledger_is_refused_naming_the_first(
    emulator: EmulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path / "faces.csv")
    ledger = tmp_path / "faces.csv.ledger"
    first = subprocess.Popen(
        command(emulator, manifest, tmp_path / "first.jsonl"), env=environment(emulator),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while registered_count(ledger) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        status = main(
            ["register", str(manifest), "--endpoint", emulator.url, "--no-progress",
             "--output", str(tmp_path / "second.jsonl")]
        )  # fmt: skip
        err = capsys.readouterr().err
    finally:
        first.wait(120)
    assert first.returncode == 0
    assert status == 1 and "Traceback" not in err
    assert f"in use by PID {first.pid}" in err
    assert records(tmp_path / "second.jsonl") == []
    stored = list(stored_faces(emulator.library(), CATEGORY))
    assert len(stored) == len({(p, u) for p, u, _ in stored}) == 200


def test_output_naming_the_manifest_or_the_ledger_is_refused_before_writing(
    emulator: EmulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path / "faces.csv", persons=2)
    before = manifest.read_bytes()
    args = ["register", str(manifest), "--endpoint", emulator.url, "--no-progress"]
    assert main([*args, "--output", str(manifest)]) == 2
    assert "is the manifest" in capsys.readouterr().err
    assert manifest.read_bytes() == before
    ledger = tmp_path / "mine.db"
    assert main([*args, "--ledger", str(ledger), "--output", str(ledger)]) == 2
    assert "is the ledger" in capsys.readouterr().err
    assert not ledger.exists()
    assert main([*args, "--output", str(tmp_path / "faces.csv.ledger")]) == 2  # the default
    assert emulator.stats.requests == 0


def test_unreadable_ledger_and_old_journal_give_one_clear_message(
    emulator: EmulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path / "faces.csv", persons=2)
    bad = tmp_path / "bad.ledger"
    bad.write_bytes(b"\x13\x37" * 500)
    args = ["register", str(manifest), "--endpoint", emulator.url, "--no-progress"]
    status = main([*args, "--ledger", str(bad), "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert "not an mts-faces ledger" in err and "rows 0" in err  # the message and the summary
    journal = tmp_path / "old.journal.jsonl"
    journal.write_text('{"v":1,"event":"start","key":"k","row":1}\n')
    assert main([*args, "--journal", str(journal)]) == 2
    assert "--journal is gone" in capsys.readouterr().err
    assert main([*args, "--ledger", str(journal), "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "JSON Lines journal" in capsys.readouterr().err
    assert emulator.stats.requests == 0


def test_a_full_disk_mid_run_gives_one_message_and_the_summary(
    emulator: EmulatorThread,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Ledger.open

    def small_disk(self: Ledger) -> Ledger:
        opened = original(self)
        db = sqlite3.connect(self.path)
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.close()
        assert self._writer is not None
        self._writer.execute(f"PRAGMA max_page_count = {pages + 2}")
        return opened

    monkeypatch.setattr(Ledger, "open", small_disk)
    manifest = write_manifest(tmp_path / "faces.csv", persons=200, faces=5)
    out = tmp_path / "o.jsonl"
    status = main(["register", str(manifest), "--endpoint", emulator.url, "--no-progress",
                   "--output", str(out), "--qps", "1000"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    lines = err.splitlines()
    assert [line for line in lines if line.startswith("mts-faces register:")] == [lines[0]]
    assert "database or disk is full" in lines[0]
    assert "rows " in err and "to resume" in err
    # Rows whose start could not be recorded were not sent.
    assert "not attempted" in err
    # Every row the run reported registered is stored; nothing is stored twice.
    stored = list(stored_faces(emulator.library(), CATEGORY))
    assert len(stored) == len({(p, u) for p, u, _ in stored})
    reported = {str(r["face_id"]) for r in records(out) if r["status"] == "registered"}
    assert reported <= {face for _, _, face in stored}

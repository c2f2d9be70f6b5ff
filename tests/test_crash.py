"""Crash test: ``mts-faces register`` killed with SIGKILL early, half way or late, then rerun
at once with the same ledger, while the emulator is still committing the killed run's calls
(late commits). Every row ends accounted for, the store holds one face per row, no FaceId is
lost."""

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

from mts_faces.emulator import Emulator, EmulatorConfig, EmulatorThread

from .soak_harness import stored_faces

PERSONS = 60
ROWS = PERSONS * 10
CATEGORY = "soak"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    config = EmulatorConfig(
        qps=200,
        latency=0.01,
        jitter=0.01,
        internal_error_rate=0.02,
        drop_rate=0.01,
        commit_timeout_rate=0.01,
        hang=0.1,
        # A tenth of the registrations are committed 0.6 s after they arrive: when the run
        # is killed, some of its calls are still being processed and commit after the rerun
        # has started.
        late_commit_rate=0.1,
        late_commit_delay=0.6,
        seed=99,
    )
    with Emulator.in_thread(config) as emu:
        yield emu


def write_manifest(path: Path) -> Path:
    lines = ["category_id,person_id,image_url"]
    for p in range(PERSONS):
        lines += [f"{CATEGORY},p{p:03d},https://img.example.com/{p:03d}/{i}.jpg" for i in range(10)]
    path.write_text("\n".join(lines) + "\n")
    return path


def ledger_counts(path: Path) -> tuple[int, int]:
    """(rows finished, rows in flight) as the ledger says, read while the run writes it."""
    if not path.exists():
        return 0, 0
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            counts = dict(db.execute("SELECT state, COUNT(*) FROM rows GROUP BY state"))
        finally:
            db.close()
    except sqlite3.Error:  # not created yet
        return 0, 0
    in_flight = counts.get("started", 0) + counts.get("ambiguous", 0)
    return counts.get("registered", 0) + counts.get("failed", 0), in_flight


def command(emu: EmulatorThread, manifest: Path, ledger: Path, output: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mts_faces.cli",
        "register",
        str(manifest),
        "--endpoint",
        emu.url,
        "--ledger",
        str(ledger),
        "--settle",
        "2.0",
        # Short, so that the rerun's settling of the killed run's in-flight rows (at least
        # 3 x timeout) and the end-of-run verification keep the test short.
        "--timeout",
        "2.0",
        "--output",
        str(output),
        "--qps",
        "200",
        "--no-progress",
    ]


def environment(emu: EmulatorThread) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}
    env["ALIBABA_CLOUD_ACCESS_KEY_ID"] = emu.key.access_key_id
    env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = emu.key.access_key_secret
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def records(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # the line being written when the process died
            continue
    return out


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9], ids=["early", "half_way", "late"])
def test_kill_then_resume(emulator: EmulatorThread, tmp_path: Path, fraction: float) -> None:
    kill_at = int(ROWS * fraction)
    manifest = write_manifest(tmp_path / "faces.csv")
    ledger = tmp_path / "run.ledger"
    first_out, second_out = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    env = environment(emulator)

    first = subprocess.Popen(
        command(emulator, manifest, ledger, first_out),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # Kill once that many rows are done and some are in flight (a bounded wait, not a timing).
    deadline = time.monotonic() + 60
    finished = in_flight = 0
    while time.monotonic() < deadline and first.poll() is None:
        finished, in_flight = ledger_counts(ledger)
        if finished >= kill_at and in_flight > 0:
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    first.wait(30)
    assert first.returncode == -signal.SIGKILL, "the first run ended before it could be killed"
    assert kill_at <= finished < ROWS
    killed_done, killed_in_flight = ledger_counts(ledger)
    assert killed_in_flight > 0
    assert len(records(first_out)) < ROWS

    second = subprocess.run(
        command(emulator, manifest, ledger, second_out),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr

    outcomes = records(second_out)
    by_row = Counter(int(str(r["row"])) for r in outcomes)
    assert sorted(by_row) == list(range(1, ROWS + 1)) and set(by_row.values()) == {1}
    assert {r["status"] for r in outcomes} == {"registered"}
    resumed = [r for r in outcomes if r.get("resumed")]
    assert len(resumed) >= killed_done  # every row the ledger had finished came from it

    stored = list(stored_faces(emulator.library(), CATEGORY))
    per_face = Counter((person, url) for person, url, _ in stored)
    assert len(stored) == ROWS and set(per_face.values()) == {1}  # 0 duplicates
    reported = {str(r["face_id"]) for r in outcomes}
    assert reported == {face_id for _, _, face_id in stored}  # 0 lost, 0 orphans
    # The first run's FaceIds are the same faces, not new ones.
    assert {str(r["face_id"]) for r in records(first_out) if r.get("face_id")} <= reported
    summary = next(line for line in second.stderr.splitlines() if line.startswith("rows "))
    print(f"killed at {killed_done} done / {killed_in_flight} in flight; rerun: {summary}")

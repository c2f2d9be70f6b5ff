"""Every bad manifest of the corpus through ``mts-faces register`` (in-process and, for a few,
as a real process) against the emulator: a clear message per bad row naming the row and the
field, the valid rows registered, ``--strict`` stopping at the first bad row, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mts_faces.cli import main
from mts_faces.emulator import Emulator, EmulatorConfig, EmulatorThread

from .test_manifest import EXPECTED, HUGE_EXPECTED, corpus

ALL_EXPECTED = EXPECTED | HUGE_EXPECTED
# What the registrar (not the reader) skips: the 11th face of a person, repeated rows.
SKIPPED = {
    "person_with_11_rows.csv": {11: "cap"},
    "duplicate_rows.csv": {2: "duplicate of row 1", 3: "duplicate of row 1"},
}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[EmulatorThread]:
    with Emulator.in_thread(EmulatorConfig(qps=None, seed=5)) as emu:
        yield emu


@pytest.fixture
def emulator(shared_emulator: EmulatorThread, monkeypatch: pytest.MonkeyPatch) -> EmulatorThread:
    shared_emulator.clear()
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", shared_emulator.key.access_key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", shared_emulator.key.access_key_secret)
    return shared_emulator


def stored_ids(emulator: EmulatorThread) -> set[str]:
    return {
        face["FaceId"]
        for category in emulator.library()["Category"]
        for person in category["Persons"]["Person"]
        for face in person["Faces"]["Face"]
    }


def register(
    emulator: EmulatorThread, manifest: Path, out: Path, *extra: str
) -> tuple[int, list[dict[str, object]]]:
    argv = ["register", str(manifest), "--endpoint", emulator.url, "--output", str(out)]
    status = main([*argv, "--no-progress", *extra])
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return status, records


@pytest.mark.parametrize("name", sorted(ALL_EXPECTED))
def test_bad_manifest_through_the_cli(
    name: str, emulator: EmulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / name
    manifest.write_bytes(corpus()[name])
    good, bad = ALL_EXPECTED[name]
    status, records = register(emulator, manifest, tmp_path / "out.jsonl")
    err = capsys.readouterr().err
    assert "Traceback" not in err

    by_row = {int(str(r["row"])): r for r in records}
    assert len(by_row) == len(records)  # one outcome per row
    if bad and bad[0][0] == 0:  # the header or the file: refused as a whole, nothing sent
        assert status == 2 and records == []
        assert f"manifest {manifest}: " in err and bad[0][2] in err
        assert stored_ids(emulator) == set()
        return
    assert status == (1 if bad else 0)
    assert sorted(by_row) == list(range(1, good + len(bad) + 1))  # every row accounted for
    for row, field, fragment in bad:
        record = by_row.pop(row)
        reason = str(record["reason"])
        assert record["status"] == "failed"
        assert f"row {row} (line " in reason and fragment in reason
        if field is not None:
            assert f"field {field}:" in reason
    for row, why in SKIPPED.get(name, {}).items():
        record = by_row.pop(row)
        assert record["status"] == "skipped" and why in str(record["reason"]), record
    assert {r["status"] for r in by_row.values()} <= {"registered"}
    assert {str(r["face_id"]) for r in by_row.values()} == stored_ids(emulator)


@pytest.mark.parametrize("name", sorted(n for n, (_, bad) in ALL_EXPECTED.items() if bad))
def test_strict_stops_at_the_first_bad_row(
    name: str, emulator: EmulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / name
    manifest.write_bytes(corpus()[name])
    first_bad = ALL_EXPECTED[name][1][0]
    status, records = register(emulator, manifest, tmp_path / "out.jsonl", "--strict")
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if first_bad[0] == 0:  # the file as a whole is refused before anything else
        assert status == 2 and records == [] and first_bad[2] in err
        assert stored_ids(emulator) == set()
        return
    assert status == 1
    where = f"row {first_bad[0]} (line " if first_bad[0] else ("header", "manifest")
    message = next(line for line in err.splitlines() if "--strict" in line)
    assert message.split("bad row: ", 1)[1].startswith(where), message
    # Nothing at or after the first bad row was registered.
    assert all(int(str(r["row"])) < first_bad[0] for r in records if r["status"] == "registered")
    assert len(stored_ids(emulator)) <= max(0, first_bad[0] - 1)


def test_strict_registers_and_reports_the_rows_before_the_bad_one(
    emulator: EmulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "strict.csv"
    manifest.write_text(
        "category_id,person_id,image_url\n"
        + "".join(f"lib,p{i},https://img.example.com/{i}.jpg\n" for i in range(1, 4))
        + "lib,p4,ftp://img.example.com/4.jpg\nlib,p5,https://img.example.com/5.jpg\n"
    )
    status, records = register(emulator, manifest, tmp_path / "out.jsonl", "--strict")
    capsys.readouterr()
    assert status == 1
    # Rows 1-3 were read before the bad row 4: each must end with an outcome, not vanish.
    assert sorted(int(str(r["row"])) for r in records) == [1, 2, 3]
    assert len(stored_ids(emulator)) == 3


def test_missing_file_and_directory_are_clear_errors(
    emulator: EmulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path in (tmp_path / "nope.csv", tmp_path):
        status, _ = register(emulator, path, tmp_path / "out.jsonl")
        err = capsys.readouterr().err
        assert status == 2 and str(path) in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["non_utf8_row.csv", "utf16.csv", "deep_nesting.jsonl"])
def test_bad_manifest_in_a_real_process(
    name: str, emulator: EmulatorThread, tmp_path: Path
) -> None:
    manifest = tmp_path / name
    manifest.write_bytes(corpus()[name])
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}
    env["ALIBABA_CLOUD_ACCESS_KEY_ID"] = emulator.key.access_key_id
    env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = emulator.key.access_key_secret
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "mts_faces.cli", "register", str(manifest)]
    command += ["--endpoint", emulator.url, "--output", str(out), "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr, done.stderr
    row, _, fragment = ALL_EXPECTED[name][1][0]
    if row == 0:  # the file as a whole: a usage error, no outcome file
        assert done.returncode == 2 and fragment in done.stderr and not out.exists()
        return
    assert done.returncode == 1
    reasons = [json.loads(line).get("reason") for line in out.read_text().splitlines()]
    assert any(fragment in str(reason) for reason in reasons)

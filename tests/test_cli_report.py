"""``--report`` on the command line: the page after a whole run, and after a Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mts_faces.cli import main
from mts_faces.emulator import Emulator, EmulatorConfig, EmulatorThread

from .test_report import check_page


def test_demo_writes_its_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "demo.html"
    status = main(["demo", "--persons", "3", "--qps", "1000", "--report", str(path)])
    assert status == 0
    checker = check_page(path.read_text(encoding="utf-8"))
    text = "".join(checker.text)
    assert "mts-faces demo: 33 rows" in text
    assert "registered" in text and "30" in text
    assert "row 33" in text  # the demo's one bad row, with its reason
    assert "report written to" in capsys.readouterr().err


def test_demo_report_written_when_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "demo.html"
    child = subprocess.Popen(
        [sys.executable, "-m", "mts_faces.cli", "demo", "--qps", "50", "--report", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stderr is not None
        for line in child.stderr:  # wait until it registers
            if line.startswith("manifest:"):
                break
        time.sleep(1.5)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert "interrupted" in err
    assert f"report written to {path}" in err
    page = path.read_text(encoding="utf-8")
    check_page(page)
    assert "stopped before the end of its input" in page
    assert "<svg" in page


def test_report_without_the_extra_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status = main(["demo", "--persons", "1", "--report", str(tmp_path / "r.html")])
    assert status == 2
    err = capsys.readouterr().err
    assert "'report' extra" in err and "Traceback" not in err
    assert "emulator listening" not in err  # refused before anything ran


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorThread]:
    # A tight quota: a run of 120 rows takes seconds, time enough to interrupt it.
    with Emulator.in_thread(EmulatorConfig(qps=20, latency=0.02, seed=12)) as emu:
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emu.key.access_key_id)
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", emu.key.access_key_secret)
        yield emu


def _manifest(path: Path, rows: int) -> Path:
    lines = ["category_id,person_id,image_url"]
    lines += [f"stars,p{i // 10},https://img.example/{i}.jpg" for i in range(rows)]
    lines.append("stars,nobody,not-a-url")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_register_writes_its_report(
    emulator: EmulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _manifest(tmp_path / "faces.csv", 12)
    report = tmp_path / "run.html"
    argv = ["register", str(manifest), "--endpoint", emulator.url, "--qps", "20"]
    argv += ["--output", str(tmp_path / "out.jsonl"), "--no-progress", "--report", str(report)]
    assert main(argv) == 1  # the bad row
    checker = check_page(report.read_text(encoding="utf-8"))
    text = "".join(checker.text)
    assert "mts-faces register" in text and "faces.csv" in text
    assert "registered" in text and "row 13" in text
    assert "interrupted" not in text and "quota 20 calls/s" in text
    assert "report written to" in capsys.readouterr().err


@pytest.mark.parametrize("signals", [1, 2])
def test_register_report_written_when_interrupted(
    emulator: EmulatorThread, tmp_path: Path, signals: int
) -> None:
    manifest = _manifest(tmp_path / "faces.csv", 400)
    report = tmp_path / "run.html"
    argv = [sys.executable, "-m", "mts_faces.cli", "register", str(manifest)]
    argv += ["--endpoint", emulator.url, "--qps", "20", "--output", str(tmp_path / "o.jsonl")]
    argv += ["--report", str(report)]
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while emulator.stats.accepted < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(signals):
            child.send_signal(signal.SIGINT)
            time.sleep(0.3)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, err[-2000:]
    assert f"report written to {report}" in err
    page = report.read_text(encoding="utf-8")
    check_page(page)
    assert "<svg" in page
    if signals == 1:
        assert "stopped before the end of its input" in page
    else:
        assert "The run was interrupted" in page

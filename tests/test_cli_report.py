"""``--report`` on the command line: the page after a whole run, and after a Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mts_faces.cli import main

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

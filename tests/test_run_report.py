"""``--report``: the page is written at the end of a run, and also when it is interrupted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import attrs
import pytest

from mts_faces import MtsFaceClient
from mts_faces._run_report import run_report
from mts_faces.emulator import Emulator, EmulatorConfig

from .test_report import check_page


@attrs.define
class FakeRunReport:
    rows: int = 3
    registered: int = 2
    failed: int = 1
    stopped: bool = False
    first_failures: list[str] = attrs.field(factory=lambda: ["row 3: ImageUrl: no host"])


async def _calls(client: MtsFaceClient, count: int) -> None:
    for _ in range(count):
        await client.list_custom_persons()


def test_written_at_the_end_with_the_run_outcome(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator = Emulator(EmulatorConfig(seed=1))
    client = MtsFaceClient(**emulator.client_kwargs(in_process=True))
    path = tmp_path / "run.html"
    with run_report(str(path), client, title="register faces.csv") as session:
        assert session is not None
        asyncio.run(_calls(client, 3))
        session.set_outcome(FakeRunReport())
    page = path.read_text(encoding="utf-8")
    checker = check_page(page)
    text = "".join(checker.text)
    assert "register faces.csv" in text
    assert "row 3: ImageUrl: no host" in text
    assert "registered" in text and "interrupted" not in text
    assert "<svg" in page
    assert "report written to" in capsys.readouterr().err


def test_written_when_interrupted(tmp_path: Path) -> None:
    emulator = Emulator(EmulatorConfig(seed=2))
    client = MtsFaceClient(**emulator.client_kwargs(in_process=True))
    path = tmp_path / "run.html"

    async def interrupted() -> None:
        await _calls(client, 2)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), run_report(str(path), client, title="t"):
        asyncio.run(interrupted())
    page = path.read_text(encoding="utf-8")
    check_page(page)
    assert "interrupted" in page
    assert "attempts ok" in page  # the two calls made before it


def test_an_unwritable_report_is_said_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator = Emulator(EmulatorConfig(seed=3))
    client = MtsFaceClient(**emulator.client_kwargs(in_process=True))
    path = tmp_path / "missing-folder" / "run.html"
    with run_report(str(path), client, title="t"):
        asyncio.run(_calls(client, 1))
    assert not path.exists()
    assert "could not write the report" in capsys.readouterr().err


def test_no_path_records_nothing() -> None:
    emulator = Emulator(EmulatorConfig(seed=4))
    client = MtsFaceClient(**emulator.client_kwargs(in_process=True))
    with run_report(None, client, title="t") as session:
        assert session is None

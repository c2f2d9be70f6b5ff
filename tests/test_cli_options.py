"""The command line's shared behaviour: ``--version``, every bad option value a usage error
(exit 2, the option named, no traceback), missing extras named, binary manifests named,
``-v``/``--log-level``, and finding no credentials at all."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import mts_faces
from mts_faces.cli import main
from mts_faces.emulator import Emulator, EmulatorConfig, EmulatorThread


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorThread]:
    with Emulator.in_thread(EmulatorConfig(qps=None, seed=3)) as emu:
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emu.key.access_key_id)
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", emu.key.access_key_secret)
        yield emu


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    return err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mts-faces {mts_faces.__version__}"


@pytest.mark.parametrize(
    ("argv", "option", "says"),
    [
        (["register", "m.csv", "--concurrency", "0"], "--concurrency", "at least 1"),
        (["register", "m.csv", "--concurrency", "-3"], "--concurrency", "at least 1"),
        (["register", "m.csv", "--concurrency", "2.5"], "--concurrency", "whole number"),
        (["register", "m.csv", "--qps", "0"], "--qps", "from 1 to 1,000,000"),
        (["register", "m.csv", "--qps", "inf"], "--qps", "finite"),
        (["list", "--qps", "nan"], "--qps", "finite"),
        (["list", "--qps", "fast"], "--qps", "expected a number"),
        (["unregister", "--category", "c", "--person", "p", "--qps", "-1"], "--qps", "from 1 to"),
        (["demo", "--qps", "0"], "--qps", "from 1 to 1,000,000"),
        (["register", "m.csv", "--qps", "1e300"], "--qps", "from 1 to 1,000,000"),
        (["register", "m.csv", "--settle", "-5"], "--settle", "must not be negative"),
        (["demo", "--persons", "0"], "--persons", "at least 1"),
        (["demo", "--latency", "-0.1"], "--latency", "must not be negative"),
        (["emulate", "--qps", "-1"], "--qps", "must not be negative"),
        (["emulate", "--latency", "nan"], "--latency", "finite"),
        (["emulate", "--jitter", "-1"], "--jitter", "must not be negative"),
        (["emulate", "--hang", "-5"], "--hang", "must not be negative"),
        (["--log-level", "loud", "list"], "--log-level", "unknown level 'loud'"),
        (["list", "--log-level", "verbose"], "--log-level", "unknown level"),
    ],
)
def test_bad_option_values_are_usage_errors(
    argv: list[str], option: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(argv, capsys)
    assert f"argument {option}" in err and says in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["emulate", "--drop-rate", "2"],
        ["emulate", "--port", "70000"],
        ["emulate", "--max-faces", "0"],
    ],
)
def test_bad_emulator_settings_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("mts-faces emulate: ")


def test_an_unusable_certificate_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for path in (tmp_path / "missing.pem", junk):
        assert main(["emulate", "--certfile", str(path)]) == 2
        captured = capsys.readouterr()
        assert f"cannot load the certificate {path}" in captured.err
        assert "Traceback" not in captured.err and captured.out == ""


def test_tls_without_trustme_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "trustme", None)  # as if it were not installed
    assert main(["emulate", "--tls"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no URL: it never listened
    assert "'trustme'" in captured.err and "pip install '.[emulator-tls]'" in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        ("aiohttp", "aiohttp"),
        ("redis.asyncio", "redis"),
        ("alibabacloud_credentials", "credentials"),
    ],
)
def test_any_missing_optional_package_names_its_extra(
    module: str, extra: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(args: object) -> int:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    monkeypatch.setattr("mts_faces.cli._cmd_list", run)
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert f"mts-faces list needs the optional package {module.split('.')[0]!r}" in err
    assert f"pip install '.[{extra}]'" in err


def test_other_import_errors_are_not_disguised(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(args: object) -> int:
        raise ModuleNotFoundError("No module named 'numpy'", name="numpy")

    monkeypatch.setattr("mts_faces.cli._cmd_list", run)
    with pytest.raises(ModuleNotFoundError):
        main(["list"])  # a bug, not a missing extra: the traceback is the useful answer


def xlsx(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as book:
        book.writestr("[Content_Types].xml", "<Types/>")
        book.writestr("xl/workbook.xml", "<workbook/>")
    return path


@pytest.mark.parametrize("fmt", [None, "csv", "jsonl"])
def test_an_xlsx_manifest_is_named_as_such(
    fmt: str | None,
    emulator: EmulatorThread,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = xlsx(tmp_path / "faces.xlsx")
    out = tmp_path / "out.jsonl"
    argv = ["register", str(manifest), "--endpoint", emulator.url, "--output", str(out)]
    status = main([*argv, "--no-progress", *(["--format", fmt] if fmt else [])])
    err = capsys.readouterr().err
    # Refused as a whole, before a client, a ledger or the output file is set up.
    assert status == 2 and "Traceback" not in err
    assert f"manifest {manifest}: " in err and "the file is an XLSX workbook" in err
    assert not out.exists()
    assert emulator.stats.requests_by_action == {}


@pytest.mark.parametrize(
    ("before", "after", "shown"),
    [
        ([], [], "WARNING ERROR"),
        (["-v"], [], "INFO WARNING ERROR"),
        (["-vv"], [], "DEBUG INFO WARNING ERROR"),
        ([], ["-v"], "INFO WARNING ERROR"),  # after the subcommand too
        (["--log-level", "debug"], [], "DEBUG INFO WARNING ERROR"),
        (["-vv"], ["--log-level", "ERROR"], "ERROR"),  # the explicit level wins
        (["--log-level", "critical"], [], ""),
    ],
)
def test_verbose_and_log_level(
    before: list[str],
    after: list[str],
    shown: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def run(args: object) -> int:
        log = logging.getLogger("mts_faces.some_module")
        for level in ("DEBUG", "INFO", "WARNING", "ERROR"):
            log.log(getattr(logging, level), "a %s line", level)
        return 0

    monkeypatch.setattr("mts_faces.cli._cmd_list", run)
    logger = logging.getLogger("mts_faces")
    level, handlers = logger.level, list(logger.handlers)
    assert main([*before, "list", *after]) == 0
    err = capsys.readouterr().err
    printed = [line.split(" mts_faces.some_module: ")[0].split()[-1] for line in err.splitlines()]
    assert " ".join(printed) == shown, err
    # In-process runs leave the logger as they found it.
    assert logger.level == level and logger.handlers == handlers


def test_very_verbose_shows_each_attempt(
    emulator: EmulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-vv", "list", "--endpoint", emulator.url]) == 0
    assert "DEBUG mts_faces: ListCustomPersons attempt 1" in capsys.readouterr().err
    assert main(["list", "--endpoint", emulator.url]) == 0
    assert "ListCustomPersons attempt" not in capsys.readouterr().err


def test_no_credentials_anywhere_is_one_usage_error(tmp_path: Path) -> None:
    pytest.importorskip("alibabacloud_credentials")
    manifest = tmp_path / "faces.csv"
    manifest.write_text("category_id,person_id,image_url\nlib,p1,https://img.example.com/1.jpg\n")
    env = {
        "HOME": str(tmp_path),
        "PATH": os.environ.get("PATH", ""),
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",  # no metadata server off ECS
    }
    done = subprocess.run(
        [sys.executable, "-m", "mts_faces.cli", "register", str(manifest), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "CredentialsError" in done.stderr and "Traceback" not in done.stderr
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in done.stderr
    assert done.stdout == ""  # no row was attempted

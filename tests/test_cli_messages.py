"""Usage messages: each names the option and the value given, and says what is allowed."""

from __future__ import annotations

import pytest

from mts_faces.cli import main


@pytest.fixture(autouse=True)
def _never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value wrongly accepted must fail the test, not serve until killed."""

    async def serve(*args: object, **kwargs: object) -> int:
        return 0

    monkeypatch.setattr("mts_faces.emulator._command._serve", serve)


def _usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_emulate_qps_below_one_says_zero_means_no_quota(capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error(capsys, "emulate", "--qps", "0.5")
    assert "--qps" in err and "got 0.5" in err and "0 for no quota" in err
    assert "None" not in err


def test_emulate_max_faces_zero_says_what_was_given(capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error(capsys, "emulate", "--max-faces", "0")
    assert "max_faces_per_person must be >= 1, got 0" in err


@pytest.mark.parametrize("option", ["--fault-actions", "--latency-actions"])
def test_emulate_an_empty_action_list_is_refused(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _usage_error(capsys, "emulate", option, ",")
    assert option in err and "no action named" in err and "RegisterCustomFace" in err


def test_verbose_help_says_retries_are_debug(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["list", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "INFO (each retry)" not in help_text
    assert "-vv for DEBUG (each attempt and each retry)" in help_text

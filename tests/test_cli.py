"""The ``mts-faces`` command in-process against an emulator on its own thread."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mts_faces.cli import main
from mts_faces.emulator import Emulator, EmulatorConfig, EmulatorThread


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorThread]:
    with Emulator.in_thread(EmulatorConfig(qps=1000, seed=11)) as emu:
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emu.key.access_key_id)
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", emu.key.access_key_secret)
        yield emu


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(["category_id,person_id,image_url,person_name", *lines]) + "\n")
    return path


def outcomes(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_register_reports_every_row_and_bad_rows_by_number(
    emulator: EmulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_csv(
        tmp_path / "faces.csv",
        [
            "stars,ann,https://img.example/ann/1.jpg,Ann",
            "stars,ann,ftp://img.example/ann/2.jpg,Ann",  # row 2: not http(s)
            "stars,,https://img.example/x.jpg,",  # row 3: no person
            "stars,bob,https://img.example/bob/1.jpg,Bob",
            "stars,ANN,https://img.example/ann/1.jpg,Ann",  # row 5: duplicate of row 1
        ],
    )
    out = tmp_path / "out.jsonl"
    status = main(
        [
            "register",
            str(manifest),
            "--endpoint",
            emulator.url,
            "--output",
            str(out),
            "--no-progress",
        ]
    )

    assert status == 1  # bad rows are failures
    by_row = {record["row"]: record for record in outcomes(out)}
    assert sorted(by_row) == [1, 2, 3, 4, 5]
    assert by_row[1]["status"] == by_row[4]["status"] == "registered"
    assert "ImageUrl" in str(by_row[2]["reason"]) and "row 2" in str(by_row[2]["reason"])
    assert "PersonId" in str(by_row[3]["reason"]) and "row 3" in str(by_row[3]["reason"])
    assert by_row[5]["status"] == "skipped" and "duplicate of row 1" in str(by_row[5]["reason"])
    stored = {face["face_id"] for face in _faces(emulator)}
    assert stored == {by_row[1]["face_id"], by_row[4]["face_id"]}
    assert "registered 2" in capsys.readouterr().err


def test_strict_stops_at_the_first_bad_row(
    emulator: EmulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_csv(
        tmp_path / "faces.csv",
        ["stars,ann,https://img.example/1.jpg,", "stars,ann,not-a-url,"]
        + [f"stars,p{i},https://img.example/p{i}.jpg," for i in range(50)],
    )
    out = tmp_path / "out.jsonl"
    status = main(
        ["register", str(manifest), "--endpoint", emulator.url, "--strict", "--output", str(out)]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert "--strict" in err and "row 2" in err and "ImageUrl" in err
    assert "Traceback" not in err
    assert len(_faces(emulator)) <= 1  # nothing past the bad row was registered


def test_jsonl_stdin_default_category_list_and_unregister(
    emulator: EmulatorThread,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = tmp_path / "faces.jsonl"
    manifest.write_text(
        "\n".join(
            json.dumps({"PersonId": "张三", "ImageUrl": f"https://img.example/z/{i}.jpg"})
            for i in range(3)
        )
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    with manifest.open("rb") as stdin:
        monkeypatch.setattr("sys.stdin", type("In", (), {"buffer": stdin})())
        status = main(
            [
                "register",
                "-",
                "--category",
                "明星",
                "--endpoint",
                emulator.url,
                "--output",
                str(out),
            ]
        )
        # stdin has no path to keep a ledger beside: one must be named (or refused).
        assert status == 2
        assert "--ledger" in capsys.readouterr().err
        status = main(
            [
                "register",
                "-",
                "--category",
                "明星",
                "--endpoint",
                emulator.url,
                "--output",
                str(out),
                "--ledger",
                str(tmp_path / "stdin.ledger"),
            ]
        )
    assert status == 0
    assert [r["status"] for r in outcomes(out)] == ["registered"] * 3
    capsys.readouterr()

    assert main(["list", "--category", "明星", "--json", "--endpoint", emulator.url]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(r["person_id"], r["image_url"]) for r in listed} == {
        ("张三", f"https://img.example/z/{i}.jpg") for i in range(3)
    }

    args = ["unregister", "--category", "明星", "--person", "张三", "--endpoint", emulator.url]
    assert main([*args, "--all"]) == 0
    assert _faces(emulator) == []
    assert main(args) == 2  # neither --face nor --all
    assert "--face" in capsys.readouterr().err


def test_missing_credentials_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_csv(tmp_path / "faces.csv", ["stars,ann,https://img.example/1.jpg,"])
    status = main(["register", str(manifest), "--endpoint", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert status == 2
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in err and "Traceback" not in err


def test_demo_registers_every_face_and_shows_the_cap(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["demo", "--persons", "4", "--qps", "1000", "--latency", "0"])
    captured = capsys.readouterr()
    assert status == 0
    assert "collected 40 FaceIds for 4 persons" in captured.out
    assert "registered 40" in captured.out
    assert "cap" in captured.out and "duplicate" in captured.out
    assert "failed row 43: bad row: row 43 (line 44), field ImageUrl" in captured.out
    assert "throttled 0" in captured.err


def _faces(emulator: EmulatorThread) -> list[dict[str, str]]:
    """Every stored face as {person_id, face_id, image_url}, from the emulator's own dump."""
    faces = []
    for category in emulator.library()["Category"]:
        for person in category["Persons"]["Person"]:
            for face in person["Faces"]["Face"]:
                faces.append(
                    {
                        "person_id": person["PersonId"],
                        "face_id": face["FaceId"],
                        "image_url": face["ImageUrl"],
                    }
                )
    return faces

"""``mts-faces plan``, ``export`` and ``sync`` against the emulator: a plan's counts are what a
following register does; an export registered again registers nothing; sync with and without
``--prune``, renames, the cap ordering, and a sync killed half way then resumed."""

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

from .soak_harness import stored_faces

REPO = Path(__file__).resolve().parents[1]
CAT = "lib"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorThread]:
    with Emulator.in_thread(EmulatorConfig(qps=500, latency=0.001, seed=5)) as emu:
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emu.key.access_key_id)
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", emu.key.access_key_secret)
        yield emu


def csv_file(path: Path, rows: list[tuple[str, ...]], name: bool = False) -> Path:
    header = "category_id,person_id,image_url" + (",person_name" if name else "")
    path.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n")
    return path


def url(p: int, i: int) -> str:
    return f"https://img.example.com/{p}/{i}.jpg"


def faces(emu: EmulatorThread, category: str = CAT) -> Counter[tuple[str, str]]:
    return Counter((person, u) for person, u, _ in stored_faces(emu.library(), category))


def names(emu: EmulatorThread, category: str = CAT) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for cat in emu.library().get("Category", []):
        if cat["CategoryId"] == category:
            for person in cat["Persons"]["Person"]:
                out[person["PersonId"]] = person.get("PersonName")
    return out


def run(emu: EmulatorThread, *argv: str) -> int:
    return main([*argv, "--endpoint", emu.url, "--qps", "500"])


def register(
    emu: EmulatorThread, manifest: Path, tmp: Path, *extra: str
) -> list[dict[str, object]]:
    out = tmp / f"out-{manifest.stem}-{time.monotonic_ns()}.jsonl"
    code = run(emu, "register", str(manifest), "--output", str(out), "--no-progress", *extra)
    assert code in (0, 1)
    return [json.loads(line) for line in out.read_text().splitlines()]


def actions(emu: EmulatorThread) -> dict[str, int]:
    return dict(emu.stats.requests_by_action)


# --- plan ---------------------------------------------------------------------------------------


def test_plan_counts_equal_what_register_then_does(
    emulator: EmulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In the library already: p0 with 8 faces, p1 with 10.
    seed = [(CAT, "p0", url(0, i)) for i in range(8)] + [(CAT, "p1", url(1, i)) for i in range(10)]
    register(emulator, csv_file(tmp_path / "seed.csv", seed), tmp_path, "--no-ledger")
    rows = [
        *[(CAT, "p0", url(0, i)) for i in range(6, 14)],  # 2 stored, 2 fit, 4 over the cap
        (CAT, "P1", url(1, 3)),  # stored (person IDs compare case-insensitively)
        (CAT, "p1", url(1, 99)),  # over the cap
        *[(CAT, "p2", url(2, i)) for i in range(12)],  # 10 fit, 2 over the cap
        (CAT, "p2", url(2, 0)),  # duplicate of an earlier row
        (CAT, "p3", "not-a-url"),  # bad row
        ("other", "q", url(9, 9)),  # another library: listed too
    ]
    manifest = csv_file(tmp_path / "job.csv", rows)
    decisions = tmp_path / "plan.jsonl"
    emulator.reset_stats()
    capsys.readouterr()
    assert run(emulator, "plan", str(manifest), "--output", str(decisions)) == 0
    printed = capsys.readouterr().out
    assert actions(emulator).get("RegisterCustomFace", 0) == 0
    assert actions(emulator)["ListCustomPersons"] == 2  # one listing per library
    planned = [json.loads(line) for line in decisions.read_text().splitlines()]
    assert [p["row"] for p in planned] == list(range(1, len(rows) + 1))
    kinds = Counter(str(p["decision"]) for p in planned)
    assert kinds == {"register": 13, "in_library": 3, "cap": 7, "duplicate": 1, "bad_row": 1}
    assert "register 13" in printed and "API calls needed: 15" in printed

    outcomes = register(emulator, manifest, tmp_path)
    by_row = {int(str(o["row"])): o for o in outcomes}
    for p in planned:
        outcome = by_row[int(str(p["row"]))]
        expected = {"register": "registered", "bad_row": "failed"}.get(
            str(p["decision"]), "skipped"
        )
        assert outcome["status"] == expected, (p, outcome)
    assert actions(emulator)["RegisterCustomFace"] == 13

    # Planned again with the ledger the run kept: everything is done or skipped.
    capsys.readouterr()
    ledger = str(manifest) + ".ledger"
    assert run(emulator, "plan", str(manifest), "--ledger", ledger, "--output", str(decisions)) == 0
    again = Counter(json.loads(line)["decision"] for line in decisions.read_text().splitlines())
    assert again["register"] == 0 and again["in_ledger"] == 13


def test_plan_refuses_an_unreachable_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "secret")
    manifest = csv_file(tmp_path / "m.csv", [(CAT, "p", url(0, 0))])
    code = main(["plan", str(manifest), "--endpoint", "http://127.0.0.1:9"])
    assert code == 1


# --- export -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_export_registered_again_registers_nothing(
    emulator: EmulatorThread, tmp_path: Path, suffix: str
) -> None:
    seed = [(CAT, f"p{p}", url(p, i), f"Name {p}") for p in range(5) for i in range(p + 1)]
    seed += [("second", "x", url(7, 7), "Ex")]
    register(emulator, csv_file(tmp_path / "seed.csv", seed, name=True), tmp_path, "--no-ledger")
    exported = tmp_path / f"export{suffix}"
    assert (
        run(
            emulator, "export", "--category", CAT, "--category", "second", "--output", str(exported)
        )
        == 0
    )
    lines = exported.read_text().splitlines()
    if suffix == ".csv":
        assert lines[0] == "category_id,person_id,image_url,person_name,face_id"
        assert len(lines) == 1 + len(seed)
    else:
        records = [json.loads(line) for line in lines]
        assert len(records) == len(seed)
        assert {r["person_name"] for r in records} >= {"Name 0", "Ex"}
        assert all(r["face_id"] for r in records)
    emulator.reset_stats()
    outcomes = register(emulator, exported, tmp_path, "--no-ledger")
    assert len(outcomes) == len(seed)
    assert {o["status"] for o in outcomes} == {"skipped"}
    assert actions(emulator).get("RegisterCustomFace", 0) == 0


def test_export_refuses_an_unknown_extension(emulator: EmulatorThread, tmp_path: Path) -> None:
    assert run(emulator, "export", "--category", CAT, "--output", str(tmp_path / "x.txt")) == 2


# --- sync ---------------------------------------------------------------------------------------


def test_sync_without_prune_registers_and_renames_only(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    seed = [(CAT, "a", url(0, i), "Old") for i in range(3)] + [(CAT, "gone", url(1, 0), "G")]
    register(emulator, csv_file(tmp_path / "seed.csv", seed, name=True), tmp_path, "--no-ledger")
    wanted = [(CAT, "a", url(0, i), "New") for i in (1, 2, 5)] + [(CAT, "b", url(2, 0), "B")]
    manifest = csv_file(tmp_path / "want.csv", wanted, name=True)
    out = tmp_path / "sync.jsonl"
    code = run(
        emulator,
        "sync",
        str(manifest),
        "--category",
        CAT,
        "--yes",
        "--output",
        str(out),
        "--no-progress",
    )
    assert code == 0
    assert faces(emulator) == Counter(
        {("a", url(0, i)): 1 for i in (0, 1, 2, 5)} | {("gone", url(1, 0)): 1, ("b", url(2, 0)): 1}
    )
    assert names(emulator) == {"a": "New", "gone": "G", "b": "B"}


def test_sync_with_prune_makes_the_library_match(emulator: EmulatorThread, tmp_path: Path) -> None:
    seed = [(CAT, "a", url(0, i), "A") for i in range(4)] + [
        (CAT, "gone", url(1, i), "G") for i in range(2)
    ]
    seed += [("other", "keep", url(3, 3), "K")]
    register(emulator, csv_file(tmp_path / "seed.csv", seed, name=True), tmp_path, "--no-ledger")
    wanted = [(CAT, "A", url(0, i), "A2") for i in (1, 3, 6)] + [(CAT, "c", url(2, 0), "C")]
    manifest = csv_file(tmp_path / "want.csv", wanted, name=True)
    emulator.reset_stats()
    code = run(
        emulator,
        "sync",
        str(manifest),
        "--category",
        CAT,
        "--prune",
        "--yes",
        "--output",
        str(tmp_path / "o.jsonl"),
        "--no-progress",
    )
    assert code == 0
    assert faces(emulator) == Counter(
        {("a", url(0, i)): 1 for i in (1, 3, 6)} | {("c", url(2, 0)): 1}
    )
    assert names(emulator) == {"a": "A2", "c": "C"}
    assert faces(emulator, "other") == Counter({("keep", url(3, 3)): 1})  # not a synced library
    # 2 faces of a removed + 1 call for the whole person "gone"; 2 registrations.
    assert actions(emulator)["UnregisterCustomFace"] == 3
    assert actions(emulator)["RegisterCustomFace"] == 2
    ledger = sqlite3.connect(str(manifest) + ".ledger")
    states = Counter(state for (state,) in ledger.execute("SELECT state FROM removals"))
    assert states == {"removed": 3}

    # A second sync finds nothing to do.
    emulator.reset_stats()
    code = run(
        emulator,
        "sync",
        str(manifest),
        "--category",
        CAT,
        "--prune",
        "--yes",
        "--output",
        str(tmp_path / "o2.jsonl"),
        "--no-progress",
    )
    assert code == 0
    assert actions(emulator).get("UnregisterCustomFace", 0) == 0
    assert actions(emulator).get("RegisterCustomFace", 0) == 0
    assert actions(emulator).get("TagCustomPerson", 0) == 0


def test_sync_removes_before_registering_under_the_cap(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    seed = [(CAT, "full", url(0, i)) for i in range(10)]
    register(emulator, csv_file(tmp_path / "seed.csv", seed), tmp_path, "--no-ledger")
    # The manifest keeps 7 of the 10 and replaces 3.
    wanted = [(CAT, "full", url(0, i)) for i in range(7)] + [
        (CAT, "full", url(0, i)) for i in (20, 21, 22)
    ]
    manifest = csv_file(tmp_path / "want.csv", wanted)
    out = tmp_path / "o.jsonl"

    # Without --prune the 3 new faces would pass the cap: the plan says so and nothing is sent.
    emulator.reset_stats()
    assert (
        run(
            emulator,
            "sync",
            str(manifest),
            "--category",
            CAT,
            "--yes",
            "--output",
            str(out),
            "--no-progress",
        )
        == 0
    )
    assert actions(emulator).get("RegisterCustomFace", 0) == 0
    reasons = [str(json.loads(line)["reason"]) for line in out.read_text().splitlines()]
    assert sum(r.startswith("cap: person already has 10 faces") for r in reasons) == 3

    assert (
        run(
            emulator,
            "sync",
            str(manifest),
            "--category",
            CAT,
            "--prune",
            "--yes",
            "--output",
            str(out),
            "--no-progress",
        )
        == 0
    )
    assert faces(emulator) == Counter({("full", u): 1 for _, _, u in wanted})
    outcomes = [json.loads(line) for line in out.read_text().splitlines()]
    assert Counter(o["status"] for o in outcomes) == {"registered": 3, "skipped": 7}
    assert not [code for code in emulator.stats.errors_by_code if "Limit" in code]


def test_sync_dry_run_and_no_terminal(
    emulator: EmulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register(
        emulator, csv_file(tmp_path / "seed.csv", [(CAT, "x", url(0, 0))]), tmp_path, "--no-ledger"
    )
    manifest = csv_file(tmp_path / "want.csv", [(CAT, "y", url(1, 0))])
    emulator.reset_stats()
    capsys.readouterr()
    assert run(emulator, "sync", str(manifest), "--category", CAT, "--prune", "--dry-run") == 0
    err = capsys.readouterr().err
    assert "remove 1" in err and "register 1" in err
    assert "remove: lib/x the whole person" in err
    # Not on a terminal and no --yes: a usage error after the plan, nothing changed.
    assert run(emulator, "sync", str(manifest), "--category", CAT, "--prune") == 2
    assert "--yes" in capsys.readouterr().err
    assert set(actions(emulator)) == {"ListCustomPersons"}
    assert faces(emulator) == Counter({("x", url(0, 0)): 1})


# --- a sync killed half way, then resumed --------------------------------------------------------


def environment(emu: EmulatorThread) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}
    env["ALIBABA_CLOUD_ACCESS_KEY_ID"] = emu.key.access_key_id
    env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = emu.key.access_key_secret
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def ledger_progress(path: Path) -> tuple[int, int]:
    """(removals finished, rows registered) as the ledger says, read while the sync writes."""
    if not path.exists():
        return 0, 0
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            removed = db.execute("SELECT COUNT(*) FROM removals WHERE state = 'removed'")
            removed_count = int(removed.fetchone()[0])
            registered = db.execute("SELECT COUNT(*) FROM rows WHERE state = 'registered'")
            return removed_count, int(registered.fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0, 0


def in_flight_rows(path: Path) -> int:
    """Rows the ledger holds started or ambiguous (sent, or about to be, with no answer)."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        found = db.execute("SELECT COUNT(*) FROM rows WHERE state IN ('started', 'ambiguous')")
        return int(found.fetchone()[0])
    finally:
        db.close()


@pytest.mark.parametrize("phase", ["removing", "registering"])
def test_sync_killed_then_resumed(tmp_path: Path, phase: str) -> None:
    config = EmulatorConfig(qps=500, latency=0.01, seed=17)
    with Emulator.in_thread(config) as emu:
        persons = 30
        seed = [(CAT, f"p{p}", url(p, i)) for p in range(persons) for i in range(10)]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emu.key.access_key_id)
            mp.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", emu.key.access_key_secret)
            register(emu, csv_file(tmp_path / "seed.csv", seed), tmp_path, "--no-ledger")
        # Every person keeps 6 faces and gets 4 new ones: 120 removals, then 120 registrations.
        wanted = [
            (CAT, f"p{p}", url(p, i)) for p in range(persons) for i in (*range(6), 30, 31, 32, 33)
        ]
        manifest = csv_file(tmp_path / "want.csv", wanted)
        ledger = tmp_path / "sync.ledger"
        cmd = [
            sys.executable, "-m", "mts_faces.cli", "sync", str(manifest), "--category", CAT,
            "--prune", "--yes", "--ledger", str(ledger), "--endpoint", emu.url, "--qps", "200",
            "--no-progress", "--settle", "1", "--output",
        ]  # fmt: skip
        emu.reset_stats()
        first = subprocess.Popen(
            [*cmd, str(tmp_path / "first.jsonl")],
            env=environment(emu),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.poll() is None:
            removed, registered = ledger_progress(ledger)
            if (phase == "removing" and removed >= 40) or (
                phase == "registering" and registered >= 40
            ):
                first.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        first.wait(30)
        assert first.returncode == -signal.SIGKILL, "the sync ended before it could be killed"
        removed_first, registered_first = ledger_progress(ledger)
        assert removed_first < 120 or registered_first < 120
        # Rows whose start was durable but whose answer the killed run never had: the rerun
        # settles each against the library; one whose request never arrived is sent again.
        in_flight = in_flight_rows(ledger)

        second = subprocess.run(
            [*cmd, str(tmp_path / "second.jsonl")],
            env=environment(emu),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 0, second.stderr
        assert "Traceback" not in second.stderr
        assert faces(emu) == Counter(
            {(f"p{p}", u): 1 for _, p_, u in wanted for p in [int(p_[1:])]}
        )
        stats = emu.stats.requests_by_action
        # Each of the 120 faces was removed once and each of the 120 new ones registered once
        # (a removal already done is not sent again; a registration the ledger holds neither).
        not_found = sum(n for code, n in emu.stats.errors_by_code.items() if "NotFound" in code)
        assert stats["UnregisterCustomFace"] - not_found == 120
        assert not_found <= 1  # only a removal in flight at the kill may be sent again
        assert 120 <= stats["RegisterCustomFace"] <= 120 + in_flight
        assert "removed" in second.stderr


def test_sync_prune_of_a_shard_leaves_the_other_shards_persons(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    from mts_faces.shards import shard_of

    seed = [(CAT, f"p{p}", url(p, 0)) for p in range(20)]
    register(emulator, csv_file(tmp_path / "seed.csv", seed), tmp_path, "--no-ledger")
    mine = [p for p in range(20) if shard_of(CAT, f"p{p}", 2) == 1]
    assert 0 < len(mine) < 20
    # The manifest keeps one person of shard 1 and names no other: pruning shard 1 removes
    # the rest of shard 1 only.
    manifest = csv_file(tmp_path / "want.csv", [(CAT, f"p{mine[0]}", url(mine[0], 0))])
    argv = ["sync", str(manifest), "--category", CAT, "--prune", "--yes", "--shard", "1/2"]
    assert run(emulator, *argv, "--output", str(tmp_path / "o.jsonl"), "--no-progress") == 0
    left = {person for person, _ in faces(emulator)}
    assert left == {f"p{p}" for p in range(20) if p not in mine[1:]}
    assert (tmp_path / "want.csv.shard-1-of-2.ledger").exists()


@pytest.mark.parametrize(("answer", "applied"), [("n", False), ("yes", True)])
def test_sync_asks_on_a_terminal(
    emulator: EmulatorThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    applied: bool,
) -> None:
    manifest = csv_file(tmp_path / "want.csv", [(CAT, "y", url(1, 0))])
    asked: list[str] = []
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or answer)
    argv = ["sync", str(manifest), "--category", CAT, "--output", str(tmp_path / "o.jsonl")]
    assert run(emulator, *argv, "--no-progress") == 0
    assert asked == ["apply this plan? [y/N] "]
    assert bool(faces(emulator)) is applied

"""``--shard K/N``: a person's rows all land in one shard, the hash is stable and casefolded,
each shard keeps its own ledger; and 4 shard processes sharing one quota through a real
redis-server register 4,000 rows, each stored once, never more than the quota in any second."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mts_faces.cli import main
from mts_faces.emulator import Emulator, EmulatorConfig
from mts_faces.manifest import BadRow, FaceRow
from mts_faces.shards import Shard, shard_of

from .redis_server import REDIS_SERVER, SKIP_REASON, redis_server
from .soak_harness import stored_faces

REPO = Path(__file__).resolve().parents[1]


def test_shard_parse_and_errors() -> None:
    assert Shard.parse("2/4") == Shard(2, 4)
    for bad in ("0/4", "5/4", "2", "a/b", "1/0", "-1/3"):
        with pytest.raises(ValueError, match="K/N"):
            Shard.parse(bad)


def test_the_hash_is_stable_casefolded_and_spreads() -> None:
    # A fixed value: the same on every machine and Python version (no PYTHONHASHSEED).
    assert shard_of("cat", "person-1", 4) == shard_of("CAT", "PERSON-1", 4)
    assert [shard_of("cat", f"p{i}", 4) for i in range(8)] == [
        shard_of("cat", f"P{i}", 4) for i in range(8)
    ]
    counts = Counter(shard_of("cat", f"p{i}", 4) for i in range(4000))
    assert set(counts) == {1, 2, 3, 4}
    assert min(counts.values()) > 800  # roughly even
    rows = [FaceRow("cat", f"p{i % 50}", f"https://x/{i}.jpg", row=i + 1) for i in range(500)]
    rows_with_bad: list[FaceRow | BadRow] = [*rows, BadRow(501, "broken")]
    taken = [list(Shard(k, 3).rows(rows_with_bad)) for k in (1, 2, 3)]
    assert sum(map(len, taken)) == 501  # every row in exactly one shard (the bad one in 1)
    for part in taken:
        persons = {r.person_key for r in part if isinstance(r, FaceRow)}
        for other in taken:
            if other is not part:
                assert not persons & {r.person_key for r in other if isinstance(r, FaceRow)}


def test_shard_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["register", str(tmp_path / "m.csv"), "--shard", "5/4"])
    assert exit_info.value.code == 2
    assert "K <= N" in capsys.readouterr().err


@pytest.fixture
def redis_url() -> Iterator[str]:
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    with redis_server() as url:
        yield url


PERSONS, FACES, QPS = 400, 10, 1000


def test_four_shard_processes_share_one_quota(redis_url: str, tmp_path: Path) -> None:
    manifest = tmp_path / "faces.csv"
    lines = ["category_id,person_id,image_url"]
    lines += [
        f"shards,p{p:04d},https://img.example.com/{p}/{i}.jpg"
        for p in range(PERSONS)
        for i in range(FACES)
    ]
    manifest.write_text("\n".join(lines) + "\n")
    with Emulator.in_thread(EmulatorConfig(qps=QPS, latency=0.002, seed=11)) as emu:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}
        env["ALIBABA_CLOUD_ACCESS_KEY_ID"] = emu.key.access_key_id
        env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = emu.key.access_key_secret
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")

        def command(k: int) -> list[str]:
            return [
                sys.executable, "-m", "mts_faces.cli", "register", str(manifest),
                "--shard", f"{k}/4", "--redis", redis_url, "--redis-key", "test:shards",
                "--endpoint", emu.url, "--qps", str(QPS), "--no-progress",
                "--output", str(tmp_path / f"out-{k}.jsonl"),
            ]  # fmt: skip

        processes = [
            subprocess.Popen(
                command(k), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            for k in (1, 2, 3, 4)
        ]
        errors = [p.communicate(timeout=120)[1] for p in processes]
        assert [p.returncode for p in processes] == [0, 0, 0, 0], errors
        stats = emu.stats
        stored = Counter((person, url) for person, url, _ in stored_faces(emu.library(), "shards"))
    assert len(stored) == PERSONS * FACES and set(stored.values()) == {1}
    # Every row sent once: 4,000 registrations and one listing per shard got through.
    assert stats.accepted == PERSONS * FACES + 4
    assert stats.max_window_quota <= QPS  # RegisterCustomFace's quota in any second
    outputs = [(tmp_path / f"out-{k}.jsonl").read_text().splitlines() for k in (1, 2, 3, 4)]
    assert sum(map(len, outputs)) == PERSONS * FACES
    assert all(len(rows) > 0 for rows in outputs)
    for k in (1, 2, 3, 4):  # each shard its own ledger, beside the manifest
        assert (tmp_path / f"faces.csv.shard-{k}-of-4.ledger").exists()
    print(
        f"4 shards: {stats.accepted} accepted, {stats.throttled} throttled, "
        f"max {stats.max_window_accepted} in any second"
    )


def test_a_bad_redis_url_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "secret")
    manifest = tmp_path / "m.csv"
    manifest.write_text("category_id,person_id,image_url\nc,p,https://x.example/a.jpg\n")
    argv = ["register", str(manifest), "--no-ledger", "--redis", "not-a-url"]
    assert main([*argv, "--endpoint", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "--redis not-a-url" in err and "Traceback" not in err

"""Image identity (issue: re-signed URLs) and settling that never stalls the job.

A face is (category, person, image key): the URL less its signing parameters, or an
explicit ``image_key``. Each case runs against the emulator and judges by its own store.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mts_faces import MtsFaceClient
from mts_faces.emulator import Emulator, EmulatorConfig
from mts_faces.imagekey import SIGNING_PARAMETERS, ImageKeys
from mts_faces.ledger import Ledger, LedgerIdentity
from mts_faces.manifest import BadRow, FaceRow, read_manifest
from mts_faces.registrar import Registrar

from .fake_client import FakeClient

CATEGORY = "private"


def signed(url: str, style: str, run: int) -> str:
    """``url`` signed as a private bucket (or CDN) would sign it for run ``run``."""
    if style == "v1":
        query = f"OSSAccessKeyId=LTAIabc&Expires={1700000000 + run}&Signature=sig{run}%3D"
    elif style == "v4":
        query = (
            "x-oss-signature-version=OSS4-HMAC-SHA256&x-oss-credential=LTAI%2F20261205%2F"
            f"cn-shanghai%2Foss%2Faliyun_v4_request&x-oss-date=20261205T0000{run:02d}Z&"
            f"x-oss-expires=3600&x-oss-signature=deadbeef{run}"
        )
    elif style == "cdn":
        query = f"auth_key={1700000000 + run}-0-0-md5{run}"
    else:
        raise AssertionError(style)
    return f"{url}?{query}"


def manifest(style: str, run: int, persons: int = 3, faces: int = 4) -> list[FaceRow]:
    return [
        FaceRow(
            CATEGORY,
            f"p{p}",
            signed(f"https://bucket.oss-cn-shanghai.aliyuncs.com/faces/{p}/{i}.jpg", style, run),
        )
        for p in range(persons)
        for i in range(faces)
    ]


def stored(emulator: Emulator) -> list[tuple[str, str]]:
    """(person, image URL) of every stored face."""
    return [
        (person["PersonId"], face["ImageUrl"])
        for cat in emulator.library()["Category"]
        for person in cat["Persons"]["Person"]
        for face in person["Faces"]["Face"]
    ]


def client_for(emulator: Emulator, **options: Any) -> MtsFaceClient:
    options.setdefault("qps", 1000)
    options.setdefault("backoff_base", 0.01)
    return MtsFaceClient(**emulator.client_kwargs(in_process=True, **options))


# --- the key itself -------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["v1", "v4", "cdn"])
def test_the_signing_parameters_are_not_part_of_the_key(style: str) -> None:
    base = "https://b.oss-cn-beijing.aliyuncs.com/a/1.jpg"
    keys = ImageKeys()
    assert keys.key(signed(base, style, 1)) == keys.key(signed(base, style, 2)) == base


def test_other_parameters_stay_in_order_and_more_can_be_ignored() -> None:
    keys = ImageKeys()
    url = "https://b.example/1.jpg?x-oss-process=image/resize,w_100&Signature=s&v=2"
    assert keys.key(url) == "https://b.example/1.jpg?x-oss-process=image/resize,w_100&v=2"
    assert keys.key("https://b.example/1.jpg?SIGNATURE=x") == "https://b.example/1.jpg"
    assert keys.ignoring("v", "X-OSS-PROCESS").key(url) == "https://b.example/1.jpg"
    assert ImageKeys().rule != keys.ignoring("v").rule
    assert "security-token" in SIGNING_PARAMETERS and "x-oss-security-token" in SIGNING_PARAMETERS
    # Another image is another key.
    assert keys.key("https://b.example/1.jpg?v=1") != keys.key("https://b.example/1.jpg?v=2")


def test_an_explicit_image_key_column_wins_and_is_checked() -> None:
    text = (
        "category_id,person_id,image_url,image_key\n"
        "c,p,https://b.example/1.jpg?Signature=a,sha256:abc\n"
        "c,p,https://b.example/2.jpg,\n"
        f"c,p,https://b.example/3.jpg,{'x' * 1025}\n"
    )
    first, second, third = list(read_manifest(io.BytesIO(text.encode())))
    assert isinstance(first, FaceRow) and first.image_key == "sha256:abc"
    assert first.identity() == "key:sha256:abc"
    assert isinstance(second, FaceRow) and second.image_key is None
    assert second.identity() == "https://b.example/2.jpg"
    assert isinstance(third, BadRow) and third.field == "image_key" and "1024" in third.reason


# --- re-signed reruns -----------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["v1", "v4", "cdn"])
@pytest.mark.parametrize("with_ledger", [True, False])
async def test_a_rerun_with_freshly_signed_urls_stores_each_face_once(
    tmp_path: Path, style: str, with_ledger: bool
) -> None:
    ledger = tmp_path / "l.db" if with_ledger else None
    async with Emulator(EmulatorConfig(qps=None, seed=3)) as emulator:
        async with client_for(emulator) as client:
            first = await Registrar(client, ledger=ledger).register_all(manifest(style, 1))
            rerun = Registrar(client, ledger=ledger)
            second = await rerun.register_all(manifest(style, 2))
        faces = stored(emulator)
    assert first.registered == 12
    assert len(faces) == 12  # not 24
    assert second.skipped + second.registered == 12 and second.calls <= 1  # one listing
    if with_ledger:
        assert second.registered == 12  # resumed from the ledger, checked against the listing


async def test_an_explicit_image_key_survives_a_url_that_changes_entirely(tmp_path: Path) -> None:
    def rows(run: int) -> list[FaceRow]:
        return [
            FaceRow(CATEGORY, "p1", f"https://cdn{run}.example/run{run}/{i}.jpg", image_key=f"d{i}")
            for i in range(5)
        ]

    async with Emulator(EmulatorConfig(qps=None, seed=3)) as emulator:
        async with client_for(emulator) as client:
            await Registrar(client, ledger=tmp_path / "l.db").register_all(rows(1))
            second = await Registrar(client, ledger=tmp_path / "l.db").register_all(rows(2))
        faces = stored(emulator)
    assert len(faces) == 5
    assert second.calls == 1  # the listing only: every row resumed by its key
    assert second.registered == 5


async def test_verify_repair_treats_re_signed_urls_as_one_face(
    capsys: Any, monkeypatch: Any
) -> None:
    from mts_faces.cli import main

    base = "https://bucket.oss-cn-shanghai.aliyuncs.com/faces/1.jpg"
    with Emulator.in_thread(EmulatorConfig(qps=None, seed=3)) as emu:
        async with MtsFaceClient(**emu.client_kwargs(qps=1000)) as client:
            for run in (1, 2):
                await client.register_custom_face(CATEGORY, "p1", signed(base, "v1", run))
            await client.register_custom_face(CATEGORY, "p1", signed(base + "?v=2", "v4", 1))
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emu.key.access_key_id)
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", emu.key.access_key_secret)
        argv = ["verify", "--category", CATEGORY, "--endpoint", emu.url, "--repair"]
        code = await asyncio.to_thread(main, argv)
        faces = stored(emu.emulator)
    assert code == 0
    assert "1 images stored more than once, 1 extra FaceIds removed" in capsys.readouterr().err
    assert len(faces) == 2  # one of the two signings of 1.jpg, and 1.jpg?v=2


def test_sync_prune_keeps_faces_whose_urls_were_signed_anew(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from mts_faces.cli import main

    path = tmp_path / "m.csv"
    with Emulator.in_thread(EmulatorConfig(qps=None, seed=3)) as emu:
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emu.key.access_key_id)
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", emu.key.access_key_secret)
        for run in (1, 2):
            lines = ["category_id,person_id,image_url"]
            lines += [f"{r.category_id},{r.person_id},{r.image_url}" for r in manifest("v4", run)]
            path.write_text("\n".join(lines) + "\n")
            argv = ["sync", str(path), "--category", CATEGORY, "--prune", "--yes"]
            argv += ["--endpoint", emu.url, "--no-progress", "--output", str(tmp_path / "o")]
            assert main(argv) == 0
            if run == 1:
                first = sorted(stored(emu.emulator))
        second = sorted(stored(emu.emulator))
        calls = emu.emulator.stats.requests_by_action
    assert len(first) == 12
    assert second == first  # nothing removed, nothing registered again
    assert calls.get("UnregisterCustomFace", 0) == 0
    assert calls["RegisterCustomFace"] == 12


# --- rows in doubt ----------------------------------------------------------------------------


async def test_a_row_in_doubt_keeps_its_place_under_the_cap_and_holds_back_only_itself() -> None:
    client = FakeClient()
    for i in range(9):
        await client.register_custom_face(CATEGORY, "full", f"https://img.example/old/{i}.jpg")
    client.fault = lambda action, n: "drop" if action == "RegisterCustomFace" and n == 1 else None
    client.calls.clear()
    data = [FaceRow(CATEGORY, "full", f"https://img.example/new/{i}.jpg") for i in range(3)]
    data += [FaceRow(CATEGORY, "other", f"https://img.example/other/{i}.jpg") for i in range(4)]
    registrar = Registrar(client, settle=0.3, retry_backoff=0.01)  # type: ignore[arg-type]
    order = [(o.row.person_id, o.row.image_url, o.status) async for o in registrar.run(data)]
    held = client.store[(CATEGORY, "full")]
    # The row in doubt counted as possibly stored: 9 + 1 = 10, so new/1 and new/2 are capped.
    assert Counter(s for p, _, s in order if p == "full") == {"skipped": 2, "registered": 1}
    assert len(held) == 10 and len({f.image_url for f in held}) == 10
    # It held back only itself: everything else finished before it settled.
    assert order[-1] == ("full", "https://img.example/new/0.jpg", "registered")
    assert client.calls["RegisterCustomFace"] == 1 + 1 + 4  # lost, resent, the others


async def test_a_persons_other_rows_go_on_while_one_is_in_doubt() -> None:
    client = FakeClient(
        lambda action, n: "lost" if action == "RegisterCustomFace" and n == 1 else None
    )
    data = [FaceRow(CATEGORY, "p", f"https://img.example/{i}.jpg") for i in range(6)]
    registrar = Registrar(client, settle=0.5, retry_backoff=0.01)  # type: ignore[arg-type]
    order = [o async for o in registrar.run(data)]
    assert [o.row.image_url for o in order[:5]] == [r.image_url for r in data[1:]]
    assert order[-1].row.image_url == data[0].image_url
    assert "reconciled" in (order[-1].reason or "")
    assert len(client.store[(CATEGORY, "p")]) == 6


async def test_rows_in_doubt_of_many_persons_share_one_listing_of_their_library() -> None:
    lost = set(range(1, 61, 2))  # every other registration of the first 60 is lost
    client = FakeClient(
        lambda action, n: "lost" if action == "RegisterCustomFace" and n in lost else None
    )
    data = [
        FaceRow(CATEGORY, f"p{p:02d}", f"https://img.example/{p}/{i}.jpg")
        for p in range(30)
        for i in range(2)
    ]
    registrar = Registrar(client, settle=0.5, retry_backoff=0.01)  # type: ignore[arg-type]
    report = await registrar.register_all(data)
    assert report.registered == 60 and report.ambiguous == 30 and report.reconciled == 30
    assert sum(len(f) for f in client.store.values()) == 60
    # One listing of the library at the start; the 30 persons in doubt (and their
    # verification) need far fewer than the 60 person listings settling one by one would.
    assert client.calls["ListCustomPersons"] <= 10


async def test_no_duplicate_under_six_percent_lost_answers_with_late_commits(
    tmp_path: Path,
) -> None:
    config = EmulatorConfig(
        qps=None,
        seed=11,
        commit_timeout_rate=0.03,
        drop_rate=0.03,
        hang=0.5,
        late_commit_rate=0.05,
        late_commit_delay=0.4,
    )
    data = manifest("v1", 1, persons=40, faces=5)
    async with Emulator(config) as emulator, client_for(emulator, timeout=0.25) as client:
        registrar = Registrar(client, ledger=tmp_path / "l.db", settle=0.8, retry_backoff=0.01)
        report = await registrar.register_all(data)
        await asyncio.sleep(0.5)  # any late commit still pending lands now
        faces = stored(emulator)
        faulted = emulator.stats.faulted
    assert faulted.get("commit_timeout", 0) + faulted.get("drop", 0) >= 6
    assert faulted.get("late_commit", 0) >= 5
    assert report.registered == len(data) and report.ambiguous >= 6
    keys = ImageKeys()
    assert Counter((p, keys.key(u)) for p, u in faces) == Counter(
        (r.person_id, keys.key(r.image_url)) for r in data
    )  # 0 duplicates, 0 lost


# --- the ledger ---------------------------------------------------------------------------------


def _v1_ledger(path: Path) -> None:
    """A ledger as mts-faces wrote it before image keys: rows keyed by raw URL."""
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE identity (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE rows (key TEXT PRIMARY KEY, person TEXT NOT NULL, category_id TEXT NOT NULL,
            person_id TEXT NOT NULL, image_url TEXT NOT NULL, row INTEGER NOT NULL,
            state TEXT NOT NULL, face_id TEXT, request_id TEXT, started_at REAL,
            updated_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            was_ambiguous INTEGER NOT NULL DEFAULT 0, reason TEXT, run_id INTEGER) WITHOUT ROWID;
        INSERT INTO identity VALUES ('schema_version', '1'), ('endpoint_host', 'h'),
            ('access_key_id', 'k');
        """
    )
    person = "c\x1fp"
    for url, state, face, updated in [
        ("https://b.example/1.jpg?Signature=a", "registered", "F1", 1.0),
        ("https://b.example/1.jpg?Signature=b", "registered", "F2", 2.0),
        ("https://b.example/2.jpg?Expires=1", "registered", "F3", 1.0),
        ("https://b.example/2.jpg?Expires=2", "ambiguous", None, 0.5),
        ("https://b.example/3.jpg", "failed", None, 1.0),
    ]:
        db.execute(
            "INSERT INTO rows (key, person, category_id, person_id, image_url, row, state, "
            "face_id, updated_at) VALUES (?, ?, 'c', 'p', ?, 1, ?, ?, ?)",
            (f"{person}\x1f{url}", person, url, state, face, updated),
        )
    db.commit()
    db.close()


async def test_a_ledger_keyed_by_raw_urls_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _v1_ledger(path)
    ledger = Ledger(path, LedgerIdentity("h", "k")).open()
    try:
        first = ledger.get(FaceRow("c", "p", "https://b.example/1.jpg?Signature=z").key())
        second = ledger.get(FaceRow("c", "p", "https://b.example/2.jpg?Expires=9").key())
        third = ledger.get(FaceRow("c", "p", "https://b.example/3.jpg").key())
        rows = ledger.person_rows("c", "p")
    finally:
        await ledger.aclose()
    assert first is not None and first.face_id == "F2"  # two registered: the latest kept
    assert second is not None and second.state == "ambiguous"  # in flight wins: it settles
    assert third is not None and third.state == "failed"
    assert len(rows) == 3
    version = (
        sqlite3.connect(path)
        .execute("SELECT value FROM identity WHERE name = 'schema_version'")
        .fetchone()
    )
    assert version == ("2",)
    # A change of rule re-keys again.
    again = Ledger(path, LedgerIdentity("h", "k"), image_keys=ImageKeys().ignoring("x")).open()
    try:
        assert again.get(FaceRow("c", "p", "https://b.example/3.jpg?x=1").key()) is None
        assert again.get(FaceRow("c", "p", "https://b.example/3.jpg").key()) is not None
    finally:
        await again.aclose()


# --- when the request left ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["httpx", "aiohttp"])
async def test_a_hung_registration_says_when_its_request_was_written(backend: str) -> None:
    import time

    from mts_faces import AmbiguousOutcomeError

    config = EmulatorConfig(qps=None, seed=1, commit_timeout_rate=1.0, hang=5.0)
    async with Emulator(config) as emulator:
        kwargs = emulator.client_kwargs(qps=1000, http_backend=backend)
        async with MtsFaceClient(**kwargs, timeout=0.3) as client:
            before = time.monotonic()
            with pytest.raises(AmbiguousOutcomeError) as caught:
                await client.register_custom_face(
                    CATEGORY, "p", "https://img.example/1.jpg", max_retries=0
                )
            after = time.monotonic()
    written = caught.value.written_at
    assert written is not None and before <= written <= after - 0.25


async def test_hung_registrations_give_their_slots_back(monkeypatch: Any) -> None:
    """Four calls hang (as connections waiting out their timeout do) with a concurrency of
    four: the other rows still go through, because a call past its lease frees its slot."""
    from mts_faces import AmbiguousOutcomeError, RegisteredFace, TransportError
    from mts_faces.reconcile import ServiceCalls

    monkeypatch.setattr(ServiceCalls, "MIN_LEASE", 0.05)
    others_done = asyncio.Event()

    class Hanging(FakeClient):
        async def register_custom_face(self, category_id: str, *args: Any, **kw: Any) -> Any:
            if category_id == "hang":
                self.calls["hung"] = self.calls.get("hung", 0) + 1
                await others_done.wait()  # answered only once the others went through
                raise AmbiguousOutcomeError(
                    "RegisterCustomFace", TransportError("timeout", request_sent=True)
                )
            face: RegisteredFace = await super().register_custom_face(category_id, *args, **kw)
            if len(self.all_face_ids()) == 20:
                others_done.set()
            return face

    client = Hanging()
    data = [FaceRow("hang", f"h{i}", f"https://img.example/h/{i}.jpg") for i in range(4)]
    data += [FaceRow(CATEGORY, f"p{i}", f"https://img.example/p/{i}.jpg") for i in range(20)]
    registrar = Registrar(client, concurrency=4, settle=0.1, verify=False, max_attempts=1)  # type: ignore[arg-type]
    report = await asyncio.wait_for(registrar.register_all(data), 30)
    assert client.calls["hung"] == 4
    assert report.registered == 20 and report.failed == 4  # the hung ones: budget spent


async def test_stop_while_a_send_is_in_flight_that_then_turns_ambiguous_ends_the_run() -> None:
    """The run stops (the settle pool ends) while a registration is in flight; its answer is
    then lost: the row ends in doubt instead of waiting for a pool that is gone."""
    from mts_faces import AmbiguousOutcomeError, TransportError

    release = asyncio.Event()
    in_flight = asyncio.Event()

    class Gated(FakeClient):
        async def register_custom_face(
            self, category_id: str, person_id: str, *a: Any, **k: Any
        ) -> Any:
            if person_id == "b":
                in_flight.set()
                await release.wait()
                raise AmbiguousOutcomeError(
                    "RegisterCustomFace", TransportError("timeout", request_sent=True)
                )
            return await super().register_custom_face(category_id, person_id, *a, **k)

    client = Gated(lambda action, n: "drop" if action == "RegisterCustomFace" and n == 1 else None)
    registrar = Registrar(client, settle=0.3, concurrency=4, retry_backoff=0.01)  # type: ignore[arg-type]
    data = [
        FaceRow("c", "a", "https://x.example/a1.jpg"),
        FaceRow("c", "b", "https://x.example/b1.jpg"),
    ]

    async def stop_then_answer() -> None:
        await in_flight.wait()
        registrar.stop()
        await asyncio.sleep(0.6)  # past a's deadline: the pool has seen the stop and ended
        release.set()

    outcomes, _ = await asyncio.wait_for(
        asyncio.gather(_collect(registrar, data), stop_then_answer()), 10
    )
    assert sorted(o.row.row for o in outcomes) == [1, 2]
    assert all(o.in_doubt for o in outcomes)


async def _collect(registrar: Registrar, data: list[FaceRow]) -> list[Any]:
    return [o async for o in registrar.run(data)]

"""The soak: a bulk registration against a faulty emulator whose quota a second client shares.

Shared by tests/test_soak.py (a small run in CI, the full one under ``-m slow``) and
benchmarks/soak.py. The manifest goes through the real CSV reader and holds, besides plain
rows, rows past the 10-face cap, duplicates and bad rows, so every kind of outcome occurs.
The emulator's own store is the judge: each registered row must own exactly one stored face,
and no stored face may be missing from, or extra to, what the registrar reported.
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from mts_faces import MtsFaceClient, MtsFacesError, ThrottlingError
from mts_faces.emulator import Emulator, EmulatorConfig
from mts_faces.ledger import LedgerLockedError
from mts_faces.manifest import BadRow, read_manifest
from mts_faces.registrar import Registrar, RowOutcome

CATEGORY = "soak"
RIVAL_CATEGORY = "rival"
# The soak runs the clients, the rival and the emulator in one process at several hundred
# calls/s: on httpx's default transport the CPU, not the quota, would set the pace.
FAST = "aiohttp"


@attrs.frozen
class SoakSettings:
    """Size of the run, the emulator's faults and quota, and the competing client's rate."""

    rows: int = 3000
    qps: float = 100.0
    rival_qps: float = 40.0
    latency: float = 0.02
    jitter: float = 0.02
    internal_error_rate: float = 0.05
    drop_rate: float = 0.02
    commit_timeout_rate: float = 0.01
    unavailable_rate: float = 0.02
    late_commit_rate: float = 0.02
    """registrations committed ``late_commit_delay`` s after they arrive, then answered."""
    late_commit_delay: float = 1.5
    """beyond ``client_timeout``: the answer is lost, the face appears later."""
    hang: float = 2.0
    """How long a commit-then-timeout connection hangs before it closes."""
    client_timeout: float = 1.0
    """The client's read timeout: below ``hang``, the lost answer is a timeout."""
    settle: float = 2.5
    """the registrar's settle period: longer than ``late_commit_delay``."""
    retry_backoff: float = 0.5
    """the registrar's first wait between tries of a row or a listing."""
    seed: int = 2014
    fault_actions: frozenset[str] = frozenset({"RegisterCustomFace"})
    """Actions the faults hit; adding ListCustomPersons also fails the reconciling lists."""


@attrs.frozen
class SoakResult:
    """What the soak found: outcomes, store checks and the emulator's counters."""

    rows: int
    """data rows in the manifest (bad ones included)."""
    statuses: dict[str, int]
    failed_reasons: dict[str, int]
    skipped_reasons: dict[str, int]
    unaccounted: list[int]
    """manifest rows with no outcome, or with more than one."""
    duplicates: int
    """faces stored beyond one per (person, image URL)."""
    lost: int
    """FaceIds reported registered but not in the store."""
    orphans: int
    """faces stored that no registered row reported."""
    good_rows_failed: int
    """valid, unique, within-cap rows that ended failed (throttled out, say)."""
    reconciled: int
    faults: dict[str, int]
    throttled: int
    accepted: int
    requests: int
    rival_calls: int
    rival_throttled: int
    second_run_refused: str
    """what a second run on the same ledger, started while the first ran, said."""
    elapsed: float
    reruns: int
    """runs of the same manifest and ledger after the first, until no good row failed."""
    in_doubt: int
    """rows failed with their outcome unknown (a verifying list failed): the ledger keeps
    them open, and the rerun settles them."""
    rerun_new_faces: int
    """faces the rerun with the same ledger added: the good rows the first run failed."""
    final_missing: int
    """after the rerun: rows that should be registered and have no stored face."""
    final_extra: int
    """after the rerun: stored faces no row asked for."""
    final_duplicates: int
    """after the rerun: faces stored beyond one per (person, image URL)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the figures."""
        return attrs.asdict(self)


def manifest_csv(rows: int, seed: int) -> tuple[bytes, dict[int, tuple[str, str]]]:
    """A CSV of ``rows`` data rows, and the rows expected to be registered: row number →
    (person casefolded, image URL).

    About 1 row in 50 is a duplicate, 1 in 60 is bad (invalid URL, empty or too long ID),
    and about 1 person in 12 gets 11 or 12 rows (past the cap).
    """
    rng = random.Random(seed)
    lines = ["category_id,person_id,image_url,person_name"]
    seen: list[tuple[str, str]] = []
    person = 0
    while len(lines) - 1 < rows:
        person += 1
        pid = f"person-{person:05d}"
        faces = rng.choice([11, 12]) if rng.random() < 1 / 12 else rng.randint(1, 10)
        for face in range(faces):
            if len(lines) - 1 >= rows:
                break
            roll = rng.random()
            if roll < 1 / 60:
                lines.append(
                    rng.choice(
                        [
                            f"{CATEGORY},{pid},ftp://img.example.com/{pid}/{face}.jpg,",
                            f"{CATEGORY},,https://img.example.com/{pid}/{face}.jpg,",
                            f"{CATEGORY},{'x' * 121},https://img.example.com/{pid}/{face}.jpg,",
                        ]
                    )
                )
                continue
            if roll < 1 / 60 + 1 / 50 and seen:
                dup_pid, dup_url = rng.choice(seen)
                # Same person in another spelling: IDs are case-insensitive.
                lines.append(f"{CATEGORY},{dup_pid.upper()},{dup_url},")
                continue
            url = f"https://img.example.com/{pid}/{face}.jpg"
            lines.append(f"{CATEGORY},{pid},{url},Person {person}")
            seen.append((pid, url))
    return ("\n".join(lines) + "\n").encode(), _expected_registered(lines)


def _expected_registered(lines: list[str]) -> dict[int, tuple[str, str]]:
    # The cap counts accepted rows (not bad ones, not duplicates), as the registrar does.
    expected: dict[int, tuple[str, str]] = {}
    per_person: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    for entry in read_manifest(io.BytesIO(("\n".join(lines) + "\n").encode())):
        if isinstance(entry, BadRow):
            continue
        key = (entry.person_id.casefold(), entry.image_url)
        if key in seen:
            continue
        seen.add(key)
        if per_person[key[0]] < 10:
            per_person[key[0]] += 1
            expected[entry.row] = key
    return expected


def stored_faces(
    library: dict[str, Any], category: str = CATEGORY
) -> Iterator[tuple[str, str, str]]:
    """(person casefolded, image URL, FaceId) of every face the emulator stores in ``category``."""
    for cat in library.get("Category", []):
        if cat["CategoryId"].casefold() != category.casefold():
            continue
        for person in cat["Persons"]["Person"]:
            for face in person["Faces"]["Face"]:
                yield person["PersonId"].casefold(), face["ImageUrl"], face["FaceId"]


async def _rival(emulator: Emulator, qps: float, stop: asyncio.Event) -> tuple[int, int]:
    """Another program on the same AccessKey: lists at ``qps`` until told to stop."""
    calls = throttled = 0
    async with MtsFaceClient(
        **emulator.client_kwargs(qps=max(1.0, qps), http_backend=FAST),
        max_retries=0,
        backoff_base=0.0,
    ) as client:
        while not stop.is_set() and calls < 1_000_000:
            calls += 1
            try:
                await client.list_custom_persons(RIVAL_CATEGORY)
            except ThrottlingError:
                throttled += 1
            except MtsFacesError:
                pass
    return calls, throttled


async def _second_run(emulator: Emulator, ledger: Path, data: bytes) -> str:
    """The same job started again on the same ledger while the first runs: it must refuse
    before sending anything."""
    async with MtsFaceClient(**emulator.client_kwargs()) as client:
        second = Registrar(client, ledger=ledger)
        try:
            async for _ in second.run(read_manifest(io.BytesIO(data))):
                return "ran: it yielded an outcome"
        except LedgerLockedError as exc:
            if client.attempts:
                return "refused, after sending"
            return f"refused: {exc}"
    return "ran to the end"


def _check_store(outcomes: list[RowOutcome], library: dict[str, Any]) -> tuple[int, int, int]:
    stored = list(stored_faces(library))
    per_face = Counter((person, url) for person, url, _ in stored)
    duplicates = sum(n - 1 for n in per_face.values())
    stored_ids = {face_id for _, _, face_id in stored}
    reported = {o.face_id for o in outcomes if o.status == "registered" and o.face_id}
    return duplicates, len(reported - stored_ids), len(stored_ids - reported)


async def run_soak(
    settings: SoakSettings, ledger: Path | None = None, *, log: Any = None
) -> SoakResult:
    """Run the soak once (and the same manifest a second time) and return its figures."""
    data, expected = manifest_csv(settings.rows, settings.seed)
    config = EmulatorConfig(
        late_commit_rate=settings.late_commit_rate,
        late_commit_delay=settings.late_commit_delay,
        qps=settings.qps,
        latency=settings.latency,
        jitter=settings.jitter,
        internal_error_rate=settings.internal_error_rate,
        drop_rate=settings.drop_rate,
        commit_timeout_rate=settings.commit_timeout_rate,
        unavailable_rate=settings.unavailable_rate,
        hang=settings.hang,
        seed=settings.seed,
        fault_actions=settings.fault_actions,
        # The quota is counted per action: the listing rival below has its own, so another
        # program spends the registrations' quota inside the emulator.
        rival_qps=settings.rival_qps,
    )
    async with Emulator(config) as emulator:
        stop = asyncio.Event()
        rival = asyncio.create_task(_rival(emulator, settings.rival_qps, stop))
        started = time.monotonic()
        try:
            async with MtsFaceClient(
                **emulator.client_kwargs(qps=settings.qps, http_backend=FAST),
                timeout=settings.client_timeout,
                backoff_base=0.05,
                backoff_max=1.0,
            ) as client:
                registrar = Registrar(
                    client,
                    ledger=ledger,
                    settle=settings.settle,
                    retry_backoff=settings.retry_backoff,
                )
                outcomes = []
                refused = "no ledger"
                async for o in registrar.run(read_manifest(io.BytesIO(data))):
                    outcomes.append(o)
                    if len(outcomes) == 1 and ledger is not None:
                        refused = await _second_run(emulator, ledger, data)
        finally:
            stop.set()
            rival_calls, rival_throttled = await rival
        elapsed = time.monotonic() - started
        stats = emulator.stats
        library = emulator.library()
        duplicates, lost, orphans = _check_store(outcomes, library)

        # The same manifest again, with the same ledger: rows left in doubt are settled,
        # rows that failed are done now, and nothing is registered a second time. The faults
        # are still on, so a rerun may itself leave a row failed: rerun again, as a user would.
        reruns = 0
        async with MtsFaceClient(
            **emulator.client_kwargs(qps=settings.qps, http_backend=FAST),
            timeout=settings.client_timeout,
        ) as client:
            while reruns < 3:
                reruns += 1
                rerun = Registrar(
                    client,
                    ledger=ledger,
                    settle=settings.settle,
                    retry_backoff=settings.retry_backoff,
                )
                again = [o async for o in rerun.run(read_manifest(io.BytesIO(data)))]
                if not any(o.status == "failed" and o.row.row in expected for o in again):
                    break
        final = list(stored_faces(emulator.library()))
    rerun_new = len(final) - len(list(stored_faces(library)))
    final_keys = Counter((person, url) for person, url, _ in final)
    wanted = set(expected.values())

    by_row = Counter(o.row.row for o in outcomes)
    data_rows = settings.rows
    unaccounted = sorted(
        {row for row in range(1, data_rows + 1) if by_row[row] != 1}
        | {row for row in by_row if not 1 <= row <= data_rows}
    )
    failed = [o for o in outcomes if o.status == "failed"]
    in_doubt = [o for o in failed if o.in_doubt]
    if log is not None:
        for o in failed:
            if o.row.row in expected:
                log(f"good row failed: {o.row.row}: {o.reason}")
    return SoakResult(
        rows=data_rows,
        statuses=dict(Counter(o.status for o in outcomes)),
        failed_reasons=dict(Counter(_kind(o.reason) for o in failed)),
        skipped_reasons=dict(Counter(_kind(o.reason) for o in outcomes if o.status == "skipped")),
        unaccounted=unaccounted,
        duplicates=duplicates,
        lost=lost,
        orphans=orphans,
        good_rows_failed=sum(1 for o in failed if o.row.row in expected),
        reconciled=registrar.report.reconciled,
        faults=dict(stats.faulted),
        throttled=stats.throttled,
        accepted=stats.accepted,
        requests=stats.requests,
        rival_calls=rival_calls,
        rival_throttled=rival_throttled,
        second_run_refused=refused,
        elapsed=round(elapsed, 2),
        reruns=reruns,
        in_doubt=len(in_doubt),
        rerun_new_faces=rerun_new,
        final_missing=len(wanted - set(final_keys)),
        final_extra=len(set(final_keys) - wanted),
        final_duplicates=sum(n - 1 for n in final_keys.values()),
    )


def _kind(reason: str | None) -> str:
    """A reason without its row-specific details, for counting."""
    text = reason or "(no reason)"
    for marker in ("bad row: row", "duplicate of row"):
        if text.startswith(marker):
            text = text.split(":", 2)[-1].strip() if marker.startswith("bad") else marker
    return text.split(" (")[0].split("; ")[0].split(", got")[0][:80]

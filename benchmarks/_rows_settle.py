"""Row 12: wall time of a registration whose answers get lost (``--only settle``).

6,000 rows (600 persons × 10) at 0%, 1% and 6% lost answers, and 600 rows at 6%, against an
emulator with a strict 100-in-any-second window and 40 ± 20 ms latency. Half of the lost
answers come after the face was stored (the connection hangs until the client's timeout),
half before (closed, nothing stored). The registrar runs with every default (10 s timeout,
30 s settle period) and a ledger. The emulator's store is the judge of duplicates and
losses (``--dump-library``); its counts give the listings.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from mts_faces.imagekey import ImageKeys
from mts_faces.reconcile import default_settle

from ._common import Sizes, child, log
from ._emulator import EmulatorProcess
from ._report import Row

NAME = "12. lost answers"
LATENCY, JITTER = 0.02, 0.04  # 40 ± 20 ms
SETTLE = default_settle(10.0)  # the client's default timeout
SMALL_SEEDS = (7, 8, 9)


def _run(persons: int, rate: float, seed: int, qps: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mts-bench-settle-") as scratch:
        dump = Path(scratch) / "library.json"
        faults = ("--commit-timeout-rate", str(rate / 2), "--drop-rate", str(rate / 2))
        extra = (*faults, "--seed", str(seed), "--dump-library", str(dump))
        emulator = EmulatorProcess(qps=qps, latency=LATENCY, jitter=JITTER, extra_args=extra)
        with emulator:
            args = ["--url", emulator.url, "--persons", str(persons), "--qps", str(qps)]
            result = child("lost_answers", *args, env=emulator.env())
        library = json.loads(dump.read_text("utf-8"))
    keys = ImageKeys()
    held: Counter[tuple[str, str]] = Counter()
    for category in library.get("Category", []):
        for person in category["Persons"]["Person"]:
            for face in person["Faces"]["Face"]:
                held[(person["PersonId"], keys.key(face["ImageUrl"]))] += 1
    result["stored"] = sum(held.values())
    result["duplicates"] = sum(n - 1 for n in held.values())
    result["lost"] = result["rows"] - len(held)
    result["emulator"] = emulator.stats
    result["listings"] = emulator.stats.get("requests_by_action", {}).get("ListCustomPersons", 0)
    result["faulted"] = emulator.stats.get("faulted", {})
    return result


def _describe(result: dict[str, Any]) -> str:
    lost = result["faulted"].get("commit_timeout", 0) + result["faulted"].get("drop", 0)
    return (
        f"{result['wall']:.1f} s for {result['rows']:,} rows; {lost} answers lost "
        f"({result['ambiguous']} rows in doubt, {result['reconciled']} found stored); "
        f"{result['listings']} listings; {result['duplicates']} duplicates, "
        f"{result['lost']} lost"
    )


def settle_rows(sizes: Sizes, raw: list[dict[str, Any]]) -> list[Row]:
    """Wall time under lost answers against the fault-free run's."""
    rows: list[Row] = []
    persons = max(1, sizes.faces // 5)  # 6,000 rows at the full size (600 persons × 10)
    baseline: float | None = None
    for rate in (0.0, 0.01, 0.06):
        label = f"Registrar, {persons * 10:,} rows, {rate:.0%} lost answers"
        log(f"settle: {label} ...")
        try:
            result = _run(persons, rate, 7, sizes.qps)
        except Exception as exc:
            rows.append(Row(NAME, label, f"error: {exc}", "", "not run"))
            continue
        raw.append({"benchmark": "settle", "rate": rate, **result})
        clean = result["duplicates"] == 0 and result["lost"] == 0
        if rate == 0.0:
            baseline = result["wall"]
            rows.append(
                Row(
                    NAME,
                    label,
                    _describe(result),
                    "0 duplicates, 0 lost",
                    "pass" if clean else "MISS",
                )
            )
            continue
        if baseline is None:
            rows.append(Row(NAME, label, _describe(result), "", "not run"))
            continue
        bound = baseline + SETTLE + 10.0
        target = f"≤ fault-free + settle + 10 s = {bound:.1f} s; 0 duplicates, 0 lost"
        ok = clean and result["wall"] <= bound
        rows.append(Row(NAME, label, _describe(result), target, "pass" if ok else "MISS"))
    small = max(1, persons // 10)
    label = f"Registrar, {small * 10:,} rows, 6% lost answers, seeds {SMALL_SEEDS}"
    log(f"settle: {label} ...")
    walls: list[str] = []
    ok = True
    for seed in SMALL_SEEDS:
        try:
            result = _run(small, 0.06, seed, sizes.qps)
        except Exception as exc:
            rows.append(Row(NAME, label, f"error: {exc}", "", "not run"))
            return rows
        raw.append({"benchmark": "settle", "rate": 0.06, "seed": seed, **result})
        walls.append(
            f"{result['wall']:.1f} s ({result['ambiguous']} in doubt, "
            f"{result['duplicates']} dup, {result['lost']} lost)"
        )
        ok = ok and result["wall"] < 50.0 and result["duplicates"] == 0 and result["lost"] == 0
    rows.append(
        Row(
            NAME,
            label,
            "; ".join(walls),
            "each < 50 s, 0 duplicates, 0 lost",
            "pass" if ok else "MISS",
        )
    )
    return rows

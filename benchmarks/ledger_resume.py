"""Peak RSS of the registrar with its SQLite ledger: a fresh run, the resume of that run from
its ledger, and the shapes that used to grow (every row one person; ``check_existing`` off).

Each measurement runs in a fresh interpreter (its peak RSS is its own), with the real client,
signer and ledger over an in-process transport that answers at once (``benchmarks.memory``).
The resume reads a ledger in which every row is registered; it runs with
``check_existing=False`` so that what is measured is the ledger, not the size of one listing
holding a million faces.

    python -m benchmarks.ledger_resume                  # 1,000,000 rows
    python -m benchmarks.ledger_resume --rows 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mts_faces import MtsFaceClient
from mts_faces.manifest import FaceRow
from mts_faces.registrar import Registrar

from ._common import child
from .memory import InstantTransport, NoLimit, _rss_mb, generate

MODES = ("fresh", "resume", "one_person", "no_check_existing")
LEDGER_CHILD_TIMEOUT = 1800.0


def one_person(rows: int) -> Iterator[FaceRow]:
    """``rows`` distinct images of one person: 10 are registered, the rest hit the cap."""
    for i in range(rows):
        yield FaceRow("bench", "the-one", f"https://img.example/one/{i}.jpg", row=i + 1)


async def measure(mode: str, rows: int, ledger: str) -> dict[str, Any]:
    """One run of ``mode`` over ``rows`` rows with the ledger at ``ledger``."""
    client = MtsFaceClient(
        access_key_id="bench",
        access_key_secret="bench-secret",
        endpoint="http://127.0.0.1:9",
        limiter=NoLimit(),
        transport=InstantTransport(),
    )
    check_existing = mode in ("fresh", "one_person")
    registrar = Registrar(
        client, ledger=ledger, concurrency=64, collect_faces=False, check_existing=check_existing
    )
    source = one_person(rows) if mode == "one_person" else generate(rows)
    baseline = _rss_mb()
    started = time.perf_counter()
    counts: dict[str, int] = {}
    async for outcome in registrar.run(source):
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return {
        "mode": mode,
        "rows": rows,
        "statuses": counts,
        "resumed": registrar.report.resumed,
        "calls": registrar.report.calls,
        "seconds": time.perf_counter() - started,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": _rss_mb(),
    }


def run_all(rows: int) -> list[dict[str, Any]]:
    """Fresh, resume of it, one person, check_existing off: one child process each."""
    results = []
    with tempfile.TemporaryDirectory() as folder:
        shared = str(Path(folder) / "run.ledger")
        for mode in MODES:
            ledger = shared if mode in ("fresh", "resume") else str(Path(folder) / f"{mode}.db")
            args = ("--child", mode, "--rows", str(rows), "--ledger", ledger)
            # A million rows through the whole client path take about 11 minutes (1,500
            # rows/s on 2 shared cores, measured at 100,000).
            results.append(child("ledger_resume", *args, timeout=LEDGER_CHILD_TIMEOUT))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--ledger", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = asyncio.run(measure(args.child, args.rows, args.ledger))
        result["ledger_mb"] = os.path.getsize(args.ledger) / 2**20
        print(json.dumps(result))
        return
    for r in run_all(args.rows):
        print(
            f"{r['mode']:>18} {r['rows']:>10,} rows {r['seconds']:>7.1f} s "
            f"peak {r['peak_rss_mb']:>6.1f} MB  ledger {r['ledger_mb']:>6.1f} MB  {r['statuses']}"
        )


if __name__ == "__main__":
    main()

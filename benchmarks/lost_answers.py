"""Wall time of a registration whose answers get lost: one run of the registrar.

The emulator (another process) loses a share of the RegisterCustomFace answers: half of
them after the face was stored (``--commit-timeout-rate``: the connection hangs until the
client's timeout), half before (``--drop-rate``: closed, nothing stored). The registrar
runs with every default (settle period, retry budget, listings) and a ledger, as
``mts-faces register`` does.

    python -m benchmarks.lost_answers --url URL --persons 600 [--faces-per-person 10]

The key pair comes from ALIBABA_CLOUD_ACCESS_KEY_ID / _SECRET; prints one JSON line with the
wall time, the outcome counts and the calls made (registrations and listings).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mts_faces import MtsFaceClient
from mts_faces.manifest import FaceRow
from mts_faces.registrar import Registrar


async def measure(url: str, persons: int, per_person: int, qps: float) -> dict[str, Any]:
    """Register ``persons`` × ``per_person`` faces; wall time from start to the report."""
    statuses: Counter[str] = Counter()
    finished: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mts-bench-ledger-") as scratch:
        async with MtsFaceClient(
            endpoint=url,
            access_key_id=os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"],
            access_key_secret=os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"],
            qps=qps,
        ) as client:
            registrar = Registrar(client, ledger=Path(scratch) / "ledger.db", collect_faces=False)
            rows = (
                FaceRow("bench", f"person-{p:05d}", f"https://img.example/{p}/{f}.jpg", row=n)
                for n, (p, f) in enumerate(
                    ((p, f) for p in range(persons) for f in range(per_person)), 1
                )
            )
            started = time.perf_counter()
            async for outcome in registrar.run(rows):
                statuses[outcome.status] += 1
                finished.append(time.perf_counter() - started)
            wall = time.perf_counter() - started
            report = registrar.report
    return {
        "rows": persons * per_person,
        "wall": wall,
        "last_outcome": finished[-1] if finished else 0.0,
        "statuses": dict(statuses),
        "ambiguous": report.ambiguous,
        "reconciled": report.reconciled,
        "repaired": len(report.repairs),
        "calls": report.calls,
        # Outcomes finished per second, for the "where did the time go" question.
        "per_second": _per_second(finished),
    }


def _per_second(times: list[float]) -> list[int]:
    counts: list[int] = []
    for t in times:
        second = int(t)
        while len(counts) <= second:
            counts.append(0)
        counts[second] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--persons", type=int, default=600)
    parser.add_argument("--faces-per-person", type=int, default=10)
    parser.add_argument("--qps", type=float, default=100.0)
    args = parser.parse_args()
    result = asyncio.run(measure(args.url, args.persons, args.faces_per_person, args.qps))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

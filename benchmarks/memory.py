"""Peak RSS of the registrar streaming N generated rows (issue: memory stays flat).

Each size runs in a fresh subprocess (so peak RSS is its own) with the real client and
signer over an in-process transport that answers at once: the registrar's memory, not a
server's, is what is measured. The rate limiter is a no-op: the real one keeps the start
times of the last second's calls, a few hundred at a real quota but a million at the
unbounded rate this run goes at, which would measure the benchmark, not the registrar.

    python -m benchmarks.memory                 # 100,000 and 1,000,000 rows
    python -m benchmarks.memory --rows 100000   # one size
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from mts_faces import MtsFaceClient
from mts_faces.manifest import FaceRow
from mts_faces.registrar import Registrar

EMPTY_LISTING = json.dumps({"RequestId": "r", "Categories": {"Category": []}}).encode()
SIZES = (100_000, 1_000_000)


class InstantTransport(httpx.AsyncBaseTransport):
    """Answers every call at once: a FaceId for a registration, an empty library for a list."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("x-acs-action") == "ListCustomPersons":
            body = EMPTY_LISTING
        else:
            body = b'{"RequestId":"r","FaceId":"%s"}' % uuid.uuid4().hex.encode()
        return httpx.Response(200, content=body)


class NoLimit:
    """A limiter that never waits and keeps nothing."""

    async def acquire(self) -> None:
        pass

    def on_success(self) -> None:
        pass

    def on_throttled(self) -> None:
        pass


def generate(rows: int) -> Iterator[FaceRow]:
    """``rows`` rows, ten faces per person, read one at a time as from a manifest."""
    for i in range(rows):
        person, face = divmod(i, 10)
        yield FaceRow(
            "bench", f"person-{person:07d}", f"https://img.example/{person}/{face}.jpg", row=i + 1
        )


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


async def measure(rows: int) -> dict[str, Any]:
    """Stream ``rows`` rows through the registrar; peak RSS before and after."""
    client = MtsFaceClient(
        access_key_id="bench",
        access_key_secret="bench-secret",
        endpoint="http://127.0.0.1:9",
        limiter=NoLimit(),
        transport=InstantTransport(),
    )
    registrar = Registrar(client, concurrency=64, collect_faces=False)
    baseline = _rss_mb()
    started = time.perf_counter()
    registered = 0
    async for outcome in registrar.run(generate(rows)):
        registered += outcome.status == "registered"
    elapsed = time.perf_counter() - started
    return {
        "rows": rows,
        "registered": registered,
        "seconds": elapsed,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": _rss_mb(),
    }


def run_sizes(sizes: tuple[int, ...] = SIZES) -> list[dict[str, Any]]:
    """Each size in its own fresh interpreter; one result per size."""
    results = []
    for size in sizes:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", "--child", "--rows", str(size)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, action="append", help="rows (repeatable)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = tuple(args.rows or SIZES)
    if args.child:
        print(json.dumps(asyncio.run(measure(sizes[0]))))
        return
    results = run_sizes(sizes)
    print(f"{'rows':>10} {'registered':>10} {'seconds':>8} {'rows/s':>8} {'peak RSS MB':>12}")
    for r in results:
        print(
            f"{r['rows']:>10,} {r['registered']:>10,} {r['seconds']:>8.1f} "
            f"{r['rows'] / r['seconds']:>8,.0f} {r['peak_rss_mb']:>12.1f}"
        )
    if len(results) >= 2:
        growth = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"] - 1
        print(f"growth {results[0]['rows']:,} -> {results[-1]['rows']:,} rows: {growth:+.1%}")


if __name__ == "__main__":
    main()

"""One account quota, one process and then several sharing it through Redis.

Starts an emulator with a strict sliding window (qps 100, 50 ± 20 ms latency) and runs:

1. one process registering faces through a client with the default in-process limiter;
2. ``--processes`` (4) processes, each a client registering faces through one
   :class:`RedisWindowLimiter` key, on a ``redis-server`` this script starts on an ephemeral
   loopback port (or ``--redis-url``).

For each it prints achieved calls/s (faces registered ÷ wall time from the common start to
the last answer), throttled calls and the most calls that arrived in any sliding second, all
counted by the emulator, and the grant-to-arrival spread: with grants and arrivals each sorted
and matched by rank, the largest ``delay[i] - delay[i + qps]``. The limiter's window exceeds
one second by its margin; arrivals stay within the quota as long as this spread stays under
that margin.

    python -m benchmarks.shared_quota [--json] [--calls 4000] [--calls-per-process 1000]

The emulator runs in a thread of this process (which does nothing else while the clients
run), so its clock can record every arrival; each client is a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mts_faces import Grant, MtsFaceClient, QuotaLimiter, RedisWindowLimiter, WindowLimiter
from mts_faces._limiter import DEFAULT_MARGIN
from mts_faces.emulator import Emulator, EmulatorConfig

START_DELAY = 2.0  # seconds for the client processes to import and connect before the start
WORKER_MODULE = "benchmarks.shared_quota"


class ArrivalClock:
    """The emulator's clock: monotonic time, noting each reading (one per request)."""

    def __init__(self) -> None:
        self.readings: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        now = time.monotonic()
        with self._lock:
            self.readings.append(now)
        return now


class RecordingLimiter(QuotaLimiter):
    """Wraps a limiter and notes when each slot was granted (CLOCK_MONOTONIC, system-wide).

    The scope, lane and grants pass through, so the limiter learns as it would in a client.
    """

    def __init__(self, inner: QuotaLimiter) -> None:
        self.inner = inner
        self.grants: list[float] = []
        self.throttled: list[float] = []

    async def acquire(self, **scope: Any) -> Grant:
        grant = await self.inner.acquire(**scope)
        self.grants.append(time.monotonic())
        return grant

    def on_success(self, grant: Grant | None = None) -> None:
        self.inner.on_success(grant)

    def on_throttled(self, grant: Grant | None = None) -> None:
        self.throttled.append(time.monotonic())
        self.inner.on_throttled(grant)


# --- one client process ------------------------------------------------------------------------


async def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Register ``args.calls`` faces from ``args.start_at`` on; report times and outcomes."""
    inner: QuotaLimiter
    if args.redis_url:
        inner = RedisWindowLimiter.from_url(
            args.redis_url, key=args.key, qps=args.qps, margin=args.margin
        )
    else:
        inner = WindowLimiter(args.qps, margin=args.margin)
    limiter = RecordingLimiter(inner)
    failures: dict[str, int] = {}
    async with MtsFaceClient(
        endpoint=args.url,
        access_key_id=os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"],
        access_key_secret=os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"],
        qps=args.qps,
        limiter=limiter,
    ) as client:

        async def register(i: int) -> None:
            try:
                await client.register_custom_face(
                    "bench", f"w{args.worker}-p{i // 10}", f"https://example.com/{i}.jpg"
                )
            except Exception as exc:  # counted and reported, the run goes on
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1

        await asyncio.sleep(max(0.0, args.start_at - time.monotonic()))
        await asyncio.gather(*(register(i) for i in range(args.calls)))
        end = time.monotonic()
        attempts = client.attempts
    if isinstance(inner, RedisWindowLimiter):
        await inner.aclose()
    return {
        "worker": args.worker,
        "end": end,
        "attempts": attempts,
        "failures": failures,
        "grants": limiter.grants,
        "throttled_at": limiter.throttled,
        "final_rate": getattr(inner, "current_rate", None),
        "final_margin": getattr(inner, "current_margin", None),
    }


# --- the coordinator ---------------------------------------------------------------------------


def max_in_any_second(times: Sequence[float], window: float = 1.0) -> int:
    """Most events in any half-open second ``(t - 1, t]``, as the emulator counts them."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def grant_to_arrival(
    grants: Sequence[float], arrivals: Sequence[float], qps: int
) -> dict[str, Any]:
    """Rank-matched delays, and the spread that decides whether the margin is enough."""
    g, a = sorted(grants), sorted(arrivals)
    n = min(len(g), len(a))
    if n == 0:
        return {}
    delays = sorted(a[i] - g[i] for i in range(n))
    ranked = [a[i] - g[i] for i in range(n)]
    spread = max((ranked[i] - ranked[i + qps] for i in range(n - qps)), default=0.0)
    return {
        "delay_ms_p50": round(delays[n // 2] * 1000, 3),
        "delay_ms_p99": round(delays[min(n - 1, n * 99 // 100)] * 1000, 3),
        "delay_ms_max": round(delays[-1] * 1000, 3),
        "spread_ms": round(spread * 1000, 3),
    }


def start_workers(
    args: argparse.Namespace, url: str, key: Any, count: int, calls: int, redis_url: str | None
) -> list[dict[str, Any]]:
    """Run ``count`` client processes to completion; their JSON reports."""
    env = {
        **os.environ,
        "ALIBABA_CLOUD_ACCESS_KEY_ID": key.access_key_id,
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": key.access_key_secret,
    }
    start_at = time.monotonic() + START_DELAY
    quota_key = f"mts-faces-bench-{os.getpid()}-{time.time_ns()}"
    with tempfile.TemporaryDirectory(prefix="mts-shared-") as tmp:
        procs = []
        for worker in range(count):
            out = Path(tmp) / f"worker{worker}.json"
            command = [
                sys.executable, "-m", WORKER_MODULE, "--worker", str(worker),
                "--url", url, "--qps", str(args.qps), "--margin", str(args.margin),
                "--calls", str(calls), "--start-at", repr(start_at), "--out", str(out),
                "--key", quota_key,
            ]  # fmt: skip
            if redis_url:
                command += ["--redis-url", redis_url]
            procs.append((subprocess.Popen(command, env=env), out))
        reports = []
        for proc, out in procs:
            if proc.wait(timeout=600) != 0:
                raise RuntimeError(f"a client process exited with {proc.returncode}")
            reports.append(json.loads(out.read_text()))
    for report in reports:
        report["start"] = start_at
    return reports


def run_phase(
    args: argparse.Namespace, label: str, count: int, calls: int, redis_url: str | None
) -> dict[str, Any]:
    """One emulator, ``count`` client processes, the figures the issue asks for."""
    clock = ArrivalClock()
    config = EmulatorConfig(qps=args.qps, latency=args.latency, jitter=args.jitter)
    with Emulator.in_thread(config, clock=clock) as emulator:
        reports = start_workers(args, emulator.url, emulator.key, count, calls, redis_url)
        stats = emulator.stats
    start = reports[0]["start"]
    wall = max(r["end"] for r in reports) - start
    arrivals = [t for t in clock.readings if t >= start - 0.5]
    grants = [t for r in reports for t in r["grants"]]
    result = {
        "phase": label,
        "processes": count,
        "qps": args.qps,
        "margin_s": args.margin,
        "calls": stats.accepted,
        "wall_s": round(wall, 3),
        "calls_per_second": round(stats.accepted / wall, 2),
        "fraction_of_qps": round(stats.accepted / wall / args.qps, 4),
        "sustained_calls_per_second": _sustained(arrivals),
        "throttled": stats.throttled,
        "max_window": stats.max_window_arrivals,
        "max_window_accepted": stats.max_window_accepted,
        "max_window_grants": max_in_any_second(grants),
        "attempts": sum(r["attempts"] for r in reports),
        "failures": _merge(r["failures"] for r in reports),
        "throttled_at_s": sorted(round(t - start, 3) for r in reports for t in r["throttled_at"]),
        "final_rates": [r.get("final_rate") for r in reports],
        "final_margins": [r.get("final_margin") for r in reports],
        **grant_to_arrival(grants, arrivals, int(args.qps)),
    }
    return result


def _sustained(arrivals: Sequence[float]) -> float | None:
    """Calls per second from the first arrival to the last: the rate without the run's ends."""
    if len(arrivals) < 2:
        return None
    return round((len(arrivals) - 1) / (max(arrivals) - min(arrivals)), 2)


def _merge(counts: Iterator[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in counts:
        for name, n in part.items():
            total[name] = total.get(name, 0) + n
    return total


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """The given Redis URL, or a throwaway ``redis-server`` on an ephemeral loopback port."""
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("no redis-server on PATH: install it or pass --redis-url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def describe(result: dict[str, Any]) -> str:
    """One human-readable line per phase."""
    return (
        f"{result['phase']}: {result['calls']} calls in {result['wall_s']:.2f} s = "
        f"{result['calls_per_second']:.2f} calls/s ({result['fraction_of_qps']:.2%} of qps "
        f"{result['qps']:g}; {result['sustained_calls_per_second']} calls/s from the first "
        f"arrival to the last); throttled {result['throttled']}; max {result['max_window']} "
        f"arrivals in any 1 s (grants: {result['max_window_grants']}); grant-to-arrival "
        f"p50 {result.get('delay_ms_p50')} ms, p99 {result.get('delay_ms_p99')} ms, "
        f"max {result.get('delay_ms_max')} ms, spread {result.get('spread_ms')} ms "
        f"(margin {result['margin_s'] * 1000:g} ms)"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qps", type=float, default=100.0)
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--jitter", type=float, default=0.02)
    # 4,000 calls (40 s) per phase: the fixed costs of a run (the last answer's latency, the
    # first second's warm-up) stay under 0.5% of its wall time.
    parser.add_argument("--calls", type=int, default=4000, help="faces, one-process phase")
    parser.add_argument("--calls-per-process", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--redis-url", default=None, help="default: start a redis-server")
    parser.add_argument("--only", choices=("local", "redis"), help="run one phase only")
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    # Internal: one client process.
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        report = asyncio.run(run_worker(args))
        Path(args.out).write_text(json.dumps(report))
        return 0
    results = []
    if args.only in (None, "local"):
        results.append(run_phase(args, "1 process, in-process limiter", 1, args.calls, None))
        print(describe(results[-1]), flush=True)
    if args.only in (None, "redis"):
        with redis_server(args.redis_url) as url:
            label = f"{args.processes} processes, Redis limiter"
            results.append(run_phase(args, label, args.processes, args.calls_per_process, url))
        print(describe(results[-1]), flush=True)
    if args.json:
        last = results[-1]
        summary = {key: last[key] for key in ("processes", "qps", "calls_per_second")}
        summary |= {"throttled": last["throttled"], "max_window": last["max_window"]}
        print(json.dumps({**summary, "phases": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

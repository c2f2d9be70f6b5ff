"""Row 11: 4 ``mts-faces register --shard K/4 --redis URL`` processes (the CLI, as a user runs
it) sharing one quota through a ``redis-server``, against one emulator at that quota.

    python -m benchmarks.shard_cli --rows 3000 --qps 100 [--json]

Prints the quota use (registrations per second over the run / quota, process start included),
throttled calls and the most calls one (account, action) quota of the emulator accepted in
any one-second window (and all actions together).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mts_faces.emulator import Emulator, EmulatorConfig

from .shared_quota import redis_server

SHARDS = 4


def run(rows: int, qps: float, latency: float) -> dict[str, Any]:
    """Register ``rows`` faces (10 a person) with 4 shard processes; the emulator's figures."""
    with tempfile.TemporaryDirectory() as folder, redis_server(None) as url:
        manifest = Path(folder) / "faces.csv"
        lines = ["category_id,person_id,image_url"]
        lines += [f"bench,p{i // 10:06d},https://img.example.com/{i}.jpg" for i in range(rows)]
        manifest.write_text("\n".join(lines) + "\n")
        config = EmulatorConfig(qps=qps, latency=latency, jitter=latency / 2, seed=13)
        with Emulator.in_thread(config) as emu:
            env = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}
            env["ALIBABA_CLOUD_ACCESS_KEY_ID"] = emu.key.access_key_id
            env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = emu.key.access_key_secret
            started = time.monotonic()
            processes = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "mts_faces.cli",
                        "register",
                        str(manifest),
                        "--shard",
                        f"{k}/{SHARDS}",
                        "--redis",
                        url,
                        "--endpoint",
                        emu.url,
                        "--qps",
                        f"{qps:g}",
                        "--no-progress",
                        "--output",
                        os.devnull,
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for k in range(1, SHARDS + 1)
            ]
            errors = [p.communicate(timeout=600)[1] for p in processes]
            elapsed = time.monotonic() - started
            if any(p.returncode for p in processes):
                raise SystemExit(f"a shard failed: {[e[-300:] for e in errors]}")
            stats = emu.stats
    registered = stats.requests_by_action.get("RegisterCustomFace", 0) - stats.throttled
    return {
        "processes": SHARDS,
        "rows": rows,
        "qps": qps,
        "seconds": elapsed,
        "registrations_per_second": registered / elapsed,
        "quota_use": registered / elapsed / qps,
        "accepted": stats.accepted,
        "throttled": stats.throttled,
        "max_window": stats.max_window_quota,
        "max_window_all_actions": stats.max_window_accepted,
        "faces_stored": stats.faces_stored,
    }


def main() -> None:
    """Run and print the result (``--json``: as one JSON line)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shard_cli", description=__doc__)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--qps", type=float, default=100.0)
    parser.add_argument("--latency", type=float, default=0.03)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.rows, args.qps, args.latency)
    print(json.dumps(result) if args.json else result)


if __name__ == "__main__":
    main()

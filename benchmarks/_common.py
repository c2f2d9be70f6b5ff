"""What the sections share: the sizes of a run and the way a measurement child is run."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import attrs

CHILD_TIMEOUT = 300.0


@attrs.frozen
class Sizes:
    """How big each benchmark is: the issue's sizes unless ``--quick``."""

    faces: int = 3000
    qps: float = 100.0
    latency: float = 0.03
    jitter: float = 0.04  # 30 ms + uniform 0..40 ms: 50 ± 20 ms
    calls: int = 3000
    official_tls_calls: int = 200  # about 25 ms of CPU each
    official_lean_calls: int = 600  # about 2.5 ms each
    repeats: int = 3
    concurrencies: tuple[int, ...] = (8, 64)
    memory_rows: tuple[int, ...] = (100_000, 1_000_000)


QUICK = Sizes(
    faces=500,
    calls=500,
    official_tls_calls=50,
    official_lean_calls=100,
    repeats=1,
    concurrencies=(8,),
    memory_rows=(20_000, 100_000),
)


def child(
    module: str, *args: str, env: dict[str, str] | None = None, timeout: float = CHILD_TIMEOUT
) -> dict[str, Any]:
    """Run ``python -m benchmarks.<module> ARGS``; its last stdout line is a JSON object."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{module} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def log(message: str) -> None:
    """Progress on standard error, so standard output holds only the table."""
    print(message, file=sys.stderr, flush=True)

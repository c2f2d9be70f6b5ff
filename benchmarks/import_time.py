"""Import cost: wall time of ``import mts_faces`` in a fresh interpreter, and what it loads.

    python -m benchmarks.import_time --runs 7

Each run is a new ``python -c`` process (nothing cached in memory but the OS's file cache);
the time is measured inside it around the import alone. Prints one JSON line: the median and
range in milliseconds, and which heavy modules the import pulled in (none is the target:
the HTTP stacks load when a client is built, the emulator when it is used).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

HEAVY = ("httpx", "httpcore", "anyio", "aiohttp", "yarl", "redis", "mts_faces.emulator")
PROBE = f"""
import json, sys, time
started = time.perf_counter()
import mts_faces
elapsed = time.perf_counter() - started
print(json.dumps({{"ms": elapsed * 1000, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def measure(runs: int) -> dict[str, object]:
    """``runs`` fresh imports; the median, the range and the modules loaded."""
    samples = []
    loaded: set[str] = set()
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
        )
        result = json.loads(done.stdout)
        samples.append(result["ms"])
        loaded.update(result["loaded"])
    return {
        "runs": runs,
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "max_ms": max(samples),
        "loaded": sorted(loaded),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    print(json.dumps(measure(parser.parse_args().runs)))


if __name__ == "__main__":
    main()

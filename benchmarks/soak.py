"""The full soak: 3,000 rows against the emulator with injected faults and a second client on
the same AccessKey, then the store is checked (0 duplicates, 0 lost, every row accounted for).

    python -m benchmarks.soak                  # the issue's run: 3,000 rows, quota 100/s
    python -m benchmarks.soak --rows 600 --qps 400 --rival-qps 200 --hang 0.05
    python -m benchmarks.soak --fault-lists    # faults on the verifying lists too

Prints the figures as JSON; the exit status is 1 when any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

# The harness lives with the tests (tests/test_soak.py runs it too); run from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.soak_harness import SoakSettings, run_soak


def main() -> int:
    defaults = SoakSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=defaults.rows)
    parser.add_argument("--qps", type=float, default=defaults.qps)
    parser.add_argument("--rival-qps", type=float, default=defaults.rival_qps)
    parser.add_argument("--latency", type=float, default=defaults.latency)
    parser.add_argument("--hang", type=float, default=defaults.hang)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--fault-lists", action="store_true", help="inject faults into ListCustomPersons too"
    )
    args = parser.parse_args()
    settings = SoakSettings(
        rows=args.rows,
        qps=args.qps,
        rival_qps=args.rival_qps,
        latency=args.latency,
        jitter=args.latency,
        hang=args.hang,
        client_timeout=min(defaults.client_timeout, max(0.5, args.hang * 2)),
        seed=args.seed,
        fault_actions=defaults.fault_actions
        | ({"ListCustomPersons"} if args.fault_lists else set()),
    )
    with tempfile.TemporaryDirectory() as folder:
        result = asyncio.run(run_soak(settings, Path(folder) / "soak.ledger", log=print))
    figures = {"settings": {k: v for k, v in vars(args).items()}, **result.to_dict()}
    print(json.dumps(figures, indent=2))
    ok = (
        not result.unaccounted
        and result.duplicates == result.lost == 0
        and result.orphans <= result.in_doubt
        and result.final_missing == result.final_extra == result.final_duplicates == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Every benchmark against the emulator on loopback: one table, also written to RESULTS.md.

    python -m benchmarks            # the full run (about 13 minutes on 2 cores)
    python -m benchmarks --quick    # smaller sizes, a smoke test; RESULTS.md is left alone
    python -m benchmarks --only cost --only memory

Each measurement runs in its own child process and each emulator in another, so no two of
them share an event loop or a CPU count.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from ._common import QUICK, Sizes, log
from ._plots import PLOTS_DIR, write_plots
from ._report import Row, machine, render, results_markdown
from ._rows_cost import cost_rows
from ._rows_emulator import emulator_rows
from ._rows_import import import_rows
from ._rows_ledger import ledger_rows
from ._rows_memory import memory_rows
from ._rows_network import network_rows
from ._rows_quota import quota_rows
from ._rows_settle import settle_rows
from ._rows_shards import shard_rows
from ._rows_telemetry import telemetry_rows
from .shared import shared_quota_row

RESULTS = Path(__file__).with_name("RESULTS.md")


def shared_rows(sizes: Sizes, raw: list[dict[str, Any]]) -> list[Row]:
    """Four processes sharing the Redis limiter (``benchmarks/shared_quota.py``), if present."""
    return [shared_quota_row(sizes.qps, raw)]


SECTIONS: dict[str, Callable[[Sizes, list[dict[str, Any]]], list[Row]]] = {
    "quota": quota_rows,
    "cost": cost_rows,
    "memory": memory_rows,
    "shared": shared_rows,
    "network": network_rows,
    "import": import_rows,
    "emulator": emulator_rows,
    "ledger": ledger_rows,
    "telemetry": telemetry_rows,
    "shards": shard_rows,
    "settle": settle_rows,
}


def main(argv: list[str] | None = None) -> None:
    """Run the selected benchmarks, print the table, write RESULTS.md (unless ``--quick``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", action="append", choices=list(SECTIONS), help="repeatable")
    parser.add_argument("--quick", action="store_true", help="small sizes; no RESULTS.md")
    parser.add_argument("--output", type=Path, help=f"where to write (default {RESULTS})")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    raw: list[dict[str, Any]] = []
    rows: list[Row] = []
    for section in args.only or SECTIONS:
        rows += SECTIONS[section](sizes, raw)
    info = machine()
    print(render(rows, info))
    output = args.output or (None if args.quick else RESULTS)
    if output is not None:
        command = "python -m benchmarks" + "".join(f" --only {s}" for s in args.only or ())
        plots = write_plots(raw, output.parent / PLOTS_DIR)
        links = [str(p.relative_to(output.parent)) for p in plots]
        output.write_text(results_markdown(rows, info, command, attrs.asdict(sizes), raw, links))
        log(f"written to {output}")

"""Emulator throughput: signed RegisterCustomFace requests per second the emulator serves over
16 keep-alive connections (``emulator_speed.py`` measures, server and load in two processes)."""

from __future__ import annotations

from typing import Any

from ._common import Sizes, child, log
from ._report import Row

TARGET_RPS = 2_000


def emulator_rows(sizes: Sizes, raw: list[dict[str, Any]]) -> list[Row]:
    """Requests per second of the shipped emulator (aiohttp.web), median of the repeats."""
    requests = max(2_000, sizes.calls * 5)
    log(f"emulator: {requests:,} requests x {sizes.repeats} ...")
    try:
        result = child(
            "emulator_speed", "--json", "--requests", str(requests), "--repeat", str(sizes.repeats)
        )
    except Exception as exc:
        return [Row("emulator", "raw HTTP/1.1 x16", f"error: {exc}", "", "not run")]
    raw.append({"benchmark": "emulator", **result})
    cpu = result["median_cpu_us"]
    measured = (
        f"{result['median_rps']:,.0f} req/s (median of {len(result['runs'])}, "
        f"best {result['best_rps']:,.0f})"
        + (f"; server CPU {cpu:.0f} us/request" if cpu is not None else "")
    )
    ok = result["all_ok"] and result["median_rps"] >= TARGET_RPS
    return [
        Row(
            "emulator",
            "raw HTTP/1.1, 16 keep-alive",
            measured,
            f">= {TARGET_RPS:,} req/s, all 200",
            "pass" if ok else "MISS",
        )
    ]

"""Row 11: 4 shard processes through the CLI sharing one quota in Redis (``shard_cli.py``)."""

from __future__ import annotations

import shutil
from typing import Any

from ._common import Sizes, child, log
from ._report import Row

LABEL = "register --shard K/4 --redis (CLI)"


def shard_rows(sizes: Sizes, raw: list[dict[str, Any]]) -> list[Row]:
    """Quota use, throttled calls and the busiest second of 4 shard processes."""
    if shutil.which("redis-server") is None:
        return [Row("11. shards", LABEL, "not run: no redis-server on PATH", "", "not run")]
    log(f"shards: 4 CLI processes, {sizes.faces:,} rows at {sizes.qps:g} calls/s ...")
    try:
        r = child(
            "shard_cli", "--rows", str(sizes.faces), "--qps", f"{sizes.qps:g}",
            "--latency", f"{sizes.latency:g}", "--json",
        )  # fmt: skip
    except Exception as exc:
        return [Row("11. shards", LABEL, f"error: {exc}"[:300], "", "not run")]
    raw.append({"benchmark": "shards", **r})
    measured = (
        f"{r['rows']:,} rows in {r['seconds']:.1f} s (process start included): "
        f"{r['registrations_per_second']:.1f} faces/s = {r['quota_use']:.1%} of {r['qps']:g} "
        f"qps; throttled {r['throttled']}; most in any second {r['max_window']} "
        f"(all actions {r['max_window_all_actions']}); "
        f"stored {r['faces_stored']:,}"
    )
    ok = r["max_window"] <= r["qps"] and r["faces_stored"] == r["rows"]
    target = "never over the quota in any second; every row stored once"
    return [Row("11. shards", LABEL, measured, target, "pass" if ok else "MISS")]

"""Row 3: peak RSS of the registrar streaming many rows (``memory.py`` measures)."""

from __future__ import annotations

from typing import Any

from ._common import Sizes, log
from ._report import Row
from .memory import run_sizes


def memory_rows(sizes: Sizes, raw: list[dict[str, Any]]) -> list[Row]:
    """Peak RSS of the registrar streaming the smaller and the larger row count."""
    log(f"memory: {', '.join(f'{n:,}' for n in sizes.memory_rows)} rows ...")
    try:
        results = run_sizes(sizes.memory_rows)
    except Exception as exc:
        return [Row("3. memory", "Registrar streaming", f"error: {exc}", "", "not run")]
    raw += [{"benchmark": "memory", **r} for r in results]
    small, large = results[0], results[-1]
    growth = large["peak_rss_mb"] / small["peak_rss_mb"] - 1
    measured = "; ".join(
        f"{r['rows']:,} rows: peak {r['peak_rss_mb']:.1f} MB "
        f"({r['rows'] / r['seconds']:,.0f} rows/s)"
        for r in results
    )
    measured += (
        f"; growth {growth:+.1%} (interpreter and imports: {small['baseline_rss_mb']:.0f} MB)"
    )
    ok = growth <= 0.10 and large["peak_rss_mb"] < 100
    target = "larger within +10% of smaller, < 100 MB"
    return [Row("3. memory", "Registrar streaming", measured, target, "pass" if ok else "MISS")]

"""Row 6: the SQLite ledger: resume of a large ledger, and flat memory whatever the rows'
shape (``ledger_resume.py`` measures)."""

from __future__ import annotations

from typing import Any

from ._common import Sizes, log
from ._report import Row
from .ledger_resume import run_all


def ledger_rows(sizes: Sizes, raw: list[dict[str, Any]]) -> list[Row]:
    """Peak RSS: a fresh run with a ledger, its resume, one person, check_existing off."""
    rows = sizes.memory_rows[-1]
    log(f"ledger: fresh, resume, one person, check_existing off; {rows:,} rows ...")
    try:
        results = {r["mode"]: r for r in run_all(rows)}
    except Exception as exc:
        return [Row("6. ledger", "Resume from the ledger", f"error: {exc}", "", "not run")]
    raw += [{"benchmark": "ledger", **r} for r in results.values()]
    fresh, resume = results["fresh"], results["resume"]
    growth = resume["peak_rss_mb"] / fresh["peak_rss_mb"] - 1
    resumed_all = resume["resumed"] == rows and resume["calls"] == 0
    measured = (
        f"{rows:,} rows: fresh run peak {fresh['peak_rss_mb']:.1f} MB "
        f"({rows / fresh['seconds']:,.0f} rows/s, ledger {fresh['ledger_mb']:.0f} MB); "
        f"resume peak {resume['peak_rss_mb']:.1f} MB ({growth:+.1%}, "
        f"{rows / resume['seconds']:,.0f} rows/s, {resume['calls']} calls)"
    )
    ok = growth <= 0.10 and resume["peak_rss_mb"] < 100 and resumed_all
    out = [
        Row(
            "6. ledger",
            "Resume of a ledger",
            measured,
            "resume within +10% of a fresh run, < 100 MB",
            "pass" if ok else "MISS",
        )
    ]
    shapes = []
    worst = 0.0
    for mode, label in (("one_person", "one person"), ("no_check_existing", "check_existing off")):
        r = results[mode]
        worst = max(worst, r["peak_rss_mb"])
        shapes.append(f"{label}: peak {r['peak_rss_mb']:.1f} MB ({r['seconds']:.0f} s)")
    flat = worst <= fresh["peak_rss_mb"] * 1.10 and worst < 100
    out.append(
        Row(
            "6. ledger",
            "Memory by shape",
            f"{rows:,} rows; " + "; ".join(shapes),
            "within +10% of the fresh run, < 100 MB",
            "pass" if flat else "MISS",
        )
    )
    return out

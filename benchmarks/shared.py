"""Row 4: processes sharing one quota through the Redis limiter, via ``shared_quota.py``.

That script belongs to the limiter's work; this module only runs it when it and a
``redis-server`` binary are there, and reads its results: the last line of its standard output
that is a JSON object (``processes``, ``qps``, ``calls_per_second``, ``throttled``,
``max_window``), else its last lines of text, shown as they are.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ._report import Row

SCRIPT = Path(__file__).with_name("shared_quota.py")
TIMEOUT = 240.0
LABEL = "4 processes, Redis limiter"


def shared_quota_row(qps: float, raw: list[dict[str, Any]]) -> Row:
    """Run the shared-quota benchmark, or say why it was not run."""
    if not SCRIPT.exists():
        return Row(
            "4. shared quota",
            LABEL,
            "not run: benchmarks/shared_quota.py is missing",
            "",
            "not run",
        )
    if shutil.which("redis-server") is None:
        return Row("4. shared quota", LABEL, "not run: no redis-server on PATH", "", "not run")
    print("shared quota: benchmarks/shared_quota.py ...", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.shared_quota", "--json"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return Row(
            "4. shared quota", LABEL, f"not run: no result in {TIMEOUT:.0f} s", "", "not run"
        )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return Row(
            "4. shared quota", LABEL, f"not run: exit {done.returncode}: {reason}", "", "not run"
        )
    result = _last_json(done.stdout)
    if result is None:
        text = " / ".join(done.stdout.strip().splitlines()[-4:])[:500]
        return Row("4. shared quota", LABEL, text or "no output", "", "ref")
    raw.append({"benchmark": "shared_quota", **result})
    return _judged(result, qps)


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _judged(result: dict[str, Any], default_qps: float) -> Row:
    qps = float(result.get("qps", default_qps))
    rate = result.get("calls_per_second")
    throttled = result.get("throttled")
    busiest = result.get("max_window")
    parts = [f"{result.get('processes', '?')} processes"]
    if rate is not None:
        parts.append(f"{rate:,.1f} calls/s ({rate / qps:.4f} of qps)")
    parts.append(f"{throttled} throttled; max {busiest} calls in any 1 s")
    verdict = "ref"
    if rate is not None and throttled is not None and busiest is not None:
        ok = rate / qps >= 0.99 and throttled == 0 and busiest <= qps
        verdict = "pass" if ok else "MISS"
    target = "use ≥ 0.99, 0 throttled, ≤ qps in any 1 s"
    return Row("4. shared quota", LABEL, "; ".join(parts), target, verdict)

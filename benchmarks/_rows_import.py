"""Row 5: the cost of ``import mts_faces`` (``benchmarks/import_time.py``)."""

from __future__ import annotations

from typing import Any

from ._common import Sizes, child, log
from ._report import Row


def import_rows(sizes: Sizes, raw: list[dict[str, Any]]) -> list[Row]:
    """One row: median import time over fresh processes, and the heavy modules it loaded."""
    log("import: timing `import mts_faces` in fresh processes ...")
    runs = 3 if sizes.repeats == 1 else 9
    try:
        result = child("import_time", "--runs", str(runs))
    except Exception as exc:
        return [Row("5. import time", "import mts_faces", f"error: {exc}", "", "not run")]
    raw.append({"benchmark": "import_time", **result})
    loaded = ", ".join(result["loaded"]) or "none"
    measured = (
        f"{result['median_ms']:.0f} ms (median of {result['runs']} fresh processes, range "
        f"{result['min_ms']:.0f}–{result['max_ms']:.0f}); HTTP stack or emulator loaded: {loaded}"
    )
    verdict = "pass" if not result["loaded"] else "MISS"
    return [Row("5. import time", "import mts_faces", measured, "loads no HTTP stack", verdict)]

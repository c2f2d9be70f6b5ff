"""The results table: one row per measurement, printed and written as Markdown."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs

PACKAGES = ("mts-faces", "aiohttp", "httpx", "alibabacloud-mts20140618", "alibabacloud-tea-openapi")
HEADERS = ("benchmark", "client", "measured", "target", "verdict")


@attrs.frozen
class Row:
    """One line of the table; ``verdict`` is pass, MISS, ref (a comparison) or not run."""

    benchmark: str
    client: str
    measured: str
    target: str
    verdict: str


def machine() -> dict[str, str]:
    """What the numbers were measured on, and when."""
    info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": _memory(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
    }
    for package in PACKAGES:
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "not installed"
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            kib = int(meminfo.readline().split()[1])
        return f"{kib / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def _markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        cells = (row.benchmark, row.client, row.measured, row.target, row.verdict)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _machine_line(info: dict[str, str]) -> str:
    return (
        f"{info['date']}; {info['cpu']}, {info['cores']} cores, {info['memory']}; "
        f"{info['os']}; Python {info['python']}"
    )


def render(rows: list[Row], info: dict[str, str]) -> str:
    """The table as printed on the terminal (Markdown, readable as plain text)."""
    return f"{_machine_line(info)}\n\n{_markdown_table(rows)}\n"


def results_markdown(
    rows: list[Row],
    info: dict[str, str],
    command: str,
    sizes: dict[str, Any],
    raw: list[dict[str, Any]],
    plots: list[str] | None = None,
) -> str:
    """RESULTS.md: the table, the machine and date, what each figure means, the plots
    (paths relative to it), the raw data."""
    versions = ", ".join(f"{p} {info[p]}" for p in PACKAGES)
    figures = "".join(f"![{Path(p).stem}]({p})\n\n" for p in plots or ())
    if figures:
        figures = f"Plots (drawn from the raw measurements below):\n\n{figures}"

    raw_lines = "\n".join(json.dumps(r, sort_keys=True) for r in raw)
    return f"""# Benchmark results

Written by `{command}` (see `benchmarks/README.md`). Do not edit by hand: run it again.

- **When and where:** {_machine_line(info)}
- **Versions:** {versions}
- **Sizes:** {json.dumps(sizes)}

{_markdown_table(rows)}

How to read it:
- *quota use* = (faces registered ÷ qps) ÷ wall time; 1.0 is the whole quota turned into
  registrations. *wall ÷ ideal* is the same figure upside down, as the issue states it.
  *throttled* and *max calls in any 1 s* (every arrival, throttled or not, in any sliding
  second) are counted by the emulator, which enforces a strict 1-second window.
- *CPU/call* = this client process's user + system CPU seconds ÷ calls, after a warm-up;
  the emulator runs in another process with no quota and no latency. The clients take
  turns; the median of the rounds is shown, and the ratio compares medians with the
  official SDK's best variant.
- *peak RSS* = `ru_maxrss` of a fresh process streaming that many generated rows through
  the registrar over an in-process transport that answers at once.
- *ref* rows are the comparisons; only our rows are held to a target.

{figures}<details><summary>Raw measurements (JSON lines)</summary>

```
{raw_lines}
```
</details>
"""

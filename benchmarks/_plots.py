"""Plots of the benchmark run, as SVG files beside RESULTS.md (matplotlib, the 'report' extra).

* ``quota-rate.svg``: requests sent per second over time by each client of the quota
  benchmark (answered, throttled), against the quota line: the burst of a leaky bucket and
  its throttles are visible. Recorded by the client side (when each request was sent).

* ``jitter-sweep.svg``: the network-jitter rows: successful calls per second over time at
  each one-way jitter, ours beside the official SDK + aiolimiter (and, at 0 ms, our client
  on an aiolimiter bucket), with each run's throttled calls.

Each plot is drawn from the raw measurements (``raw``), so it matches the table's run.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ._common import log
from ._rows_quota import QUOTA_CLIENTS

PLOTS_DIR = "plots"


def write_plots(raw: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Write every plot the raw measurements allow into ``folder``; returns their paths."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("plots: matplotlib is not installed (pip install '.[report]'); no plots written")
        return []
    written = []
    quota = [r for r in raw if r.get("benchmark") == "quota" and r.get("timeline")]
    if quota:
        written.append(_save(_quota_figure(quota), folder / "quota-rate.svg"))
    jitter = [
        r
        for r in raw
        if r.get("benchmark") == "network"
        and r.get("per_second")
        and str(r.get("label", "")).endswith(" ms")
    ]
    if jitter:
        written.append(_save(_jitter_figure(jitter), folder / "jitter-sweep.svg"))
    return written


def _save(figure: Any, path: Path) -> Path:
    import matplotlib

    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "mts-faces"}):
        out = io.StringIO()
        figure.savefig(out, format="svg", metadata={"Date": None})
    path.write_text(out.getvalue(), encoding="utf-8")
    log(f"plot written to {path}")
    return path


def _quota_figure(runs: list[dict[str, Any]]) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 2.4 * len(runs) + 0.6), layout="constrained")
    axes_list = figure.subplots(len(runs), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    for axes, run in zip(axes_list, runs, strict=True):
        series = run["timeline"]
        width = float(series["width"])
        ok = [v / width for v in series["ok"]]
        throttled = [v / width for v in series["throttled"]]
        errors = [v / width for v in series["errors"]]
        edges = [i * width for i in range(len(ok) + 1)]
        # Stacked: the bars' height is every request sent in that second.
        stack = [
            (ok, "answered /s", "tab:blue"),
            (throttled, "throttled /s", "tab:red"),
            (errors, "other errors /s", "tab:orange"),
        ]
        bottom = [0.0] * len(ok)
        for values, name, color in stack:
            if any(values) or name == "throttled /s":
                axes.bar(
                    edges[:-1],
                    values,
                    width=width,
                    align="edge",
                    bottom=bottom,
                    color=color,
                    alpha=0.75,
                    label=name,
                )
                bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        axes.axhline(run["qps"], color="black", linestyle="--", linewidth=1, label="quota")
        total_throttled = sum(series["throttled"])
        label = QUOTA_CLIENTS.get(run["client"], run["client"])
        axes.set_title(f"{label}: {total_throttled:,} throttled", fontsize="medium")
        axes.set_ylabel("requests /s")
        axes.grid(True, alpha=0.3)
        axes.legend(loc="upper right", fontsize="small", ncols=4)
        axes.set_ylim(0, max(2.3 * run["qps"], max(bottom, default=0) * 1.15))
    axes_list[-1].set_xlabel("seconds since the first request (sent, 1 s buckets)")
    figure.suptitle(f"Quota benchmark: {runs[0]['faces']:,} registrations at {runs[0]['qps']:g}/s")
    return figure


def _jitter_figure(runs: list[dict[str, Any]]) -> Any:
    """One panel per jitter: each client's successful calls per second over time."""
    from matplotlib.figure import Figure

    by_jitter: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        client, jitter = str(run["label"]).rsplit(" ", 2)[:2]
        by_jitter.setdefault(int(jitter), []).append({**run, "client": client})
    jitters = sorted(by_jitter)
    figure = Figure(figsize=(9, 2.2 * len(jitters) + 0.6), layout="constrained")
    axes_list = figure.subplots(len(jitters), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    colors = {"ours": "tab:blue", "official": "tab:red", "aiolimiter": "tab:orange"}
    for axes, jitter in zip(axes_list, jitters, strict=True):
        for run in by_jitter[jitter]:
            counts = run["per_second"]
            edges = list(range(len(counts) + 1))
            throttled = run.get("emulator", {}).get("throttled", 0)
            client = run["client"]
            axes.stairs(
                counts,
                edges,
                color=colors.get(client, "tab:gray"),
                linewidth=1.5,
                label=f"{client}: {throttled:,} throttled",
            )
        qps = runs[0].get("qps", 100)
        axes.axhline(qps, color="black", linestyle="--", linewidth=1, label="quota")
        axes.set_title(f"one-way network jitter 0–{jitter} ms", fontsize="medium")
        axes.set_ylabel("succeeded /s")
        axes.grid(True, alpha=0.3)
        axes.legend(loc="lower center", fontsize="small", ncols=4)
        axes.set_ylim(0, qps * 1.3)
    axes_list[-1].set_xlabel("seconds since the first call")
    figure.suptitle("Jitter sweep: successful calls per second (client side)")
    return figure

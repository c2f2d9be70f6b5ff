"""The benchmark harness's plots are drawn from its raw measurements and linked."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from benchmarks._plots import write_plots
from benchmarks._report import results_markdown


def _quota_run(client: str, throttled: list[int]) -> dict[str, object]:
    ok = [100 - t // 2 for t in throttled]
    series = {"width": 1.0, "ok": ok, "throttled": throttled, "errors": [0] * len(ok)}
    return {"benchmark": "quota", "client": client, "faces": 500, "qps": 100.0, "timeline": series}


def test_plots_written_and_linked(tmp_path: Path) -> None:
    raw: list[dict[str, object]] = [
        _quota_run("ours", [0, 0, 0, 0, 0]),
        _quota_run("official", [99, 8, 3, 0, 0]),
        {"benchmark": "network", "label": "ours 10 ms", "per_second": [99, 100, 98]},
        {"benchmark": "network", "label": "official 10 ms", "per_second": [97, 95, 99]},
        {"benchmark": "network", "label": "rival", "per_second": [70, 70]},  # not a sweep run
    ]
    plots = write_plots(raw, tmp_path / "plots")
    assert [p.name for p in plots] == ["quota-rate.svg", "jitter-sweep.svg"]
    quota = plots[0].read_text(encoding="utf-8")
    assert ET.fromstring(quota).tag.endswith("svg")
    assert "official SDK + semaphore + AsyncLimiter, retries: 110 throttled" in quota
    jitter = plots[1].read_text(encoding="utf-8")
    assert "0–10 ms" in jitter and "official: 0 throttled" in jitter
    info = {k: "x" for k in ("date", "cpu", "cores", "memory", "os", "python")}
    info.update({p: "1" for p in ("mts-faces", "aiohttp", "httpx")})
    info.update({p: "1" for p in ("alibabacloud-mts20140618", "alibabacloud-tea-openapi")})
    links = [str(p.relative_to(tmp_path)) for p in plots]
    text = results_markdown([], info, "python -m benchmarks", {}, [], links)
    assert "![quota-rate](plots/quota-rate.svg)" in text
    assert "![jitter-sweep](plots/jitter-sweep.svg)" in text


def test_no_plot_without_timelines(tmp_path: Path) -> None:
    assert write_plots([{"benchmark": "quota", "client": "ours"}], tmp_path) == []

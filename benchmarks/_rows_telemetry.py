"""Row 9: what watching costs: CPU per call with no watcher, a run recorder as the attempt
hook, and the OpenTelemetry SDK (spans and metrics recorded); plus the bookkeeping behind
``client.stats`` alone, which every call pays.

The variants take turns against one emulator (http, the fast aiohttp backend, where any
overhead weighs most), ``repeats`` rounds each; the median is shown.
"""

from __future__ import annotations

import statistics
import timeit
from collections import defaultdict
from typing import Any

from mts_faces._operations import REGISTER_CUSTOM_FACE
from mts_faces._telemetry import Telemetry
from mts_faces.report import RunRecorder

from ._common import Sizes, child, log
from ._emulator import EmulatorProcess
from ._report import Row

VARIANTS = {
    "none": "no watcher (client.stats only)",
    "hook": "RunRecorder as on_attempt hook",
    "otel": "OpenTelemetry SDK providers",
}
CONCURRENCY = 8


def bookkeeping_us(hook: bool = False) -> float:
    """Microseconds per call of the stats bookkeeping alone (begin, sent, end), and of a
    :class:`RunRecorder` hook with it (``hook``): the end-to-end rows' noise hides both."""
    telemetry = Telemetry(hooks=[RunRecorder()] if hook else ())
    params = {"CategoryId": "c", "PersonId": "p", "ImageUrl": "https://x/1.jpg"}

    def one() -> None:
        trace = telemetry.begin(REGISTER_CUSTOM_FACE, params)
        trace.sent(0.0)
        trace.end(None)

    runs = timeit.repeat(one, number=20_000, repeat=5)
    return min(runs) / 20_000 * 1e6


def telemetry_rows(sizes: Sizes, raw: list[dict[str, Any]]) -> list[Row]:
    """CPU per call of each variant; the overhead is relative to ``none``."""
    samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with EmulatorProcess(qps=None) as emulator:
        for round_ in range(sizes.repeats):
            for variant in VARIANTS:
                log(f"telemetry: {variant}, round {round_ + 1}/{sizes.repeats} ...")
                args = ["--client", "ours", "--url", emulator.url, "--calls", str(sizes.calls)]
                args += ["--concurrency", str(CONCURRENCY), "--backend", "aiohttp"]
                args += ["--telemetry", variant]
                try:
                    result = child("client_cost", *args, env=emulator.env())
                except Exception as exc:
                    log(f"telemetry: {variant} failed: {exc}")
                    continue
                samples[variant].append(result)
                raw.append({"benchmark": "telemetry_cost", "variant": variant, **result})
    medians = {
        v: statistics.median(r["cpu_ms_per_call"] for r in runs) for v, runs in samples.items()
    }
    base = medians.get("none")
    rows = []
    for variant, label in VARIANTS.items():
        runs = samples.get(variant, [])
        if not runs:
            rows.append(Row("10. telemetry cost", label, "error: no run finished", "", "not run"))
            continue
        cpu = [r["cpu_ms_per_call"] for r in runs]
        measured = (
            f"{medians[variant]:.3f} ms CPU/call (median of {len(runs)}, range "
            f"{min(cpu):.3f}–{max(cpu):.3f}), {runs[0]['calls']:,} calls, aiohttp, "
            f"{CONCURRENCY} concurrent"
        )
        target, verdict = "", "ref"
        if variant != "none" and base:
            extra = medians[variant] / base - 1
            measured += f"; {extra:+.1%} vs no watcher"
            if variant == "hook":
                target = "≤ +5% CPU/call"
                verdict = "pass" if extra <= 0.05 else "MISS"
        rows.append(Row("10. telemetry cost", label, measured, target, verdict))
    micro = ((False, "client.stats bookkeeping alone"), (True, "... + RunRecorder hook"))
    for hook, label in micro:
        us = bookkeeping_us(hook)
        raw.append({"benchmark": "telemetry_bookkeeping", "hook": hook, "us_per_call": us})
        rows.append(Row("10. telemetry cost", f"{label} (timeit)", f"{us:.2f} µs/call", "", "ref"))
    return rows

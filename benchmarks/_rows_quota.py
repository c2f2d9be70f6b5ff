"""Row 1: quota use of our registrar, the official SDK driven carefully, and a naive script."""

from __future__ import annotations

from typing import Any

from ._common import Sizes, child, log
from ._emulator import EmulatorProcess
from ._report import Row

QUOTA_CLIENTS = {
    "ours": "mts_faces Registrar",
    "official": "official SDK + semaphore + AsyncLimiter, retries",
    "naive": "httpx + AsyncLimiter + gather, no retries",
}


def quota_rows(sizes: Sizes, raw: list[dict[str, Any]]) -> list[Row]:
    """Register ``faces`` at ``qps`` with each client against a strict-window emulator."""
    rows = []
    ideal = sizes.faces / sizes.qps
    for client, label in QUOTA_CLIENTS.items():
        log(f"quota: {label} ({sizes.faces:,} faces at {sizes.qps:g}/s) ...")
        emulator = EmulatorProcess(qps=sizes.qps, latency=sizes.latency, jitter=sizes.jitter)
        try:
            with emulator:
                args = ["--client", client, "--url", emulator.url]
                args += ["--faces", str(sizes.faces), "--qps", str(sizes.qps)]
                result = child("quota", *args, env=emulator.env())
        except Exception as exc:
            rows.append(Row("1. quota use", label, f"error: {exc}", "", "not run"))
            continue
        stats = emulator.stats
        result["emulator"] = stats
        raw.append({"benchmark": "quota", **result})
        registered = result.get("registered", 0)
        use = registered / sizes.qps / result["wall"]
        busiest = stats["max_window_arrivals"]
        measured = (
            f"quota use {use:.4f} (wall {result['wall']:.2f} s ÷ ideal {ideal:.1f} s = "
            f"{result['wall'] / ideal:.3f}); {registered:,}/{sizes.faces:,} registered; "
            f"{stats['throttled']:,} throttled; max {busiest} calls in any 1 s"
        )
        verdict = "ref"
        if client == "ours":
            ok = (
                use >= 0.99
                and stats["throttled"] == 0
                and busiest <= sizes.qps
                and registered == sizes.faces
            )
            verdict = "pass" if ok else "MISS"
        target = "use ≥ 0.99, 0 throttled, ≤ qps in any 1 s" if client == "ours" else ""
        rows.append(Row("1. quota use", label, measured, target, verdict))
    return rows

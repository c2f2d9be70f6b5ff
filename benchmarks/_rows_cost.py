"""Row 2: CPU per call of our client and of the official SDK, over http and over TLS.

Both clients share one emulator per protocol and take turns, ``repeats`` rounds of each, so a
slow spell of the machine falls on both; each row shows the median and the range.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from ._common import Sizes, child, log
from ._emulator import EmulatorProcess
from ._report import Row

LABELS = {
    "ours": "mts_faces client, default (httpx)",
    "ours-aiohttp": "mts_faces client, http_backend='aiohttp'",
    "official": "official SDK",
    "official-lean": "official SDK, SSL_CERT_FILE=CA",
}
# name, --client, calls, environment, more arguments
Variant = tuple[str, str, int, dict[str, str], list[str]]


def cost_rows(sizes: Sizes, raw: list[dict[str, Any]]) -> list[Row]:
    """Every variant at every concurrency, over http and then over TLS."""
    rows = []
    for tls in (False, True):
        scheme = "https" if tls else "http"
        with EmulatorProcess(qps=None, tls=tls) as emulator:
            ca = ["--ca-file", emulator.ca_file] if emulator.ca_file else []
            official_calls = sizes.official_tls_calls if tls else sizes.calls
            variants: list[Variant] = [
                ("ours", "ours", sizes.calls, emulator.env(), []),
                ("ours-aiohttp", "ours", sizes.calls, emulator.env(), ["--backend", "aiohttp"]),
                ("official", "official", official_calls, emulator.env(), []),
            ]
            if emulator.ca_file:
                # Its best case: SSL_CERT_FILE spares it loading the system CA store into the
                # SSLContext it builds for every call; the handshake per call remains.
                lean = {**emulator.env(), "SSL_CERT_FILE": emulator.ca_file}
                variants.append(("official-lean", "official", sizes.official_lean_calls, lean, []))
            for concurrency in sizes.concurrencies:
                samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
                for round_ in range(sizes.repeats):
                    for name, client, calls, env, extra in variants:
                        log(
                            f"cost: {name} over {scheme}, {concurrency} concurrent, "
                            f"round {round_ + 1}/{sizes.repeats} ..."
                        )
                        args = ["--client", client, "--url", emulator.url, "--calls", str(calls)]
                        args += ["--concurrency", str(concurrency), *ca, *extra]
                        try:
                            result = child("client_cost", *args, env=env)
                        except Exception as exc:
                            log(f"cost: {name} failed: {exc}")
                            continue
                        samples[name].append(result)
                        raw.append({"benchmark": "client_cost", "variant": name, **result})
                rows += _rows(scheme, concurrency, [v[0] for v in variants], samples)
    return rows


def _rows(
    scheme: str, concurrency: int, names: list[str], samples: dict[str, list[dict[str, Any]]]
) -> list[Row]:
    medians = {
        name: statistics.median(r["cpu_ms_per_call"] for r in runs)
        for name, runs in samples.items()
        if runs
    }
    officials = [cpu for name, cpu in medians.items() if not name.startswith("ours")]
    best_official = min(officials) if officials else None
    rows = []
    for name in names:
        label = f"{LABELS[name]} ({scheme}, {concurrency} concurrent)"
        runs = samples.get(name, [])
        if not runs:
            rows.append(Row("2. client cost", label, "error: no run finished", "", "not run"))
            continue
        cpu = [r["cpu_ms_per_call"] for r in runs]
        errors = sum(sum(r["errors"].values()) for r in runs)
        rate = statistics.median(r["calls_per_second"] for r in runs)
        how = (
            f"median of {len(runs)} runs, range {min(cpu):.3f}–{max(cpu):.3f}"
            if len(runs) > 1
            else "1 run"
        )
        measured = (
            f"{medians[name]:.3f} ms CPU/call ({how}), "
            f"{rate:,.0f} calls/s, {runs[0]['calls']:,} calls per run"
            + (f", {errors} errors" if errors else "")
        )
        target, verdict = "", "ref"
        if name.startswith("ours") and best_official is not None:
            measured += f"; {medians[name] / best_official:.2f} × official"
        if name == "ours":
            # respx intercepts only httpx's own transport, so the default pays httpcore's
            # cost; the target applies to the fast path (README, "HTTP backends").
            target = "none: respx-visible default"
        if name == "ours-aiohttp":
            target = "≤ 0.5 × official"
            if best_official is None:
                verdict = "not run"
            else:
                ratio = medians[name] / best_official
                verdict = "pass" if ratio <= 0.5 and not errors else "MISS"
        rows.append(Row("2. client cost", label, measured, target, verdict))
    return rows

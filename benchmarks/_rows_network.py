"""Rows 7-9: quota use over a jittery network, beside a rival program, and in lanes.

Each run: a fresh emulator process (strict sliding window of 100/s, 50 ± 20 ms service time)
with one-way network jitter before its quota gate, and a client child process
(``benchmarks/network_quota.py``). Figures come from the client's completion times and the
emulator's own counts. The rival of row 8 is a real, separate program: the emulator starts
Alibaba's official SDK in a process of its own (``--rival-client official``), a new
connection per call and no retries, and reports what it saw.
"""

from __future__ import annotations

from typing import Any

from ._common import Sizes, child, log
from ._emulator import EmulatorProcess
from ._report import Row

JITTERS_MS = (0, 10, 30, 50)
SUSTAINED_TARGET = {0: 99.0, 10: 98.0, 30: 97.0, 50: 95.0}
RIVAL_QPS = 30.0
RIVAL_START = 5.0
RIVAL_DURATION = 15.0
BACKENDS = ("httpx", "aiohttp")


def _run(
    sizes: Sizes,
    scenario: str,
    extra: tuple[str, ...],
    raw: list[dict[str, Any]],
    label: str,
    client_args: tuple[str, ...] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    emulator = EmulatorProcess(
        qps=sizes.qps,
        latency=sizes.latency,
        jitter=sizes.jitter,
        extra_args=("--seed", "1", *extra),
    )
    with emulator:
        args = ["--scenario", scenario, "--url", emulator.url]
        args += ["--calls", str(sizes.calls), "--qps", str(sizes.qps), *client_args]
        result = child("network_quota", *args, env=emulator.env())
    stats = emulator.stats
    raw.append(
        {
            "benchmark": "network",
            "label": label,
            "statuses": result.get("statuses"),
            "emulator": stats,
            "margin": result.get("margin"),
            "rate": result.get("rate"),
            "rates": result.get("rates"),
            # For the jitter-sweep plot (benchmarks/_plots.py).
            "qps": sizes.qps,
            "per_second": per_second(result.get("done") or []),
        }
    )
    return result, stats


def per_second(done: list[float]) -> list[int]:
    """Successful calls completed in each second of the run."""
    if not done:
        return []
    counts = [0] * (int(max(done)) + 1)
    for t in done:
        counts[int(t)] += 1
    return counts


def sustained(done: list[float]) -> float:
    """Calls per second from the first completion to the last."""
    ordered = sorted(done)
    if len(ordered) < 2:
        return 0.0
    return (len(ordered) - 1) / (ordered[-1] - ordered[0])


def jitter_rows(sizes: Sizes, raw: list[dict[str, Any]]) -> list[Row]:
    """Ours and the official SDK + aiolimiter at each one-way jitter."""
    rows = []
    for jitter_ms in JITTERS_MS:
        extra = ("--network-jitter", str(jitter_ms / 1000))
        runs = [
            ("ours", "mts_faces client (bulk, default limiter)"),
            ("official", "official SDK + semaphore + AsyncLimiter, retries"),
        ]
        if jitter_ms == 0:
            runs.append(("aiolimiter", "mts_faces client, limiter=AsyncLimiter(qps, 1)"))
        for scenario, label in runs:
            name = f"7. network jitter 0–{jitter_ms} ms"
            log(f"network: {label} at 0-{jitter_ms} ms one-way jitter ...")
            try:
                result, stats = _run(sizes, scenario, extra, raw, f"{scenario} {jitter_ms} ms")
            except Exception as exc:
                rows.append(Row(name, label, f"error: {exc}", "", "not run"))
                continue
            done = result["done"]
            rate = sustained(done)
            throttled = stats["throttled"]
            calls = sizes.calls
            ok_calls = len(done)
            peak = stats["max_window_quota"]
            measured = (
                f"{rate:.2f} calls/s sustained; {ok_calls:,}/{calls:,} succeeded; "
                f"{throttled} throttled ({throttled / calls:.2%}); max {peak} accepted in any 1 s"
            )
            if scenario == "ours":
                target_rate = SUSTAINED_TARGET[jitter_ms] * sizes.qps / 100
                ok = (
                    rate >= target_rate
                    and throttled <= 0.003 * calls
                    and ok_calls == calls
                    and peak <= sizes.qps
                )
                target = f"≥ {target_rate:g} calls/s, throttled ≤ 0.3%, all succeed, ≤ qps"
                rows.append(Row(name, label, measured, target, "pass" if ok else "MISS"))
            else:
                rows.append(Row(name, label, measured, "", "ref"))
    return rows


def rival_rows(sizes: Sizes, raw: list[dict[str, Any]]) -> list[Row]:
    """A real rival program at 30 calls/s on the same account for part of the run."""
    return [_rival_row(sizes, raw, backend) for backend in BACKENDS]


def _rival_row(sizes: Sizes, raw: list[dict[str, Any]], backend: str) -> Row:
    name = "8. rival program"
    label = (
        f"mts_faces client ({backend}); official SDK rival {RIVAL_QPS:g}/s from "
        f"{RIVAL_START:g} s for {RIVAL_DURATION:g} s, no retries"
    )
    log(f"network: {label} ...")
    extra = (
        "--rival-qps", str(RIVAL_QPS), "--rival-start", str(RIVAL_START),
        "--rival-duration", str(RIVAL_DURATION), "--rival-client", "official",
    )  # fmt: skip
    try:
        result, stats = _run(sizes, "ours", extra, raw, f"rival {backend}", ("--backend", backend))
    except Exception as exc:
        return Row(name, label, f"error: {exc}", "", "not run")
    report = stats.get("rival_report")
    counts = per_second(result["done"])
    start, stop = int(RIVAL_START), int(RIVAL_START + RIVAL_DURATION)
    if report is None:
        return Row(name, label, "not run: the rival program reported nothing", "", "not run")
    if len(counts) < stop + 2:
        reason = f"not run: the {sizes.calls:,}-call run ended before the rival stopped"
        return Row(name, label, reason, "", "not run")
    # Seconds are counted from our first call; the rival's from our first arrival, a round
    # trip's fraction later: whole seconds inside its span are used for both.
    span = counts[start + 1 : stop]
    ours_during = sum(span) / len(span) if span else 0.0
    rival_span = report["per_second"][1 : stop - start]
    rival_rate = sum(rival_span) / len(rival_span) if rival_span else 0.0
    combined = (ours_during + rival_rate) / sizes.qps
    share = sizes.qps - RIVAL_QPS
    settle = next(
        (
            t - start
            for t in range(start, stop)
            if all(abs(c - share) <= 0.1 * share for c in counts[t:stop])
        ),
        None,
    )
    recover = next((t - stop for t in range(stop, len(counts) - 1) if counts[t] >= 98), None)
    throttled = stats["throttled"]
    calls = sizes.calls
    rival_sent, rival_throttled = report["sent"], report["throttled"]
    measured = (
        f"combined use {combined:.3f} (ours {ours_during:.1f} + rival {rival_rate:.1f} calls/s); "
        f"settled within ±10% of {share:g}/s after {settle} s; back to ≥ 98/s {recover} s "
        f"after it stopped; our throttled {throttled} ({throttled / calls:.2%}); the rival's "
        f"throttled {rival_throttled}/{rival_sent} ({rival_throttled / max(1, rival_sent):.2%}), "
        f"other failures {report['failed']}; {len(result['done']):,}/{calls:,} of ours "
        f"succeeded; max {stats['max_window_quota']} accepted in any 1 s (both programs)"
    )
    ok = (
        combined >= 0.95
        and throttled <= 0.01 * calls
        and rival_throttled <= 0.02 * rival_sent
        and recover is not None
        and recover <= 5
        and len(result["done"]) == calls
    )
    target = (
        "combined ≥ 0.95, ours throttled ≤ 1%, the rival's ≤ 2%, "
        "≥ 98/s within 5 s of the rival stopping"
    )
    return Row(name, label, measured, target, "pass" if ok else "MISS")


def lane_rows(sizes: Sizes, raw: list[dict[str, Any]]) -> list[Row]:
    """Interactive calls during a saturating bulk run."""
    name = "9. priority lanes"
    label = "interactive call every 0.2 s during a bulk run"
    log(f"network: {label} ...")
    try:
        result, stats = _run(sizes, "lanes", (), raw, "lanes")
    except Exception as exc:
        return [Row(name, label, f"error: {exc}", "", "not run")]
    waits = sorted(result["waits"])
    done = result["done"]
    if not waits or not done:
        return [Row(name, label, "no interactive calls measured", "", "not run")]
    p50 = waits[len(waits) // 2] * 1000
    p95 = waits[min(len(waits) - 1, len(waits) * 95 // 100)] * 1000
    # Bulk fills every slot the interactive calls leave: the quota in use is both together.
    everything = done + result.get("interactive_done", [])
    last_bulk = max(done)
    use = sustained([t for t in everything if t <= last_bulk]) / sizes.qps
    bulk_use = sustained(done) / sizes.qps
    measured = (
        f"interactive wait p50 {p50:.1f} ms, p95 {p95:.1f} ms ({len(waits)} calls, "
        f"from the call to its rate slot); quota use {use:.3f} (bulk {bulk_use:.3f}, "
        f"interactive the rest); {stats['throttled']} throttled"
    )
    ok = p95 <= 25 and use >= 0.97
    target = "interactive p95 ≤ 25 ms, quota use (bulk + interactive) ≥ 0.97"
    return [Row(name, label, measured, target, "pass" if ok else "MISS")]


def network_rows(sizes: Sizes, raw: list[dict[str, Any]]) -> list[Row]:
    """All the network rows."""
    return jitter_rows(sizes, raw) + rival_rows(sizes, raw) + lane_rows(sizes, raw)

"""Client cost: this process's CPU seconds per RegisterCustomFace call, and calls per second.

The emulator runs in another process (no quota, no latency); this process only drives the
client under test: ``asyncio.gather`` over a semaphore of ``--concurrency`` calls, after a
warm-up (imports, the first connections) that is not counted. CPU is user + system time from
``getrusage``, so the kernel's work for our sockets and TLS counts too.

    python -m benchmarks.client_cost --client ours --url URL --calls 3000 --concurrency 8
    python -m benchmarks.client_cost --client ours --backend aiohttp --url URL

``--backend`` picks our client's HTTP backend: ``httpx`` (the library default, what respx
intercepts) or ``aiohttp`` (the fast path, ``http_backend="aiohttp"``). ``--telemetry`` adds
what a watcher would: ``hook`` a :class:`~mts_faces.report.RunRecorder` as the attempt hook,
``otel`` the OpenTelemetry SDK's tracer and meter providers (spans recorded, not exported);
``none`` (default) leaves only ``client.stats``, which is always kept.

The key pair comes from ALIBABA_CLOUD_ACCESS_KEY_ID / _SECRET; prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from mts_faces import MtsFaceClient

Register = Callable[[str, str, str], Awaitable[object]]

# High enough that the limiter never waits: the quota is not what this measures.
UNLIMITED_QPS = 1_000_000.0


def _telemetry(kind: str) -> dict[str, Any]:
    if kind == "hook":
        from mts_faces.report import RunRecorder

        return {"on_attempt": RunRecorder()}
    if kind == "otel":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider

        reader = InMemoryMetricReader()
        return {
            "tracer_provider": TracerProvider(),
            "meter_provider": MeterProvider(metric_readers=[reader]),
        }
    return {}


def _ours(
    url: str,
    key_id: str,
    secret: str,
    ca_file: str | None,
    concurrency: int,
    backend: str,
    telemetry: str = "none",
) -> MtsFaceClient:
    return MtsFaceClient(
        endpoint=url,
        access_key_id=key_id,
        access_key_secret=secret,
        qps=UNLIMITED_QPS,
        max_connections=concurrency,
        verify=ca_file or True,
        http_backend="aiohttp" if backend == "aiohttp" else "httpx",
        **_telemetry(telemetry),
    )


async def measure(
    client: str,
    url: str,
    calls: int,
    concurrency: int,
    ca_file: str | None,
    warmup: int,
    backend: str = "httpx",
    telemetry: str = "none",
) -> dict[str, Any]:
    """Run ``warmup`` then ``calls`` registrations; CPU and wall time of the second part."""
    key_id = os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"]
    secret = os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]
    ours = (
        _ours(url, key_id, secret, ca_file, concurrency, backend, telemetry)
        if client == "ours"
        else None
    )
    if ours is not None:
        register: Register = ours.register_custom_face
    else:
        from ._official import official_register

        register = official_register(url, key_id, secret, ca_file)
    # Fresh persons for every run: a person holds at most 10 faces.
    prefix = uuid.uuid4().hex[:10]
    slots = asyncio.Semaphore(concurrency)
    errors: Counter[str] = Counter()

    async def one(i: int) -> None:
        async with slots:
            try:
                await register("bench", f"p-{prefix}-{i // 10}", f"https://img.example/{i}.jpg")
            except Exception as exc:  # counted and reported: a run with errors is flagged
                errors[type(exc).__name__] += 1

    await asyncio.gather(*(one(i) for i in range(warmup)))
    errors.clear()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(warmup, warmup + calls)))
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    if ours is not None:
        await ours.aclose()
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {
        "client": client,
        "backend": backend if client == "ours" else None,
        "telemetry": telemetry if client == "ours" else None,
        "tls": url.startswith("https"),
        "calls": calls,
        "concurrency": concurrency,
        "cpu_ms_per_call": (user + system) * 1000 / calls,
        "user_ms_per_call": user * 1000 / calls,
        "sys_ms_per_call": system * 1000 / calls,
        "calls_per_second": calls / wall,
        "errors": dict(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", choices=("ours", "official"), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--ca-file", help="CA to trust for https")
    parser.add_argument("--backend", choices=("httpx", "aiohttp"), default="httpx")
    parser.add_argument("--telemetry", choices=("none", "hook", "otel"), default="none")
    args = parser.parse_args()
    result = asyncio.run(
        measure(
            args.client,
            args.url,
            args.calls,
            args.concurrency,
            args.ca_file,
            args.warmup,
            args.backend,
            args.telemetry,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

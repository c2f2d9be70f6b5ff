"""Quota use over an emulated network, beside a rival program, and in lanes: one client run.

Scenarios (the emulator, in its own process, adds the one-way network jitter before its
quota gate, and runs the rival; see ``benchmarks/_rows_network.py``):

* ``ours``: ``--calls`` registrations gathered at once through one :class:`MtsFaceClient`
  (default limiter, ``priority="bulk"``, retries enough that throttled calls are retried);
* ``aiolimiter``: the same with ``limiter=aiolimiter.AsyncLimiter(qps, 1)``;
* ``official``: the official SDK with ``aiolimiter.AsyncLimiter(qps, 1)``, a semaphore of 64
  and retries on throttling (as ``benchmarks/quota.py`` drives it);
* ``lanes``: the ``ours`` bulk run plus an interactive registration every ``--every`` seconds,
  timing each interactive call's wait from the call to its rate slot.

Prints one JSON line: completion times of the successful calls (seconds from the first
call), outcome counts, and for ``lanes`` the interactive waits.

    python -m benchmarks.network_quota --scenario ours --url URL [--calls 3000] [--backend B]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import time
from collections import Counter
from typing import Any

from aiolimiter import AsyncLimiter

from mts_faces import Grant, MtsFaceClient, Priority, WindowLimiter

from ._official import error_code, official_register
from .quota import OFFICIAL_CONCURRENCY, OFFICIAL_TRIES, faces

_called: contextvars.ContextVar[float] = contextvars.ContextVar("called")


class WaitRecorder(WindowLimiter):
    """The default limiter, noting how long each interactive call waited for its slot."""

    def __init__(self, qps: float) -> None:
        super().__init__(qps)
        self.waits: list[float] = []

    async def acquire(self, **scope: Any) -> Grant:
        grant = await super().acquire(**scope)
        started = _called.get(None)
        if started is not None and scope.get("priority") == "interactive":
            self.waits.append(time.perf_counter() - started)
        return grant


async def run_ours(args: argparse.Namespace, key_id: str, secret: str) -> dict[str, Any]:
    limiter = WaitRecorder(args.qps)
    # The card's limiter in our client: any object with acquire() is accepted.
    given: Any = AsyncLimiter(args.qps, 1) if args.scenario == "aiolimiter" else limiter
    done: list[float] = []
    interactive_done: list[float] = []
    statuses: Counter[str] = Counter()
    async with MtsFaceClient(
        endpoint=args.url,
        access_key_id=key_id,
        access_key_secret=secret,
        qps=args.qps,
        limiter=given,
        max_retries=20,
        http_backend=args.backend,
    ) as client:
        start = time.perf_counter()

        async def one(row: tuple[str, str, str], priority: Priority) -> None:
            _called.set(time.perf_counter())
            try:
                await client.register_custom_face(*row, priority=priority)
            except Exception as exc:
                statuses[type(exc).__name__] += 1
                return
            statuses["registered" if priority == "bulk" else "interactive"] += 1
            (done if priority == "bulk" else interactive_done).append(time.perf_counter() - start)

        rates: list[tuple[float, float, float]] = []

        async def sample() -> None:  # the limiter's rate and margin, 4 times a second
            while True:
                rates.append(
                    (time.perf_counter() - start, limiter.current_rate, limiter.current_margin)
                )
                await asyncio.sleep(0.25)

        sampler = asyncio.create_task(sample())
        bulk = asyncio.gather(*(one(row, "bulk") for row in faces(args.calls)))
        interactive = []
        if args.scenario == "lanes":
            while not bulk.done():
                await asyncio.sleep(args.every)
                n = len(interactive)
                row = ("bench", f"interactive-{n}", f"https://img.example/i/{n}.jpg")
                interactive.append(asyncio.create_task(one(row, "interactive")))
        await bulk
        await asyncio.gather(*interactive)
        sampler.cancel()
        attempts = client.attempts
    return {
        "done": done,
        "interactive_done": interactive_done,
        "statuses": dict(statuses),
        "attempts": attempts,
        "waits": limiter.waits,
        "margin": limiter.current_margin,
        "rate": limiter.current_rate,
        "rates": rates,
    }


async def run_official(args: argparse.Namespace, key_id: str, secret: str) -> dict[str, Any]:
    register = official_register(args.url, key_id, secret)
    limiter = AsyncLimiter(args.qps, 1)
    slots = asyncio.Semaphore(OFFICIAL_CONCURRENCY)
    statuses: Counter[str] = Counter()
    done: list[float] = []
    start = time.perf_counter()

    async def one(category: str, person: str, image_url: str) -> None:
        async with slots:
            for attempt in range(OFFICIAL_TRIES):
                async with limiter:
                    try:
                        await register(category, person, image_url)
                    except Exception as exc:
                        code = error_code(exc) or ""
                        if code.startswith("Throttling") and attempt + 1 < OFFICIAL_TRIES:
                            statuses["retried"] += 1
                            await asyncio.sleep(0.25 * 2**attempt)
                            continue
                        statuses["failed"] += 1
                        return
                statuses["registered"] += 1
                done.append(time.perf_counter() - start)
                return

    await asyncio.gather(*(one(*row) for row in faces(args.calls)))
    return {"done": done, "statuses": dict(statuses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario", choices=("ours", "aiolimiter", "official", "lanes"), required=True
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--qps", type=float, default=100.0)
    parser.add_argument("--every", type=float, default=0.2, help="s between interactive calls")
    parser.add_argument("--backend", choices=("httpx", "aiohttp"), default="httpx")
    args = parser.parse_args()
    key_id = os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"]
    secret = os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]
    runner = run_official if args.scenario == "official" else run_ours
    print(json.dumps(asyncio.run(runner(args, key_id, secret))))


if __name__ == "__main__":
    main()

"""Quota use: register FACES faces at QPS through one client; wall time and outcomes.

Three ways to drive the same work (300 persons × 10 faces by default):

* ``ours``: :class:`mts_faces.registrar.Registrar` on an :class:`MtsFaceClient` at ``qps``,
  all defaults;
* ``official``: the official SDK's async client as a careful user drives it:
  ``asyncio.gather`` over a semaphore (64, our client's default pool size) and an
  ``aiolimiter.AsyncLimiter(qps, 1)``, retrying a throttled call after a backoff (up to 5
  tries);
* ``naive``: one ``httpx.AsyncClient``, ``aiolimiter.AsyncLimiter(qps, 1)``, every call
  gathered at once, no retries (signed with this package's signer, standing in for the
  user's own).

The emulator runs in another process and counts throttling and the busiest second.

    python -m benchmarks.quota --client ours --url URL [--faces 3000 --qps 100]

The key pair comes from ALIBABA_CLOUD_ACCESS_KEY_ID / _SECRET; prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from aiolimiter import AsyncLimiter

from mts_faces import MtsFaceClient
from mts_faces._client import new_nonce, utc_timestamp
from mts_faces._signing import EMPTY_BODY_SHA256, canonical_query, v3_authorization
from mts_faces.manifest import FaceRow
from mts_faces.registrar import Registrar
from mts_faces.report import RunRecorder

from ._official import error_code, official_register

FACES_PER_PERSON = 10
OFFICIAL_CONCURRENCY = 64
OFFICIAL_TRIES = 5


def faces(count: int) -> Iterator[tuple[str, str, str]]:
    """``count`` (category, person, image URL) rows, ten faces per person, person by person."""
    for i in range(count):
        person, face = divmod(i, FACES_PER_PERSON)
        yield "bench", f"person-{person:05d}", f"https://img.example/{person}/{face}.jpg"


# Every runner records when each request was sent and how it ended, for the rate-over-time
# plots (benchmarks/_plots.py); ours through its attempt hook, the others by hand.
RECORDER = RunRecorder()


async def run_ours(url: str, key_id: str, secret: str, count: int, qps: float) -> Counter[str]:
    """Our registrar, as the README shows it."""
    statuses: Counter[str] = Counter()
    async with MtsFaceClient(
        endpoint=url, access_key_id=key_id, access_key_secret=secret, qps=qps, on_attempt=RECORDER
    ) as client:
        registrar = Registrar(client, collect_faces=False)
        rows = (FaceRow(c, p, u, row=n) for n, (c, p, u) in enumerate(faces(count), 1))
        async for outcome in registrar.run(rows):
            statuses[outcome.status] += 1
    return statuses


async def run_official(url: str, key_id: str, secret: str, count: int, qps: float) -> Counter[str]:
    """The official SDK with a semaphore, an aiolimiter bucket and retries on throttling."""
    register = official_register(url, key_id, secret)
    limiter = AsyncLimiter(qps, 1)
    slots = asyncio.Semaphore(OFFICIAL_CONCURRENCY)
    statuses: Counter[str] = Counter()

    async def one(category: str, person: str, image_url: str) -> None:
        async with slots:
            for attempt in range(OFFICIAL_TRIES):
                async with limiter:
                    sent = time.time()
                    try:
                        await register(category, person, image_url)
                        RECORDER.add(sent, "ok", time.time() - sent)
                    except Exception as exc:
                        code = error_code(exc) or ""
                        throttled = code.startswith("Throttling")
                        outcome = "throttled" if throttled else "error"
                        RECORDER.add(sent, outcome, time.time() - sent)
                        if throttled and attempt + 1 < OFFICIAL_TRIES:
                            statuses["retried"] += 1
                            await asyncio.sleep(0.25 * 2**attempt)
                            continue
                        statuses["failed"] += 1
                        return
                statuses["registered"] += 1
                return

    await asyncio.gather(*(one(*row) for row in faces(count)))
    return statuses


async def run_naive(url: str, key_id: str, secret: str, count: int, qps: float) -> Counter[str]:
    """httpx + aiolimiter + gather everything, no retries."""
    host = urlsplit(url).netloc
    limiter = AsyncLimiter(qps, 1)
    statuses: Counter[str] = Counter()

    def sign(params: dict[str, str]) -> dict[str, str]:
        headers = {
            "host": host,
            "x-acs-action": "RegisterCustomFace",
            "x-acs-version": "2014-06-18",
            "x-acs-date": utc_timestamp(),
            "x-acs-signature-nonce": new_nonce(),
            "x-acs-content-sha256": EMPTY_BODY_SHA256,
        }
        headers["authorization"] = v3_authorization("POST", params, headers, key_id, secret)
        return headers

    async with httpx.AsyncClient() as http:

        async def one(category: str, person: str, image_url: str) -> None:
            params = {"CategoryId": category, "PersonId": person, "ImageUrl": image_url}
            async with limiter:
                sent = time.time()
                try:
                    answer = await http.post(
                        f"{url}/?{canonical_query(params)}", headers=sign(params)
                    )
                    ok = answer.status_code == 200
                    throttled = b"Throttling" in answer.content
                except httpx.HTTPError:
                    ok = throttled = False
                outcome = "ok" if ok else "throttled" if throttled else "error"
                RECORDER.add(sent, outcome, time.time() - sent)
            statuses["registered" if ok else "failed"] += 1

        await asyncio.gather(*(one(*row) for row in faces(count)))
    return statuses


RUNNERS = {"ours": run_ours, "official": run_official, "naive": run_naive}


async def measure(client: str, url: str, count: int, qps: float) -> dict[str, Any]:
    """Wall time from the first call to the last answer, and the outcome counts."""
    key_id = os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"]
    secret = os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]
    RECORDER.start = time.time()
    started = time.perf_counter()
    statuses = await RUNNERS[client](url, key_id, secret, count, qps)
    wall = time.perf_counter() - started
    timeline = RECORDER.timeline()
    series = {
        "width": timeline.width,
        "ok": [b.ok for b in timeline.buckets],
        "throttled": [b.throttled for b in timeline.buckets],
        "errors": [b.errors for b in timeline.buckets],
    }
    return {
        "client": client,
        "faces": count,
        "qps": qps,
        "wall": wall,
        **statuses,
        "timeline": series,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", choices=sorted(RUNNERS), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--faces", type=int, default=3000)
    parser.add_argument("--qps", type=float, default=100.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.client, args.url, args.faces, args.qps))))


if __name__ == "__main__":
    main()

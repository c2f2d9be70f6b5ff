"""Another program on the same account: a real, separate client process the emulator starts.

It sends ``RegisterCustomFace`` calls at ``qps`` calls per second (evenly paced, or each
second's calls at once with ``bursty``) for ``duration`` seconds, ``start`` seconds after an
origin the emulator gives it (the wall-clock time of the first request the emulator saw). It
retries nothing: a throttled call is its failure. It sends the way the official SDK does,
through a new connection per call:

* ``official``: Alibaba's SDK (``alibabacloud-mts20140618``, the ``bench`` extra), as a user
  of it would: one client, ``register_custom_face_with_options_async``;
* ``plain``: httpx, one new ``AsyncClient`` (so one new connection) per call, signed with this
  package's V3 signer; needs nothing beyond the base install.

Its calls carry :data:`RIVAL_AGENT` in their User-Agent, by which the emulator counts them
apart (``rival_accepted``, ``rival_throttled``). At the end it prints one JSON line: calls
sent, accepted, throttled, failed otherwise, and the calls accepted in each second.

    python -m mts_faces.emulator._rival_client --url URL --qps 30 --start 5 --duration 15

with the key pair in ``ALIBABA_CLOUD_ACCESS_KEY_ID`` / ``ALIBABA_CLOUD_ACCESS_KEY_SECRET``,
and the origin (seconds since the epoch) on one line of standard input, or ``--origin``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

RIVAL_AGENT = "mts-faces-rival/1"
"""Marks the rival's calls, for the emulator's counts."""
RIVAL_CATEGORY = "rival"
CLIENTS = ("official", "plain")

Send = Callable[[int], Awaitable[str]]
"""``await send(i)``: the i-th call; returns ``"ok"`` or the service's error code."""


def _image(i: int) -> tuple[str, str, str]:
    # Ten faces per person: the service's cap.
    return RIVAL_CATEGORY, f"rival-{i // 10}", f"https://img.example/rival/{i}.jpg"


Register = Callable[[str, str, str], Awaitable[None]]
"""``await register(category, person, image_url)``."""


def official_register(
    url: str,
    access_key_id: str,
    access_key_secret: str,
    *,
    ca_file: str | None = None,
    user_agent: str | None = None,
) -> tuple[Register, Callable[[BaseException], str | None]]:
    """Registration through one client of Alibaba's official SDK (the ``bench`` extra), as
    its documentation shows: ``register_custom_face_with_options_async`` with one default
    ``RuntimeOptions`` (no retries); the endpoint is ``url``'s ``host:port`` and protocol.
    For TLS the SDK's own ``ca`` option names the CA file. Returns the call and a function
    giving the service's error ``Code`` an SDK exception carries (None for others)."""
    try:
        from alibabacloud_mts20140618 import models
        from alibabacloud_mts20140618.client import (
            Client,
        )
        from alibabacloud_tea_openapi.exceptions import (
            AlibabaCloudException,
        )
        from alibabacloud_tea_openapi.utils_models import (
            Config,
        )
        from darabonba.runtime import RuntimeOptions
    except ImportError:
        raise SystemExit(
            "Alibaba's SDK is in the bench extra: pip install 'mts-faces[bench]'"
        ) from None
    parts = urlsplit(url)
    config = Config(
        access_key_id=access_key_id,
        access_key_secret=access_key_secret,
        endpoint=parts.netloc,
        protocol=parts.scheme,
        region_id="cn-shanghai",
        ca=ca_file,
        user_agent=user_agent,
    )
    client = Client(config)
    runtime = RuntimeOptions()

    async def register(category_id: str, person_id: str, image_url: str) -> None:
        request = models.RegisterCustomFaceRequest(
            category_id=category_id, person_id=person_id, image_url=image_url
        )
        await client.register_custom_face_with_options_async(request, runtime)

    def error_code(exc: BaseException) -> str | None:
        return str(exc.code) if isinstance(exc, AlibabaCloudException) else None

    return register, error_code


def official_sender(url: str, key_id: str, secret: str) -> Send:
    """Calls through Alibaba's official SDK (the ``bench`` extra)."""
    register, error_code = official_register(url, key_id, secret, user_agent=RIVAL_AGENT)

    async def send(i: int) -> str:
        try:
            await register(*_image(i))
        except Exception as exc:
            code = error_code(exc)
            if code is None:
                raise
            return code
        return "ok"

    return send


def plain_sender(url: str, key_id: str, secret: str) -> Send:
    """Calls through httpx, one new connection per call, signed with this package's signer."""
    import httpx

    from .._client import new_nonce, utc_timestamp
    from .._operations import API_VERSION
    from .._signing import EMPTY_BODY_SHA256, canonical_query, v3_authorization

    host = urlsplit(url).netloc

    async def send(i: int) -> str:
        category, person, image = _image(i)
        canonical = canonical_query({"CategoryId": category, "PersonId": person, "ImageUrl": image})
        headers = {
            "host": host,
            "x-acs-action": "RegisterCustomFace",
            "x-acs-version": API_VERSION,
            "x-acs-date": utc_timestamp(),
            "x-acs-signature-nonce": new_nonce(),
            "x-acs-content-sha256": EMPTY_BODY_SHA256,
        }
        headers["authorization"] = v3_authorization("POST", canonical, headers, key_id, secret)
        headers["user-agent"] = RIVAL_AGENT
        async with httpx.AsyncClient(timeout=10.0) as http:
            response = await http.post(f"{url}/?{canonical}", headers=headers)
        body: Any = response.json() if response.content else {}
        if response.is_success and "Code" not in body:
            return "ok"
        return str(body.get("Code", f"HTTP {response.status_code}"))

    return send


def due_time(i: int, qps: float, bursty: bool) -> float:
    """When call ``i`` is due, in seconds from the rival's start."""
    if bursty:
        return float(i // max(1, round(qps)))
    return i / qps


async def run(
    send: Send, qps: float, duration: float, bursty: bool, begin: float
) -> dict[str, Any]:
    """Send call ``i`` at wall time ``begin + due_time(i)`` while that is within ``duration``."""
    outcomes: Counter[str] = Counter()
    per_second: Counter[int] = Counter()
    throttled_per_second: Counter[int] = Counter()
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        try:
            code = await send(i)
        except Exception as exc:  # a transport failure is a failure too: it is not retried
            code = type(exc).__name__
        outcomes[code] += 1
        second = int(time.time() - begin)
        if code == "ok":
            per_second[second] += 1
        elif code.startswith("Throttling"):
            throttled_per_second[second] += 1

    sent = 0
    while (at := due_time(sent, qps, bursty)) < duration:
        delay = begin + at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(sent))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
    await asyncio.gather(*tasks)
    throttled = sum(n for code, n in outcomes.items() if code.startswith("Throttling"))
    span = max((*per_second, *throttled_per_second), default=-1) + 1
    return {
        "sent": sent,
        "accepted": outcomes["ok"],
        "throttled": throttled,
        "failed": sent - outcomes["ok"] - throttled,
        "codes": dict(outcomes),
        "begin": begin,
        "per_second": [per_second[s] for s in range(span)],
        "throttled_per_second": [throttled_per_second[s] for s in range(span)],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the rival; prints its JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", required=True)
    parser.add_argument("--qps", type=float, required=True)
    parser.add_argument("--start", type=float, default=0.0, help="s after the origin")
    parser.add_argument("--duration", type=float, default=math.inf, help="s (default: ever)")
    parser.add_argument("--bursty", action="store_true")
    parser.add_argument("--client", choices=CLIENTS, default="plain")
    parser.add_argument("--origin", type=float, help="epoch seconds (default: read from stdin)")
    args = parser.parse_args(argv)
    key_id = os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"]
    secret = os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]
    maker = official_sender if args.client == "official" else plain_sender
    send = maker(args.url.rstrip("/"), key_id, secret)
    # Ready (imports done): say so, then wait for the origin.
    print("ready", flush=True)
    origin = args.origin
    if origin is None:
        line = sys.stdin.readline()
        if not line.strip():
            return 0  # the emulator stopped before any request came
        origin = float(line)
    summary = asyncio.run(run(send, args.qps, args.duration, args.bursty, origin + args.start))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

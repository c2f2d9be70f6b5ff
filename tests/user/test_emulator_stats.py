"""The emulator's counters from another process: ``GET /_emulator/stats`` on a
``mts-faces emulate`` started as a user's test harness or CI job would start it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from mts_faces import MtsFaceClient, ThrottlingError


@pytest.fixture
def emulate() -> Iterator[tuple[str, dict[str, str]]]:
    """``mts-faces emulate`` in a child process: its URL and the demo key pair it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}
    child = subprocess.Popen(
        [sys.executable, "-m", "mts_faces.cli", "emulate", "--qps", "2", "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    url = child.stdout.readline().strip()
    keys = dict(child.stdout.readline().strip().split("=", 1) for _ in range(2))
    try:
        yield url, keys
    finally:
        child.send_signal(signal.SIGINT)
        child.wait(30)


def get(url: str, method: str = "GET") -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_stats_of_an_emulator_in_another_process(emulate: tuple[str, dict[str, str]]) -> None:
    url, keys = emulate
    status, before = get(f"{url}/_emulator/stats")
    assert status == 200 and before["requests"] == 0 and before["accepted"] == 0

    async def calls() -> int:
        throttled = 0
        async with MtsFaceClient(
            endpoint=url,
            access_key_id=keys["ALIBABA_CLOUD_ACCESS_KEY_ID"],
            access_key_secret=keys["ALIBABA_CLOUD_ACCESS_KEY_SECRET"],
            qps=1000,  # above the emulator's quota of 2: some are throttled
            max_retries=0,
        ) as client:
            for i in range(5):
                try:
                    await client.register_custom_face(
                        "lib", "p1", f"https://img.example.com/{i}.jpg"
                    )
                except ThrottlingError:
                    throttled += 1
        return throttled

    throttled = asyncio.run(calls())
    status, stats = get(f"{url}/_emulator/stats")
    assert status == 200
    assert stats["requests"] == 5  # the stats requests themselves are not counted
    assert stats["throttled"] == throttled >= 3
    assert stats["accepted"] == 5 - throttled
    assert stats["faces_stored"] == stats["accepted"]
    assert stats["requests_by_action"] == {"RegisterCustomFace": 5}
    assert stats["max_window_accepted"] <= 2
    assert set(stats) >= {"errors_by_code", "faulted", "signature_versions", "RequestId"}


def test_stats_endpoint_refuses_what_it_does_not_serve(
    emulate: tuple[str, dict[str, str]],
) -> None:
    url, _ = emulate
    assert get(f"{url}/_emulator/stats", "POST")[0] == 405
    status, body = get(f"{url}/_emulator/nothing")
    assert status == 404 and body["Code"] == "NotFound"
    assert get(f"{url}/_emulator/stats")[1]["requests"] == 0

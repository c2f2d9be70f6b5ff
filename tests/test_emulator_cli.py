"""``mts-faces emulate`` run as a process: URL first, the demo key pair, stats at SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from mts_faces import MtsFaceClient

URL = "https://img.example.com/face.jpg"


async def _start(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mts_faces.cli",
        "emulate",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def _line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()


async def _stop(process: asyncio.subprocess.Process) -> tuple[str, str]:
    process.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode(), err.decode()


async def test_prints_url_then_demo_keys_and_stats_on_sigterm() -> None:
    process = await _start("--qps", "50", "--seed", "1", env=dict(os.environ))
    try:
        url = await _line(process)
        assert url.startswith("http://127.0.0.1:")
        key_id = (await _line(process)).partition("=")
        secret = (await _line(process)).partition("=")
        assert key_id[0] == "ALIBABA_CLOUD_ACCESS_KEY_ID"
        assert secret[0] == "ALIBABA_CLOUD_ACCESS_KEY_SECRET"
        async with MtsFaceClient(
            endpoint=url, access_key_id=key_id[2], access_key_secret=secret[2], max_retries=0
        ) as client:
            await client.register_custom_face("lib", "p", URL)
    finally:
        if process.returncode is None:
            out, err = await _stop(process)
    assert out == ""  # nothing after the key pair
    stats = json.loads(err.strip().splitlines()[-1])
    assert (stats["accepted"], stats["faces_stored"]) == (1, 1)
    assert "emulator stats:" in err


async def test_keys_from_the_environment_with_tls(tmp_path: Path) -> None:
    pytest.importorskip("trustme")
    secret = "env-secret-never-printed"
    env = {
        **os.environ,
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIfromenv",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": secret,
    }
    ca_file = tmp_path / "ca.pem"
    process = await _start("--tls", "--ca-out", str(ca_file), env=env)
    try:
        url = await _line(process)
        assert url.startswith("https://127.0.0.1:")
        async with MtsFaceClient(
            endpoint=url, access_key_id="LTAIfromenv", access_key_secret=secret, verify=str(ca_file)
        ) as client:
            await client.list_custom_persons()
    finally:
        if process.returncode is None:
            out, err = await _stop(process)
    assert out == ""
    assert secret not in err
    assert json.loads(err.strip().splitlines()[-1])["accepted"] == 1

"""The public surface: exported names pinned (as httpx does), lazy imports, quiet logging, and
the README's imports all real."""

from __future__ import annotations

import importlib
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import mts_faces
from mts_faces import MtsFaceClient, ServerError

EXPORTED = [
    "APIError",
    "Acknowledgement",
    "AimdPolicy",
    "AlibabaCloudCredentials",
    "AmbiguousOutcomeError",
    "AttemptEvent",
    "AuthenticationError",
    "CUSTOM_FACE_REGIONS",
    "Category",
    "ClientStats",
    "ConfigurationError",
    "Credentials",
    "CredentialsError",
    "CredentialsProvider",
    "CustomPersons",
    "Face",
    "Grant",
    "InvalidParameterError",
    "Limiter",
    "MAX_FACES_PER_PERSON",
    "MAX_ID_LENGTH",
    "MarginPolicy",
    "MissingExtraError",
    "MtsFaceClient",
    "MtsFacesError",
    "NotFoundError",
    "Person",
    "Priority",
    "QuotaLimiter",
    "RateLimiterError",
    "RedisWindowLimiter",
    "RegisteredFace",
    "RequestTimeoutError",
    "ResponseFormatError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "ServerError",
    "ThrottlingError",
    "TransportError",
    "ValidationError",
    "WindowLimiter",
    "__version__",
    "endpoint_for_region",
]
README = Path(__file__).resolve().parents[1] / "README.md"


def test_exported_names_are_pinned() -> None:
    # Adding or removing a public name is a decision: change this list with it.
    assert sorted(mts_faces.__all__) == sorted(EXPORTED)
    for name in mts_faces.__all__:
        assert hasattr(mts_faces, name), name
    public = {n for n in dir(mts_faces) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(EXPORTED), public - set(EXPORTED)


def test_every_import_the_readme_shows_exists() -> None:
    text = README.read_text(encoding="utf-8")
    imports = re.findall(r"^\s*from (mts_faces[\w.]*) import ([\w, ]+)$", text, re.MULTILINE)
    assert imports, "the README shows no import?"
    for module, names in imports:
        loaded = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(loaded, name), f"README: from {module} import {name}"


def test_import_loads_no_http_stack_and_no_emulator() -> None:
    code = (
        "import sys, json, mts_faces\n"
        "heavy = ['httpx', 'httpcore', 'anyio', 'aiohttp', 'yarl', 'redis', 'mts_faces.emulator']\n"
        "before = [m for m in heavy if m in sys.modules]\n"
        "mts_faces.MtsFaceClient(access_key_id='i', access_key_secret='s')\n"
        "after = [m for m in heavy if m in sys.modules]\n"
        "print(json.dumps([before, after]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = json.loads(done.stdout)
    assert before == []
    # The default client uses httpx; the unused HTTP stack and the emulator stay unloaded.
    assert "httpx" in after and "aiohttp" not in after and "mts_faces.emulator" not in after


def test_status_code_beside_http_status() -> None:
    error = ServerError("InternalError", "boom", http_status=500)
    assert error.status_code == error.http_status == 500


# --- logging -----------------------------------------------------------------------------------


def _always(status: int, code: str) -> httpx.MockTransport:
    body = {"Code": code, "Message": "m", "RequestId": "r"}
    return httpx.MockTransport(lambda request: httpx.Response(status, json=body))


async def test_retries_log_at_debug_and_only_the_final_failure_above(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("mts_faces").handlers)
    caplog.set_level(logging.DEBUG, logger="mts_faces")
    async with MtsFaceClient(
        access_key_id="i",
        access_key_secret="s",
        transport=_always(503, "ServiceUnavailable"),
        max_retries=2,
        backoff_base=0.0,
    ) as client:
        with pytest.raises(ServerError):
            await client.list_custom_persons()
    above_debug = [r for r in caplog.records if r.levelno > logging.DEBUG]
    retries = [r for r in caplog.records if " retry " in r.getMessage()]
    assert len(retries) == 2 and all(r.levelno == logging.DEBUG for r in retries)
    assert len(above_debug) == 1
    assert "ListCustomPersons failed after 3 attempt(s)" in above_debug[0].getMessage()


def test_an_app_that_never_configures_logging_prints_nothing() -> None:
    code = """
import asyncio, httpx
from mts_faces import MtsFaceClient, ServerError
body = {"Code": "ServiceUnavailable", "Message": "m", "RequestId": "r"}
transport = httpx.MockTransport(lambda request: httpx.Response(503, json=body))
async def main():
    async with MtsFaceClient(access_key_id="i", access_key_secret="s", transport=transport,
                             max_retries=3, backoff_base=0.0) as client:
        try:
            await client.list_custom_persons()
        except ServerError:
            print("raised")
asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "raised"
    assert done.stderr == ""

"""The HTTP layer's edges: compressed answers, header-unsafe credentials, timeouts, transports."""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from mts_faces import (
    ConfigurationError,
    Credentials,
    CredentialsError,
    MtsFaceClient,
    RequestTimeoutError,
    ResponseTooLargeError,
    TransportError,
)
from mts_faces._http import Backend, HttpTransport

from .test_http import BACKENDS, Received, Server

# 20 MB of zeros, about 20 kB on the wire.
BOMB = gzip.compress(b"\0" * 20_000_000, compresslevel=9)


async def answer_bomb(received: Received, writer: asyncio.StreamWriter) -> bool:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(BOMB), BOMB)
    )
    return True


@pytest.fixture
async def bomb_server() -> AsyncIterator[Server]:
    s = Server(reply=answer_bomb)
    await s.start()
    yield s
    await s.stop()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_gzip_bomb_is_refused_by_its_decompressed_size(
    backend: Backend, bomb_server: Server
) -> None:
    assert len(BOMB) < 1_000_000  # the declared length is under the cap: only streaming counts
    async with MtsFaceClient(
        access_key_id="LTAIbomb",
        access_key_secret="bomb-secret",
        endpoint=bomb_server.url,
        http_backend=backend,
        max_response_bytes=1_000_000,
    ) as client:
        with pytest.raises(ResponseTooLargeError, match="max_response_bytes=1000000"):
            await client.list_custom_persons()
    assert len(bomb_server.requests) == 1  # too large is not retried


# --- credentials that cannot travel in a header ------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("security_token", "SECRETTOKEN\n"),
        ("security_token", "SECRET\rTOKEN"),
        ("security_token", "SECRETTÖKEN"),
        ("access_key_secret", "SECRET\x00"),
        ("access_key_secret", "SECRET\n"),
        ("access_key_id", "LTAI SECRET"),
    ],
)
def test_credentials_that_cannot_travel_are_refused_without_echoing_them(
    field: str, value: str
) -> None:
    values = {"access_key_id": "LTAIok", "access_key_secret": "ok-secret", field: value}
    with pytest.raises(CredentialsError, match=field) as info:
        MtsFaceClient(**values)
    assert "SECRET" not in str(info.value)
    with pytest.raises(CredentialsError, match=field):
        Credentials(values["access_key_id"], values["access_key_secret"], values.get(field))


async def test_a_providers_bad_token_is_a_credentials_error_not_a_transport_one() -> None:
    class Provider:
        async def get_credentials(self) -> Credentials:
            return Credentials("LTAIok", "ok-secret", "SECRETTOKEN\n")

        def redact(self, text: str) -> str:
            return text

    sent: list[httpx.Request] = []
    async with MtsFaceClient(
        credentials=Provider(),
        transport=httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200)),
    ) as client:
        with pytest.raises(CredentialsError, match="security_token") as info:
            await client.register_custom_face("lib", "p", "https://x.example/a.jpg")
    assert "SECRETTOKEN" not in str(info.value)
    assert sent == []


@pytest.mark.parametrize(
    ("backend", "value"),
    # aiohttp sends a non-ASCII header value as UTF-8; httpx refuses it.
    [("httpx", "SECRETTOKEN\n"), ("aiohttp", "SECRETTOKEN\n"), ("httpx", "SECRETTÖKEN")],
)
async def test_a_header_the_library_refuses_is_not_sent_and_never_echoed(
    backend: Backend, value: str, server: Server
) -> None:
    """The one classifier: a header refused before a byte left is "not sent", not retryable,
    and the error text goes through the credentials' redaction."""
    t = HttpTransport(
        timeout=5.0,
        connect_timeout=5.0,
        max_connections=2,
        backend=backend,
        redact=lambda text: text.replace("SECRET", "***"),
    )
    try:
        with pytest.raises(TransportError) as info:
            await t.post(f"{server.url}/", {"x-acs-security-token": value})
    finally:
        await t.aclose()
    assert info.value.request_sent is False
    assert info.value.retryable is False
    assert "SECRET" not in str(info.value)
    assert server.requests == []


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    await s.start()
    yield s
    await s.stop()


# --- timeouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("field", ["timeout", "connect_timeout"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0, -1])
def test_a_bad_timeout_is_a_configuration_error_naming_it(
    backend: Backend, field: str, bad: float
) -> None:
    with pytest.raises(ConfigurationError, match=f"^{field} must be > 0 seconds"):
        MtsFaceClient(
            access_key_id="i", access_key_secret="s", http_backend=backend, **{field: bad}
        )


@pytest.mark.parametrize(
    ("raised", "sent"),
    [
        (httpx.ReadTimeout, True),
        (httpx.WriteTimeout, True),
        (httpx.ConnectTimeout, False),
        (httpx.PoolTimeout, False),
    ],
)
async def test_a_lent_clients_own_timeout_is_a_request_timeout(
    raised: type[httpx.TimeoutException], sent: bool
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise raised("timed out", request=request)

    lent = httpx.AsyncClient(transport=httpx.MockTransport(handler), timeout=0.05)
    async with (
        lent,
        MtsFaceClient(
            access_key_id="LTAIlent",
            access_key_secret="lent-secret",
            http_client=lent,
            max_retries=1,
            backoff_base=0.0,
        ) as client,
    ):
        with pytest.raises(RequestTimeoutError) as info:
            await client.list_custom_persons()
    assert info.value.request_sent is sent
    assert calls == 2  # a listing is idempotent: retried either way


# --- transport= ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [object(), "http://x", httpx.AsyncClient])
def test_transport_takes_only_an_httpx_transport(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"httpx\.AsyncBaseTransport"):
        MtsFaceClient(access_key_id="i", access_key_secret="s", transport=bad)


# --- logs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["httpx", "httpcore"])
def test_a_v1_token_in_a_logged_url_is_hidden(name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=name)
    logging.getLogger(name).info(
        "HTTP Request: %s %s", "POST", "https://h/?SecurityToken=SECRET&a=1"
    )
    logging.getLogger(name).debug("no token %d", 1)
    assert [r.getMessage() for r in caplog.records] == [
        "HTTP Request: POST https://h/?SecurityToken=***&a=1",
        "no token 1",
    ]

"""The HTTP transport on real loopback sockets: wire bytes, keep-alive, TLS, failure classes."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import httpx
import pytest
import trustme

from mts_faces import (
    ConfigurationError,
    MissingExtraError,
    MtsFaceClient,
    RequestTimeoutError,
    ResponseTooLargeError,
    TransportError,
)
from mts_faces._http import Backend, HttpTransport, ssl_context
from mts_faces._signing import canonical_query

from .conftest import SECRET, TOKEN
from .reference import load

OK_BODY = b'{"FaceId":"f1","RequestId":"r1"}'
BACKENDS: list[Backend] = ["aiohttp", "httpx"]


@attrs.define
class Received:
    """One request as the server read it off the socket."""

    line: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name]
        assert len(values) <= 1, f"header {name} sent {len(values)} times"
        return values[0] if values else None


Reply = Callable[[Received, asyncio.StreamWriter], Awaitable[bool]]


async def answer_ok(received: Received, writer: asyncio.StreamWriter) -> bool:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(OK_BODY), OK_BODY)
    )
    return True


@attrs.define
class Server:
    """A raw HTTP/1.1 loopback server: records requests, replies as ``reply`` says."""

    reply: Reply = answer_ok
    requests: list[Received] = attrs.field(factory=list)
    connections: int = 0
    port: int = 0
    tls: ssl.SSLContext | None = None
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
                headers = [tuple(x.strip() for x in h.split(":", 1)) for h in lines]
                length = int(dict((k.lower(), v) for k, v in headers).get("content-length", 0))
                body = await reader.readexactly(length)
                received = Received(line, headers, body)  # type: ignore[arg-type]
                self.requests.append(received)
                if not await self.reply(received, writer):
                    return
                await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    await s.start()
    yield s
    await s.stop()


def transport(backend: Backend = "aiohttp", **kw: Any) -> HttpTransport:
    options: dict[str, Any] = {"timeout": 5.0, "connect_timeout": 5.0, "max_connections": 4}
    return HttpTransport(backend=backend, **{**options, **kw})


# --- wire format -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", load("signature-v3-vectors.json"), ids=["ascii", "chinese-sts"])
async def test_signed_request_reaches_the_wire_byte_for_byte(
    case: dict[str, Any], backend: Backend, server: Server
) -> None:
    # The query was percent-encoded when it was signed: re-quoting it would break the signature.
    query = canonical_query(case["query"])
    headers = {**case["signed_headers"], "authorization": case["authorization"]}
    t = transport(backend)
    try:
        response = await t.post(f"{server.url}/?{query}", headers)
    finally:
        await t.aclose()
    assert (response.status, response.body) == (200, OK_BODY)
    assert response.headers["content-type"] == "application/json"
    [sent] = server.requests
    assert sent.line == f"POST /?{query} HTTP/1.1"
    for name, value in headers.items():
        assert sent.header(name) == value
    # An empty body, and no unsigned Content-Type (version 3 says sign it when present).
    assert sent.body == b"" and sent.header("content-length") == "0"
    assert sent.header("content-type") is None


@pytest.mark.parametrize("backend", BACKENDS)
async def test_error_answers_pass_through_with_case_insensitive_headers(
    backend: Backend, server: Server
) -> None:
    body = b'{"Code":"Throttling.User","RequestId":"r"}'

    async def throttle(_: Received, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\nX-Acs-Retry-After: 2\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        return True

    server.reply = throttle
    t = transport(backend)
    try:
        response = await t.post(f"{server.url}/", {})
    finally:
        await t.aclose()
    assert (response.status, response.body) == (400, body)
    assert response.headers.get("x-acs-retry-after") == "2"


async def test_connections_are_kept_alive_and_bounded(server: Server) -> None:
    t = transport(max_connections=2)
    try:
        for _ in range(5):
            await t.post(f"{server.url}/", {})
        assert server.connections == 1
        await asyncio.gather(*(t.post(f"{server.url}/", {}) for _ in range(20)))
    finally:
        await t.aclose()
    assert len(server.requests) == 25 and server.connections <= 2


# --- failures: was the request sent? ---------------------------------------------------------


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("backend", BACKENDS)
async def test_refused_connection_is_not_sent(backend: Backend) -> None:
    t = transport(backend)
    try:
        with pytest.raises(TransportError) as info:
            await t.post(f"http://127.0.0.1:{_refused_port()}/", {})
    finally:
        await t.aclose()
    assert info.value.request_sent is False
    assert str(info.value).startswith("request not sent")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_hang_up_after_the_request_is_sent_once_and_not_repeated(
    backend: Backend, server: Server
) -> None:
    async def hang_up(_: Received, writer: asyncio.StreamWriter) -> bool:
        return False

    server.reply = hang_up
    t = transport(backend)
    try:
        with pytest.raises(TransportError) as info:
            await t.post(f"{server.url}/?a=1", {})
    finally:
        await t.aclose()
    assert info.value.request_sent is True
    # A POST must never be re-sent by the HTTP library: the registrar's exactly-once relies on it.
    assert len(server.requests) == 1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_read_timeout_counts_as_sent(backend: Backend, server: Server) -> None:
    never = asyncio.Event()

    async def stall(_: Received, writer: asyncio.StreamWriter) -> bool:
        await never.wait()
        return False

    server.reply = stall
    t = transport(backend, timeout=0.05)
    try:
        with pytest.raises(TransportError) as info:
            await t.post(f"{server.url}/", {})
    finally:
        never.set()
        await t.aclose()
    assert info.value.request_sent is True and len(server.requests) == 1


async def test_error_text_never_carries_the_query(server: Server) -> None:
    async def garbage(_: Received, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"NOT-HTTP garbage\r\n\r\n")
        return False

    server.reply = garbage
    t = transport()
    token = quote(TOKEN, safe="")
    try:
        with pytest.raises(TransportError) as info:
            await t.post(f"{server.url}/?SecurityToken={token}&Signature=abc", {})
    finally:
        await t.aclose()
    assert info.value.request_sent is True
    assert token not in str(info.value) and "Signature=abc" not in str(info.value)


async def test_closed_transport_refuses_to_send(server: Server) -> None:
    t = transport()
    await t.post(f"{server.url}/", {})
    await t.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await t.post(f"{server.url}/", {})


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_server(ca: trustme.CA) -> AsyncIterator[Server]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    s = Server(tls=context)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("verify_kind", ["path", "context", "off"])
async def test_tls_verify_options(
    verify_kind: str, backend: Backend, tls_server: Server, ca_file: str
) -> None:
    choices: dict[str, bool | str | ssl.SSLContext] = {
        "path": ca_file,
        "context": ssl.create_default_context(cafile=ca_file),
        "off": False,
    }
    verify = choices[verify_kind]
    t = transport(backend, verify=verify)
    try:
        for _ in range(3):
            assert (await t.post(f"{tls_server.url}/", {})).status == 200
    finally:
        await t.aclose()
    assert tls_server.connections == 1  # one handshake, then keep-alive


@pytest.mark.parametrize("backend", BACKENDS)
async def test_untrusted_certificate_is_a_connect_failure(
    backend: Backend, tls_server: Server
) -> None:
    t = transport(backend)  # verify=True: Mozilla's CA set, which never signed the test CA
    try:
        with pytest.raises(TransportError) as info:
            await t.post(f"{tls_server.url}/", {})
    finally:
        await t.aclose()
    assert info.value.request_sent is False and tls_server.requests == []


def test_bad_verify_values_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="CA path"):
        ssl_context(str(tmp_path / "missing.pem"))
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(ConfigurationError, match="cannot load"):
        ssl_context(str(not_pem))
    assert ssl_context(True) is ssl_context(True)  # the CA bundle is loaded once


# --- backend choice --------------------------------------------------------------------------


async def test_backend_choice() -> None:
    assert transport().backend == "aiohttp"
    assert HttpTransport(timeout=1, connect_timeout=1, max_connections=1).backend == "httpx"
    mock = httpx.MockTransport(lambda r: httpx.Response(200))
    with pytest.raises(ConfigurationError, match="not both"):
        transport("httpx", transport=mock, http_client=httpx.AsyncClient())
    with pytest.raises(ConfigurationError, match="http_backend='aiohttp'"):
        MtsFaceClient(
            access_key_id="i", access_key_secret="s", transport=mock, http_backend="aiohttp"
        )
    lent = httpx.AsyncClient()
    try:
        t = HttpTransport(timeout=1, connect_timeout=1, max_connections=1, http_client=lent)
        assert t.backend == "httpx"
        await t.aclose()
        assert not lent.is_closed  # a lent client belongs to its owner
        with pytest.raises(ConfigurationError):
            transport("aiohttp", http_client=lent)
    finally:
        await lent.aclose()
    with pytest.raises(ConfigurationError, match="http_backend"):
        transport("requests")  # type: ignore[arg-type]


async def test_client_round_trip_on_default_backend(server: Server) -> None:
    async with MtsFaceClient(
        access_key_id="id",
        access_key_secret=SECRET,
        security_token=TOKEN,
        endpoint=server.url,
        qps=1000,
    ) as client:
        face = await client.register_custom_face("c", "p", "http://x/1.jpg")
    assert face.face_id == "f1"
    [sent] = server.requests
    assert sent.header("x-acs-action") == "RegisterCustomFace"
    assert sent.header("host") == f"127.0.0.1:{server.port}"


# --- deadline, answer size, what is not retried ----------------------------------------------


def _drip(total: int, every: float, sent: list[int]) -> Reply:
    """Declare ``total`` bytes, then send one every ``every`` seconds."""

    async def reply(_: Received, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        try:
            for _ in range(total):
                await asyncio.sleep(every)
                writer.write(b" ")
                await writer.drain()
                sent[0] += 1
        except ConnectionError:
            pass
        return False

    return reply


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_dripping_body_hits_the_total_deadline(backend: Backend, server: Server) -> None:
    # Each byte comes well within any read timeout; only a deadline on the whole attempt ends it.
    sent = [0]
    server.reply = _drip(10_000, 0.02, sent)
    t = transport(backend, timeout=0.4)
    try:
        with pytest.raises(RequestTimeoutError) as info:
            await t.post(f"{server.url}/", {})
    finally:
        await t.aclose()
    assert info.value.request_sent is True and info.value.retryable
    assert 0 < sent[0] < 10_000  # bytes were arriving: a read timeout would never have fired


@pytest.mark.parametrize("backend", BACKENDS)
async def test_per_call_timeout_overrides_the_transport_deadline(
    backend: Backend, server: Server
) -> None:
    sent = [0]
    server.reply = _drip(10_000, 0.02, sent)
    t = transport(backend, timeout=1000.0)
    try:
        # If the per-call value were ignored, wait_for would end the test with a TimeoutError.
        with pytest.raises(RequestTimeoutError, match=r"within 0\.2 s"):
            await asyncio.wait_for(t.post(f"{server.url}/", {}, timeout=0.2), 30)
    finally:
        await t.aclose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_declared_100_mb_answer_is_refused_unread(backend: Backend, server: Server) -> None:
    hold = asyncio.Event()

    async def huge(_: Received, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n{" % (100 * 2**20))
        await writer.drain()
        await hold.wait()  # the rest never comes: reading it would hit the deadline instead
        return False

    server.reply = huge
    t = transport(backend, timeout=30.0, max_response_bytes=1 << 20)
    try:
        with pytest.raises(ResponseTooLargeError, match="declares 104857600 bytes") as info:
            await t.post(f"{server.url}/", {})
    finally:
        hold.set()
        await t.aclose()
    assert info.value.request_sent is True and not info.value.retryable


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_endless_chunked_answer_is_cut_at_the_cap(
    backend: Backend, server: Server
) -> None:
    written = [0]

    async def endless(_: Received, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        try:
            while written[0] < 200 * 2**20:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                written[0] += len(chunk)
        except ConnectionError:
            pass
        return False

    server.reply = endless
    t = transport(backend, timeout=30.0, max_response_bytes=1 << 20)
    try:
        with pytest.raises(ResponseTooLargeError, match="max_response_bytes=1048576"):
            await t.post(f"{server.url}/", {})
    finally:
        await t.aclose()
    # The client stopped reading at the cap; the server got no further than socket buffers.
    assert written[0] < 100 * 2**20


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_refused_certificate_is_not_retried(backend: Backend, tls_server: Server) -> None:
    async with MtsFaceClient(
        access_key_id="id",
        access_key_secret=SECRET,
        endpoint=tls_server.url,
        http_backend=backend,
        max_retries=3,
        backoff_base=0.0,
    ) as client:
        with pytest.raises(TransportError, match="certificate") as info:
            await client.list_custom_persons()
    assert info.value.request_sent is False and not info.value.retryable
    assert client.attempts == 1  # one place decides: a certificate does not get better


def test_missing_aiohttp_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install '\.\[aiohttp\]'") as info:
        MtsFaceClient(access_key_id="i", access_key_secret="s", http_backend="aiohttp")
    assert info.value.extra == "aiohttp"
    MtsFaceClient(access_key_id="i", access_key_secret="s")  # the default needs no extra


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
async def test_a_bad_per_call_timeout_is_refused_before_any_request(bad: float) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"RequestId": "r", "Categories": {"Category": []}})

    async with MtsFaceClient(
        access_key_id="i", access_key_secret="s", transport=httpx.MockTransport(handler)
    ) as client:
        with pytest.raises(ConfigurationError, match="timeout must be > 0"):
            await client.list_custom_persons(timeout=bad)
        await client.list_custom_persons(timeout=5)
    assert len(sent) == 1

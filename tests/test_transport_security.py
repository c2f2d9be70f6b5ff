"""Transport security: TLS is verified unless the caller turns it off in so many words, plain
http goes to loopback only (or with an explicit opt-in), and no redirect is followed.

tests/test_emulator.py (TLS emulator trusted by context or CA file, refused without) and
tests/test_http.py (verify options per backend) cover the basics; this file adds the command,
hostname checks, the environment, tricky endpoints and redirects, on both HTTP backends
(httpx, the default, and aiohttp). A lent ``httpx.AsyncClient`` is the user's own
configuration (its TLS, proxies and environment apply); only redirects stay refused for it.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from yarl import URL

from mts_faces import APIError, ConfigurationError, MtsFaceClient, TransportError
from mts_faces._http import HttpTransport
from mts_faces.cli import main
from mts_faces.emulator import Emulator, EmulatorConfig, EmulatorThread

BACKENDS = ["aiohttp", "httpx"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name: str = request.param
    monkeypatch.setattr(HttpTransport, "default_backend", name)
    return name


@pytest.fixture
async def tls_emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(qps=None, tls=True)) as emu:
        yield emu


def client(emu: Emulator, **options: object) -> MtsFaceClient:
    return MtsFaceClient(
        endpoint=emu.url,
        access_key_id=emu.key.access_key_id,
        access_key_secret=emu.key.access_key_secret,
        max_retries=0,
        **options,  # type: ignore[arg-type]
    )


# --- TLS verification -----------------------------------------------------------------------


async def test_untrusted_ca_fails_trusted_ca_works(
    backend: str, tls_emulator: Emulator, tmp_path: Path
) -> None:
    async with client(tls_emulator) as default:  # verify=True: the public CA set only
        with pytest.raises(TransportError) as info:
            await default.list_custom_persons()
    assert info.value.request_sent is False
    assert tls_emulator.stats.requests == 0  # the handshake failed: no request was read
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    async with client(tls_emulator, verify=str(other_ca)) as wrong_ca:
        with pytest.raises(TransportError):
            await wrong_ca.list_custom_persons()
    ca = tmp_path / "ca.pem"
    tls_emulator.write_ca(ca)
    async with client(tls_emulator, verify=str(ca)) as trusting:
        await trusting.register_custom_face("lib", "p", "https://img.example.com/1.jpg")
    assert tls_emulator.stats.faces_stored == 1


async def test_verification_is_off_only_when_asked(
    backend: str, tls_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "ca.pem"
    tls_emulator.write_ca(ca)
    # Variables other tools read to loosen or redirect TLS trust change nothing here.
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, str(ca))
    monkeypatch.setenv("PYTHONHTTPSVERIFY", "0")
    async with client(tls_emulator) as default:
        with pytest.raises(TransportError):
            await default.list_custom_persons()
    async with client(tls_emulator, verify=False) as unverified:  # the explicit opt-out
        await unverified.list_custom_persons()
    assert tls_emulator.stats.accepted == 1


@pytest.fixture
def foreign_cert(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate from it for another host name than 127.0.0.1."""
    ca = trustme.CA()
    cert = ca.issue_cert("mts.cn-shanghai.aliyuncs.com")
    paths = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(paths[0]))
    cert.cert_chain_pems[0].write_to_path(str(paths[1]))
    cert.private_key_pem.write_to_path(str(paths[2]))
    return paths


async def test_host_name_is_checked_even_with_a_trusted_ca(
    backend: str, foreign_cert: tuple[Path, Path, Path]
) -> None:
    ca, cert, key = foreign_cert
    config = EmulatorConfig(qps=None, tls=True, certfile=str(cert), keyfile=str(key))
    async with Emulator(config) as emu, client(emu, verify=str(ca)) as c:
        with pytest.raises(TransportError) as info:
            await c.list_custom_persons()
        assert emu.stats.requests == 0
    assert info.value.request_sent is False


@pytest.fixture
def tls_emulator_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorThread]:
    with Emulator.in_thread(EmulatorConfig(qps=None, tls=True)) as emu:
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emu.key.access_key_id)
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", emu.key.access_key_secret)
        yield emu


def test_command_needs_the_ca_to_talk_tls(
    tls_emulator_thread: EmulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emu = tls_emulator_thread
    manifest = tmp_path / "faces.csv"
    manifest.write_text("category_id,person_id,image_url\nlib,p,https://img.example.com/1.jpg\n")
    out = tmp_path / "out.jsonl"
    argv = ["register", str(manifest), "--endpoint", emu.url, "--output", str(out)]
    assert main([*argv, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "certificate" in out.read_text().lower()  # the row failed, saying why
    assert emu.library()["Category"] == []
    assert emu.ca_pem is not None
    ca = tmp_path / "ca.pem"
    ca.write_bytes(emu.ca_pem)
    assert main([*argv, "--no-progress", "--ca-file", str(ca)]) == 0
    assert '"registered"' in out.read_text()


# --- plain http ------------------------------------------------------------------------------


def test_command_refuses_plain_http_off_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIid")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "secret")
    manifest = tmp_path / "faces.csv"
    manifest.write_text("category_id,person_id,image_url\nlib,p,https://img.example.com/1.jpg\n")
    argv = ["register", str(manifest), "--endpoint", "http://mts.cn-shanghai.aliyuncs.com"]
    assert main([*argv, "--output", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--allow-insecure-http" in err or "allow_insecure_http" in err
    assert "Traceback" not in err


# Endpoints that try to look like loopback, or to hide another host behind it.
TRICKY_ENDPOINTS = [
    "http://127.0.0.1.nip.io",
    "http://localhost.evil.example",
    "http://127.1",
    "http://0x7f000001",
    "http://[::ffff:127.0.0.1]",
    "http://evil.example#@127.0.0.1",
    "http://evil.example?@127.0.0.1",
    "http://evil.example/@127.0.0.1",
    "http://127.0.0.1:80@evil.example",
    "http://127.0.0.1%2F@evil.example",
    "http://[::1]@evil.example",
    "http://evil.example;@127.0.0.1",
    "http://evil.example%5C@127.0.0.1",
    "http://127.0.0.1#@evil.example",
    "http://\t127.0.0.1",
]


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@pytest.mark.parametrize("endpoint", TRICKY_ENDPOINTS)
def test_plain_http_reaches_loopback_only(endpoint: str) -> None:
    """Refused, or else every HTTP library we use would connect to loopback."""
    try:
        c = MtsFaceClient(endpoint=endpoint, access_key_id="i", access_key_secret="s")
    except ConfigurationError:
        return
    target = f"{c.endpoint}/?Action=x"
    assert _loopback(URL(target, encoded=True).host), (endpoint, c.endpoint)
    assert _loopback(httpx.URL(target).host), (endpoint, c.endpoint)


@pytest.mark.parametrize(
    "endpoint", ["http://user:pw@127.0.0.1:9", "http://evil.example\\@127.0.0.1"]
)
def test_endpoint_with_user_info_is_refused_up_front(endpoint: str) -> None:
    with pytest.raises(ConfigurationError):
        MtsFaceClient(endpoint=endpoint, access_key_id="i", access_key_secret="s")


# --- redirects -------------------------------------------------------------------------------


async def _serve(reply: bytes, hits: list[bytes]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hits.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(reply)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_redirects_are_not_followed(backend: str) -> None:
    stolen: list[bytes] = []
    sink = await _serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", stolen)
    sink_port = sink.sockets[0].getsockname()[1]
    seen: list[bytes] = []
    location = f"http://127.0.0.1:{sink_port}/steal"
    redirect = await _serve(
        f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n".encode(),
        seen,
    )
    port = redirect.sockets[0].getsockname()[1]
    try:
        async with MtsFaceClient(
            endpoint=f"http://127.0.0.1:{port}",
            access_key_id="LTAIid",
            access_key_secret="secret",
            max_retries=0,
        ) as c:
            with pytest.raises(APIError) as info:
                await c.list_custom_persons()
    finally:
        for server in (redirect, sink):
            server.close()
            await server.wait_closed()
    assert info.value.http_status == 307
    assert len(seen) == 1 and stolen == []  # the signed request went nowhere else


async def test_a_lent_client_that_follows_redirects_still_does_not() -> None:
    stolen: list[bytes] = []
    sink = await _serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", stolen)
    location = f"http://127.0.0.1:{sink.sockets[0].getsockname()[1]}/steal"
    seen: list[bytes] = []
    redirect = await _serve(
        f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode(),
        seen,
    )
    port = redirect.sockets[0].getsockname()[1]
    lent = httpx.AsyncClient(follow_redirects=True)
    try:
        async with MtsFaceClient(
            endpoint=f"http://127.0.0.1:{port}",
            access_key_id="LTAIid",
            access_key_secret="secret",
            max_retries=0,
            http_client=lent,
        ) as c:
            with pytest.raises(APIError) as info:
                await c.list_custom_persons()
    finally:
        await lent.aclose()
        for server in (redirect, sink):
            server.close()
            await server.wait_closed()
    assert info.value.status_code == 302
    assert len(seen) == 1 and stolen == []


async def test_proxy_variables_are_ignored(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    proxied: list[bytes] = []
    proxy = await _serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", proxied)
    proxy_url = f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, proxy_url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "")
    try:
        async with Emulator(EmulatorConfig(qps=None)) as emu, client(emu) as c:
            await c.list_custom_persons()
            assert emu.stats.accepted == 1  # straight to the endpoint
    finally:
        proxy.close()
        await proxy.wait_closed()
    assert proxied == []

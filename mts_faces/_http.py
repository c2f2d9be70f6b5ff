"""The HTTP layer: the only module that imports an HTTP library; the transport changes here alone.

It sends one signed POST and returns the raw answer, or raises :class:`TransportError` saying
whether the request can have reached the service.

Two backends sit behind :class:`HttpTransport`. The default drives aiohttp directly: measured on
loopback, httpx's client layer (URL and header models, its connection pool) costs several times
the CPU of the whole rest of a call, and httpcore's pool bookkeeping grows with the number of
connections. The httpx backend stays for callers that lend their own ``httpx.AsyncClient``
(proxies, custom transports) and for tests that mock HTTP with ``respx``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import ssl
from collections.abc import Mapping
from typing import ClassVar, Literal, Protocol

import aiohttp
import attrs
import certifi
import httpx
from yarl import URL

from ._exceptions import ConfigurationError, TransportError

Backend = Literal["aiohttp", "httpx"]
Verify = bool | str | ssl.SSLContext

# Raised before a single byte of the request can have left this process.
_HTTPX_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)
# ClientConnectorError covers refused connections, DNS and TLS handshake failures; a failure
# while writing on an open connection is a plain ClientOSError and counts as sent.
_AIOHTTP_NOT_SENT = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerFingerprintMismatch,
    aiohttp.InvalidURL,
    aiohttp.NonHttpUrlClientError,
)
# A V1 query carries the signature and any STS token; error texts never repeat it.
_QUERY = re.compile(r"\?[^\s'\"<>)]*")


class _RedactQueryToken(logging.Filter):
    """Hide a version-1 ``SecurityToken`` in the request URLs that httpx logs at INFO."""

    _TOKEN = re.compile(r"(SecurityToken=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "SecurityToken=" in message:
            record.msg, record.args = self._TOKEN.sub(r"\1***", message), None
        return True


_redact_filter = _RedactQueryToken()
logging.getLogger("httpx").addFilter(_redact_filter)


@attrs.frozen
class RawResponse:
    """Status, headers (looked up case-insensitively) and body of one answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class _Backend(Protocol):
    async def post(self, url: str, headers: Mapping[str, str]) -> RawResponse: ...

    async def aclose(self) -> None: ...


class HttpTransport:
    """One pooled, keep-alive connection set for the client's whole life.

    ``backend`` picks the HTTP library (default :attr:`default_backend`); lending an
    ``http_client`` implies ``"httpx"``.
    """

    default_backend: ClassVar[Backend] = "aiohttp"
    """The backend used when none is named; tests that mock httpx switch it to ``"httpx"``."""

    def __init__(
        self,
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        verify: Verify = True,
        http_client: httpx.AsyncClient | None = None,
        backend: Backend | None = None,
    ) -> None:
        if http_client is not None and backend == "aiohttp":
            raise ConfigurationError("an httpx.AsyncClient can only be used by the httpx backend")
        self.backend: Backend = (
            "httpx" if http_client is not None else (backend or self.default_backend)
        )
        self._impl: _Backend
        if self.backend == "aiohttp":
            self._impl = _AiohttpBackend(timeout, connect_timeout, max_connections, verify)
        elif self.backend == "httpx":
            self._impl = _HttpxBackend(
                timeout, connect_timeout, max_connections, verify, http_client
            )
        else:
            raise ConfigurationError(f"backend must be 'aiohttp' or 'httpx', got {backend!r}")

    async def post(self, url: str, headers: Mapping[str, str]) -> RawResponse:
        """POST with an empty body; failures become :class:`TransportError`."""
        return await self._impl.post(url, headers)

    async def aclose(self) -> None:
        """Close the pool (a lent httpx client stays open: its owner closes it)."""
        await self._impl.aclose()


# --- aiohttp -----------------------------------------------------------------------------------


class _AiohttpBackend:
    """aiohttp session created on first use, inside the running event loop it belongs to."""

    def __init__(
        self, timeout: float, connect_timeout: float, max_connections: int, verify: Verify
    ) -> None:
        self._ssl = _aiohttp_ssl(verify)
        self._max_connections = max_connections
        # pool wait unbounded, like httpx's pool=None: the client's semaphore already queues.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=connect_timeout, sock_read=timeout
        )
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=30.0,
            ssl=self._ssl,
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            # The service sets no cookie we need, and credentials come from our signer only.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            # aiohttp would add "Content-Type: application/octet-stream" to the empty body, an
            # unsigned header the version-3 rules say must be signed when present.
            skip_auto_headers=("Content-Type",),
        )

    async def post(self, url: str, headers: Mapping[str, str]) -> RawResponse:
        session = self._session
        if session is None:
            if self._closed:
                # As httpx does: a closed client is a bug in the caller, not a network fault.
                raise RuntimeError("cannot send a request: the transport has been closed")
            session = self._session = self._open()
        try:
            # encoded=True: the query is already percent-encoded exactly as it was signed;
            # letting yarl re-quote it would break the signature.
            async with session.post(
                URL(url, encoded=True), headers=headers, allow_redirects=False
            ) as response:
                body = await response.read()
        except _AIOHTTP_NOT_SENT as exc:
            raise _not_sent(exc) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # aiohttp never re-sends a POST on a stale keep-alive connection, so this attempt
            # is the only one and may have reached the service.
            raise _sent(exc) from exc
        return RawResponse(response.status, response.headers, body)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


def _aiohttp_ssl(verify: Verify) -> ssl.SSLContext | bool:
    # aiohttp takes ssl=False to skip certificate checks; on a plain-http endpoint it is unused.
    return False if verify is False else ssl_context(verify)


# --- httpx -------------------------------------------------------------------------------------


class _HttpxBackend:
    """httpx.AsyncClient, ours or lent by the caller."""

    def __init__(
        self,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        verify: Verify,
        http_client: httpx.AsyncClient | None,
    ) -> None:
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout, pool=None),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            verify=ssl_context(verify),
            follow_redirects=False,
            # Credentials come from our signer only, never from the environment or .netrc.
            trust_env=False,
        )

    async def post(self, url: str, headers: Mapping[str, str]) -> RawResponse:
        try:
            response = await self._client.post(url, headers=headers)
        except _HTTPX_NOT_SENT as exc:
            raise _not_sent(exc) from exc
        except httpx.TransportError as exc:
            raise _sent(exc) from exc
        return RawResponse(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


# --- shared ------------------------------------------------------------------------------------


def ssl_context(verify: Verify) -> ssl.SSLContext:
    """The TLS context for ``verify``: True (Mozilla's CA set), False, a CA file or directory."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is True:
        return _default_ssl_context()
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if not isinstance(verify, str) or not os.path.exists(verify):
        raise ConfigurationError(
            f"verify must be a bool, an SSLContext or a CA path; got {verify!r}"
        )
    try:
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    except ssl.SSLError as exc:
        raise ConfigurationError(f"cannot load CA certificates from {verify!r}: {exc}") from exc


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs tens of milliseconds; one context serves every client.
    return ssl.create_default_context(cafile=certifi.where())


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_QUERY.sub('?...', str(exc))}"


def _not_sent(exc: BaseException) -> TransportError:
    return TransportError(f"request not sent: {_describe(exc)}", request_sent=False)


def _sent(exc: BaseException) -> TransportError:
    return TransportError(f"request sent, no answer: {_describe(exc)}", request_sent=True)

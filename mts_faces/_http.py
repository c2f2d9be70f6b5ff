"""The HTTP layer: the only module that touches an HTTP library; the transport changes here alone.

It sends one signed POST and returns the raw answer, or raises :class:`TransportError` saying
whether the request can have reached the service and whether another attempt can help.

Two backends sit behind :class:`HttpTransport`:

- ``"httpx"`` (the default): an ``httpx.AsyncClient``, ours or lent by the caller. It is the
  public seam: ``respx`` intercepts it, ``httpx.MockTransport`` and the emulator's in-process
  transport plug into it, and a lent client brings the caller's proxies, limits and hooks.
- ``"aiohttp"`` (the ``aiohttp`` extra): drives aiohttp directly, the fast path. Measured on
  loopback (``python -m benchmarks``) it costs a fraction of httpx's CPU per call, because
  httpcore's pool and its anyio streams cost several times the rest of a call. respx does
  not see it.

Either way every attempt has one total deadline (a body trickling in a byte at a time still
times out) and an answer larger than ``max_response_bytes`` is refused while it streams in,
never buffered whole. Neither library is imported until a transport is built.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import os
import re
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import attrs
import certifi

from ._exceptions import (
    ConfigurationError,
    RequestTimeoutError,
    ResponseTooLargeError,
    TransportError,
)
from ._extras import import_extra

if TYPE_CHECKING:
    import aiohttp
    import httpx

Backend = Literal["httpx", "aiohttp"]
Verify = bool | str | ssl.SSLContext

DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""Answers above this size are refused (a listing of a few hundred thousand faces fits)."""

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
    async def post(self, url: str, headers: Mapping[str, str], limit: int) -> RawResponse: ...

    async def aclose(self) -> None: ...


class HttpTransport:
    """One pooled, keep-alive connection set for the client's whole life.

    Args:
        timeout: total seconds one attempt may take, connecting and reading the whole answer
            included (``post`` may narrow it per call).
        connect_timeout: seconds to open a connection (TLS handshake included); a request that
            fails there surely never left.
        max_connections: connections kept open at most.
        verify: TLS trust: True (Mozilla's CA set from certifi), False (no checks), a CA file or
            folder, or an ``ssl.SSLContext``. Ignored for a lent ``http_client``.
        http_client: an ``httpx.AsyncClient`` to send with; it stays the caller's (never closed
            here) and its own TLS, proxy and environment settings apply.
        transport: an ``httpx.AsyncBaseTransport`` under a client of ours (``MockTransport``,
            the emulator's in-process transport); closed with this object.
        backend: ``"httpx"`` (default: :attr:`default_backend`) or ``"aiohttp"`` (the fast
            path, the ``aiohttp`` extra).
        max_response_bytes: answers above this many bytes are refused as they stream in.
    """

    default_backend: ClassVar[Backend] = "httpx"
    """The backend used when none is named."""

    def __init__(
        self,
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        verify: Verify = True,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        backend: Backend | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        lent = http_client is not None or transport is not None
        if http_client is not None and transport is not None:
            raise ConfigurationError("pass http_client or transport, not both")
        if lent and backend == "aiohttp":
            raise ConfigurationError(
                "http_client and transport are httpx objects; they cannot be used with "
                "http_backend='aiohttp'"
            )
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout}")
        if max_response_bytes < 1:
            raise ConfigurationError(f"max_response_bytes must be >= 1, got {max_response_bytes}")
        self.backend: Backend = "httpx" if lent else (backend or self.default_backend)
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self._impl: _Backend
        if self.backend == "aiohttp":
            self._impl = _AiohttpBackend(connect_timeout, max_connections, verify)
        elif self.backend == "httpx":
            self._impl = _HttpxBackend(
                connect_timeout, max_connections, verify, http_client, transport
            )
        else:
            raise ConfigurationError(f"http_backend must be 'httpx' or 'aiohttp', got {backend!r}")

    async def post(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (per attempt)
    ) -> RawResponse:
        """POST with an empty body within ``timeout`` seconds (default: the transport's).

        Failures become :class:`TransportError`; the deadline, :class:`RequestTimeoutError`;
        an answer too large, :class:`ResponseTooLargeError`.
        """
        deadline = self.timeout if timeout is None else timeout
        if not deadline > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout}")
        scope = asyncio.timeout(deadline)
        try:
            async with scope:
                return await self._impl.post(url, headers, self.max_response_bytes)
        except TimeoutError as exc:
            if not scope.expired():
                raise
            # The deadline cannot tell whether the request left: count it as sent (the safe
            # side for a call that must not be repeated blindly).
            raise RequestTimeoutError(
                f"request sent, no complete answer within {deadline:g} s", request_sent=True
            ) from exc

    async def aclose(self) -> None:
        """Close the pool (a lent httpx client stays open: its owner closes it)."""
        await self._impl.aclose()


def fast_backend() -> Backend:
    """``"aiohttp"`` when the ``aiohttp`` extra is installed, else ``"httpx"`` (the CLI's pick)."""
    return "aiohttp" if importlib.util.find_spec("aiohttp") is not None else "httpx"


# --- httpx -------------------------------------------------------------------------------------


class _HttpxBackend:
    """httpx.AsyncClient, ours (over httpx's transport or a given one) or lent by the caller."""

    def __init__(
        self,
        connect_timeout: float,
        max_connections: int,
        verify: Verify,
        http_client: httpx.AsyncClient | None,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        import httpx

        self._httpx = httpx
        self._owns_client = http_client is None
        if http_client is None:
            limits = httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            )
            # Read, write and pool waits are bounded by the attempt's total deadline.
            http_client = httpx.AsyncClient(
                timeout=httpx.Timeout(None, connect=connect_timeout),
                limits=limits,
                verify=ssl_context(verify) if transport is None else True,
                transport=transport,
                follow_redirects=False,
                # Credentials come from our signer only; no proxy or CA from the environment.
                trust_env=False,
            )
        self._client = http_client

    async def post(self, url: str, headers: Mapping[str, str], limit: int) -> RawResponse:
        httpx = self._httpx
        try:
            # follow_redirects=False holds for a lent client too: a signed request goes nowhere
            # else than the endpoint it was signed for.
            async with self._client.stream(
                "POST", url, headers=headers, follow_redirects=False
            ) as response:
                _check_length(response.headers.get("content-length"), limit)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit)
                    chunks.append(chunk)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _not_sent(exc) from exc
        except httpx.UnsupportedProtocol as exc:
            raise _not_sent(exc, retryable=False) from exc
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise _sent(exc) from exc
        return RawResponse(response.status_code, response.headers, b"".join(chunks))

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


# --- aiohttp -----------------------------------------------------------------------------------


class _AiohttpBackend:
    """aiohttp session created on first use, inside the running event loop it belongs to."""

    def __init__(self, connect_timeout: float, max_connections: int, verify: Verify) -> None:
        self._aiohttp = import_extra("aiohttp", "http_backend='aiohttp'")
        import yarl  # a dependency of aiohttp

        self._url = yarl.URL
        aio = self._aiohttp
        # aiohttp raises these before a byte of the request can have left: refused
        # connections, DNS and TLS handshake failures. A failure while writing on an open
        # connection is a plain ClientOSError and counts as sent.
        self._not_sent: tuple[type[BaseException], ...] = (
            aio.ClientConnectorError,
            aio.ConnectionTimeoutError,
            aio.ServerFingerprintMismatch,
        )
        self._invalid: tuple[type[BaseException], ...] = (aio.InvalidURL, aio.NonHttpUrlClientError)
        self._ssl = _aiohttp_ssl(verify)
        self._max_connections = max_connections
        # Pool wait unbounded: the client's semaphore already queues; the attempt's total
        # deadline bounds the rest.
        self._timeout = aio.ClientTimeout(total=None, connect=None, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        aio = self._aiohttp
        connector = aio.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=30.0,
            ssl=self._ssl,
        )
        session: aiohttp.ClientSession = aio.ClientSession(
            connector=connector,
            timeout=self._timeout,
            # The service sets no cookie we need, and credentials come from our signer only.
            cookie_jar=aio.DummyCookieJar(),
            trust_env=False,
            # aiohttp would add "Content-Type: application/octet-stream" to the empty body, an
            # unsigned header the version-3 rules say must be signed when present.
            skip_auto_headers=("Content-Type",),
        )
        return session

    async def post(self, url: str, headers: Mapping[str, str], limit: int) -> RawResponse:
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
                self._url(url, encoded=True), headers=headers, allow_redirects=False
            ) as response:
                length = response.content_length
                if length is not None:
                    _check_length(str(length), limit)
                    body = await response.read()
                else:  # chunked or until close: count as it comes
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.content.iter_any():
                        size += len(chunk)
                        if size > limit:
                            raise _too_large(limit)
                        chunks.append(chunk)
                    body = b"".join(chunks)
        except TransportError:
            raise
        except self._not_sent as exc:
            raise _not_sent(exc) from exc
        except self._invalid as exc:
            raise _not_sent(exc, retryable=False) from exc
        except (self._aiohttp.ClientError, OSError) as exc:
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


def _check_length(declared: str | None, limit: int) -> None:
    # A declared size above the cap is refused before a byte of the body is read.
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, declared=int(declared))


def _too_large(limit: int, declared: int | None = None) -> ResponseTooLargeError:
    size = f"declares {declared} bytes" if declared is not None else "is larger"
    return ResponseTooLargeError(
        f"answer {size}, above max_response_bytes={limit}; refused unread (a listing of a "
        "very large library may need a higher max_response_bytes)",
        request_sent=True,
    )


def _certificate_failure(exc: BaseException) -> bool:
    """Whether a certificate was refused somewhere in ``exc``'s chain (not worth a retry)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError | ssl.CertificateError):
            return True
        # aiohttp keeps the ssl error in an attribute rather than the chain.
        inner: Any = getattr(current, "certificate_error", None)
        if isinstance(inner, BaseException):
            return True
        current = current.__cause__ or current.__context__
    return False


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_QUERY.sub('?...', str(exc))}"


def _not_sent(exc: BaseException, *, retryable: bool = True) -> TransportError:
    if _certificate_failure(exc):
        return TransportError(
            f"request not sent, certificate refused: {_describe(exc)}",
            request_sent=False,
            retryable=False,
        )
    return TransportError(
        f"request not sent: {_describe(exc)}", request_sent=False, retryable=retryable
    )


def _sent(exc: BaseException) -> TransportError:
    return TransportError(f"request sent, no answer: {_describe(exc)}", request_sent=True)

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
import math
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

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


def check_seconds(field: str, value: float) -> float:
    """``value`` if it is a finite number of seconds above 0, else :class:`ConfigurationError`
    naming ``field`` (the one check of every timeout option)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{field} must be > 0 seconds (a finite number), got {value!r}")
    return value


def _no_redaction(text: str) -> str:
    return text


class _RedactQueryToken(logging.Filter):
    """Hide a version-1 ``SecurityToken`` in the request URLs that httpx logs at INFO.

    A filter runs only for records whose level is enabled; the message is formatted once
    here and kept, so a handler does not format it again.
    """

    _TOKEN = re.compile(r"(SecurityToken=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args or "SecurityToken=" in str(record.msg):
            message = record.getMessage()
            if "SecurityToken=" in message:
                message = self._TOKEN.sub(r"\1***", message)
            record.msg, record.args = message, None
        return True


_redact_filter = _RedactQueryToken()
# httpcore's DEBUG trace names hosts and methods, not URLs; filtered too in case it ever does.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).addFilter(_redact_filter)


@attrs.frozen
class RawResponse:
    """Status, headers (looked up case-insensitively) and body of one answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@runtime_checkable
class SharedTransport(Protocol):
    """An httpx transport that several clients may be built on (the emulator's in-process
    one): each client calls :meth:`share` once, then ``aclose`` once; the last close counts."""

    def share(self) -> None:
        """One more client sends through this transport and will close it."""
        ...


class SendMark:
    """When one request had been written out whole (``time.monotonic()``), as far as its
    backend can tell: httpx (over httpcore) and aiohttp report it; other transports leave
    ``at`` None."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at: float | None = None

    def written(self) -> None:
        """The request has been written (so far): now."""
        self.at = time.monotonic()


class _Backend(Protocol):
    async def post(
        self, url: str, headers: Mapping[str, str], limit: int, mark: SendMark
    ) -> RawResponse: ...

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
        redact: applied to every error text (the credentials' ``redact``: a library's error
            may quote a header or the URL, where a token travels).
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
        redact: Callable[[str], str] = _no_redaction,
    ) -> None:
        lent = http_client is not None or transport is not None
        if http_client is not None and transport is not None:
            raise ConfigurationError("pass http_client or transport, not both")
        if lent and backend == "aiohttp":
            raise ConfigurationError(
                "http_client and transport are httpx objects; they cannot be used with "
                "http_backend='aiohttp'"
            )
        check_seconds("timeout", timeout)
        check_seconds("connect_timeout", connect_timeout)
        if transport is not None and not _is_httpx_transport(transport):
            raise ConfigurationError(
                "transport must be an httpx.AsyncBaseTransport (httpx.MockTransport, the "
                f"emulator's transport()), got {type(transport).__name__}"
            )
        if max_response_bytes < 1:
            raise ConfigurationError(f"max_response_bytes must be >= 1, got {max_response_bytes}")
        self.backend: Backend = "httpx" if lent else (backend or self.default_backend)
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self._impl: _Backend
        if self.backend == "aiohttp":
            self._impl = _AiohttpBackend(connect_timeout, max_connections, verify, redact)
        elif self.backend == "httpx":
            self._impl = _HttpxBackend(
                connect_timeout, max_connections, verify, http_client, transport, redact
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
        deadline = self.timeout if timeout is None else check_seconds("timeout", timeout)
        scope = asyncio.timeout(deadline)
        mark = SendMark()
        try:
            async with scope:
                return await self._impl.post(url, headers, self.max_response_bytes, mark)
        except TimeoutError as exc:
            if not scope.expired():
                raise
            # The deadline cannot tell whether the request left: count it as sent (the safe
            # side for a call that must not be repeated blindly).
            error = RequestTimeoutError(
                f"request sent, no complete answer within {deadline:g} s", request_sent=True
            )
            error.written_at = mark.at
            raise error from exc
        except TransportError as exc:
            if exc.request_sent:
                exc.written_at = mark.at
            raise

    async def aclose(self) -> None:
        """Close the pool (a lent httpx client stays open: its owner closes it)."""
        await self._impl.aclose()


def _is_httpx_transport(transport: object) -> bool:
    import httpx

    return isinstance(transport, httpx.AsyncBaseTransport)


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
        redact: Callable[[str], str],
    ) -> None:
        import httpx

        self._errors = _ErrorKinds(
            caught=(httpx.TransportError, httpx.DecodingError, httpx.InvalidURL, UnicodeError),
            # The connection (or a pool slot) was never had: nothing can have left.
            not_sent=(httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout),
            invalid=(httpx.UnsupportedProtocol, httpx.InvalidURL),
            # A header h11 refuses or one that is not ASCII: refused before it was written.
            local=(httpx.LocalProtocolError, UnicodeError),
            timeouts=(httpx.TimeoutException,),
            redact=redact,
        )
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
        if isinstance(transport, SharedTransport):
            transport.share()

    async def post(
        self, url: str, headers: Mapping[str, str], limit: int, mark: SendMark
    ) -> RawResponse:
        async def trace(event: str, info: Mapping[str, object]) -> None:
            # httpcore's events: the empty body's "complete" comes once the request is out.
            if event.endswith(("send_request_headers.complete", "send_request_body.complete")):
                mark.written()

        try:
            # follow_redirects=False holds for a lent client too: a signed request goes nowhere
            # else than the endpoint it was signed for.
            async with self._client.stream(
                "POST",
                url,
                headers=headers,
                follow_redirects=False,
                extensions={"trace": trace},
            ) as response:
                declared = response.headers.get("content-length", "")
                _check_length(int(declared) if declared.isdigit() else None, limit)
                body = await _read_capped(response.aiter_bytes(), limit)
        except self._errors.caught as exc:
            raise self._errors.classify(exc) from exc
        return RawResponse(response.status_code, response.headers, body)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


# --- aiohttp -----------------------------------------------------------------------------------


class _AiohttpBackend:
    """aiohttp session created on first use, inside the running event loop it belongs to."""

    def __init__(
        self,
        connect_timeout: float,
        max_connections: int,
        verify: Verify,
        redact: Callable[[str], str],
    ) -> None:
        self._aiohttp = import_extra("aiohttp", "http_backend='aiohttp'")
        import yarl  # a dependency of aiohttp

        self._url = yarl.URL
        aio = self._aiohttp
        self._errors = _ErrorKinds(
            caught=(aio.ClientError, OSError, ValueError),
            # aiohttp raises these before a byte of the request can have left: refused
            # connections, DNS and TLS handshake failures. A failure while writing on an open
            # connection is a plain ClientOSError and counts as sent.
            not_sent=(
                aio.ClientConnectorError,
                aio.ConnectionTimeoutError,
                aio.ServerFingerprintMismatch,
            ),
            invalid=(aio.InvalidURL, aio.NonHttpUrlClientError),
            # aiohttp checks header values (no CR or LF) as it builds the request: a
            # ValueError outside its own ClientError family, raised before anything is written.
            local=(ValueError,),
            timeouts=(aio.ConnectionTimeoutError,),
            redact=redact,
        )
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
        tracing = aio.TraceConfig()
        tracing.on_request_headers_sent.append(_headers_sent)
        session: aiohttp.ClientSession = aio.ClientSession(
            connector=connector,
            trace_configs=[tracing],
            timeout=self._timeout,
            # The service sets no cookie we need, and credentials come from our signer only.
            cookie_jar=aio.DummyCookieJar(),
            trust_env=False,
            # aiohttp would add "Content-Type: application/octet-stream" to the empty body, an
            # unsigned header the version-3 rules say must be signed when present.
            skip_auto_headers=("Content-Type",),
        )
        return session

    async def post(
        self, url: str, headers: Mapping[str, str], limit: int, mark: SendMark
    ) -> RawResponse:
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
                self._url(url, encoded=True),
                headers=headers,
                allow_redirects=False,
                trace_request_ctx=mark,
            ) as response:
                # The declared length is the compressed size: refused early when above the
                # cap, and the decompressed bytes are counted as they come all the same.
                _check_length(response.content_length, limit)
                body = await _read_capped(response.content.iter_any(), limit)
        except TransportError:
            raise
        except self._errors.caught as exc:
            # aiohttp never re-sends a POST on a stale keep-alive connection, so an attempt
            # that failed after it left is the only one and may have reached the service.
            raise self._errors.classify(exc) from exc
        return RawResponse(response.status, response.headers, body)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _headers_sent(session: object, context: Any, params: object) -> None:
    # aiohttp's tracing signal; the request's SendMark travels as its trace_request_ctx.
    mark = getattr(context, "trace_request_ctx", None)
    if isinstance(mark, SendMark):
        mark.written()


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


def _check_length(declared: int | None, limit: int) -> None:
    # A declared size above the cap is refused before a byte of the body is read.
    if declared is not None and declared > limit:
        raise _too_large(limit, declared=declared)


async def _read_capped(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The body, counted as it comes (decompressed, when the library decompresses): refused
    with :class:`ResponseTooLargeError` once above ``limit``, never buffered whole."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


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


@attrs.frozen
class _ErrorKinds:
    """A backend's exception classes by what they say about the request; :meth:`classify` is
    the one place that decides "sent or not" and "worth another try" for both backends."""

    caught: tuple[type[BaseException], ...]
    """Everything the backend turns into a :class:`TransportError`."""
    not_sent: tuple[type[BaseException], ...]
    """Raised before a byte can have left (connecting, waiting for the pool)."""
    invalid: tuple[type[BaseException], ...]
    """A URL no attempt can send: not sent, not retryable."""
    local: tuple[type[BaseException], ...]
    """The request could not be built or written as given (a header value): not sent, not
    retryable."""
    timeouts: tuple[type[BaseException], ...]
    """The library's own deadlines (a lent client's): :class:`RequestTimeoutError`."""
    redact: Callable[[str], str]

    def classify(self, exc: BaseException) -> TransportError:
        text = self.redact(f"{type(exc).__name__}: {_QUERY.sub('?...', str(exc))}")
        if _certificate_failure(exc):
            return TransportError(
                f"request not sent, certificate refused: {text}",
                request_sent=False,
                retryable=False,
            )
        if isinstance(exc, self.invalid):
            return TransportError(f"request not sent: {text}", request_sent=False, retryable=False)
        if isinstance(exc, self.local):
            return TransportError(
                f"request not sent, refused by the HTTP library: {text}",
                request_sent=False,
                retryable=False,
            )
        sent = not isinstance(exc, self.not_sent)
        kind = RequestTimeoutError if isinstance(exc, self.timeouts) else TransportError
        if sent:
            return kind(f"request sent, no answer: {text}", request_sent=True)
        return kind(f"request not sent: {text}", request_sent=False)

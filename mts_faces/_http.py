"""The HTTP layer: the only module that imports httpx, so the transport can change here alone.

It sends one signed POST and returns the raw answer, or raises :class:`TransportError` saying
whether the request can have reached the service.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Mapping

import attrs
import httpx

from ._exceptions import TransportError

# Raised before a single byte of the request can have left this process.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


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
    """Status, headers (lower-case names) and body of one answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class HttpTransport:
    """One pooled, keep-alive connection set for the client's whole life."""

    def __init__(
        self,
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        verify: bool | str | ssl.SSLContext = True,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout, pool=None),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            verify=verify,
            follow_redirects=False,
            # Credentials come from our signer only, never from the environment or .netrc.
            trust_env=False,
        )

    async def post(self, url: str, headers: Mapping[str, str]) -> RawResponse:
        """POST with an empty body; map httpx's failures to :class:`TransportError`."""
        try:
            response = await self._client.post(url, headers=headers)
        except _NOT_SENT as exc:
            raise TransportError(
                f"request not sent: {type(exc).__name__}: {exc}", request_sent=False
            ) from exc
        except httpx.TransportError as exc:
            raise TransportError(
                f"request sent, no answer: {type(exc).__name__}: {exc}", request_sent=True
            ) from exc
        return RawResponse(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        """Close the pool, unless the caller lent us their own httpx client."""
        if self._owns_client:
            await self._client.aclose()

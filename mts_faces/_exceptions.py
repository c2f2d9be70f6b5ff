"""Typed errors. Every error the library raises is an :class:`MtsFacesError`.

The service reports errors as JSON bodies (``Code``, ``Message``, ``RequestId``, ``Recommend``)
with a 4xx/5xx status that is not published per code, so errors are classified by ``Code``
first and by status second: throttling, for one, arrives as HTTP 400, not 429.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class MtsFacesError(Exception):
    """Base class of every error raised by ``mts_faces``."""


class ConfigurationError(MtsFacesError, ValueError):
    """The client was given options that cannot work (region, endpoint, TLS, limits)."""


class CredentialsError(ConfigurationError):
    """No usable AccessKey pair was given or found in the environment."""


class MissingExtraError(ConfigurationError):
    """An option needs a package of an optional extra; ``extra`` names the extra to install."""

    def __init__(self, message: str, *, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


class ValidationError(MtsFacesError, ValueError):
    """Input refused before any network call; ``field`` names the offending parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message
        """What is wrong with the field, without its name."""


class APIError(MtsFacesError):
    """The service answered with an error body.

    ``code``, ``message``, ``request_id``, ``http_status``, ``recommend`` and ``host_id`` are
    taken from the answer (secrets redacted from ``message``); ``status_code`` is
    ``http_status`` under the name httpx and openai users know.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        http_status: int,
        request_id: str | None = None,
        recommend: str | None = None,
        host_id: str | None = None,
    ) -> None:
        super().__init__(f"{code} (HTTP {http_status}, RequestId {request_id}): {message}")
        self.code = code
        self.message = message
        self.http_status = http_status
        self.request_id = request_id
        self.recommend = recommend
        self.host_id = host_id

    @property
    def status_code(self) -> int:
        """The HTTP status of the answer (the same as ``http_status``)."""
        return self.http_status

    @property
    def retryable(self) -> bool:
        """Whether sending the same call again (with a new nonce) may succeed."""
        return False


class ThrottlingError(APIError):
    """The account's call quota was exceeded (``Throttling``, ``Throttling.User``, ...)."""

    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        """Always: throttling passes once the quota has room again."""
        return True


class InvalidParameterError(APIError):
    """The service refused a parameter (``MissingParameter``, ``InvalidParameter*``)."""


class AuthenticationError(APIError):
    """Credentials or signature refused (unknown key, wrong secret, clock skew, reused nonce)."""

    @property
    def retryable(self) -> bool:
        """Only for ``SignatureNonceUsed``: a new attempt draws a new nonce."""
        return self.code == "SignatureNonceUsed"


class NotFoundError(APIError):
    """The named resource (library, person or face) does not exist."""


class ServerError(APIError):
    """A 5xx fault on the service's side (``InternalError``, ``ServiceUnavailable``)."""

    @property
    def retryable(self) -> bool:
        """Always: the service was busy or failed; another attempt may succeed."""
        return True


class TransportError(MtsFacesError):
    """No usable answer was received. ``request_sent`` says whether the service may have acted.

    ``request_sent=False``: the request surely never left (connect failure).
    ``request_sent=True``: it was sent, or may have been, and the answer was lost.
    ``retryable=False`` marks failures another attempt cannot cure: a refused certificate,
    an unsupported URL, an answer too large.
    ``written_at``: ``time.monotonic()`` when the request had been written out whole, when
    the transport could tell (None: unknown, or never written).
    """

    def __init__(self, message: str, *, request_sent: bool, retryable: bool = True) -> None:
        super().__init__(message)
        self.request_sent = request_sent
        self._retryable = retryable
        self.written_at: float | None = None

    @property
    def retryable(self) -> bool:
        """Whether another attempt may succeed (whether it is *safe* is ``request_sent``'s)."""
        return self._retryable


class RequestTimeoutError(TransportError):
    """The attempt's total deadline (``timeout``) passed before the whole answer came."""


class ResponseTooLargeError(TransportError):
    """The answer is larger than ``max_response_bytes``; it was refused, not buffered."""

    def __init__(self, message: str, *, request_sent: bool = True) -> None:
        super().__init__(message, request_sent=request_sent, retryable=False)


class AmbiguousOutcomeError(MtsFacesError):
    """A non-idempotent call (``RegisterCustomFace``) may or may not have taken effect.

    Raised instead of a blind retry when the request was sent but the answer was lost, or
    the service answered ``InternalError``. ``cause`` is that error; list the person's faces
    (the registrar does) to find out whether the face was stored.
    """

    def __init__(self, action: str, cause: MtsFacesError) -> None:
        super().__init__(f"{action} may or may not have taken effect: {cause}")
        self.action = action
        self.cause = cause

    @property
    def written_at(self) -> float | None:
        """``time.monotonic()`` when the request had been written out whole, when the
        transport could tell (None: unknown); the service may have acted on it only after."""
        return self.cause.written_at if isinstance(self.cause, TransportError) else None


class ResponseFormatError(MtsFacesError):
    """A success answer that does not have the documented shape."""


class RateLimiterError(MtsFacesError):
    """The shared rate limiter (Redis) could not be reached or refused to work.

    Raised after the limiter waited ``outage_timeout`` seconds for Redis to come back; no call
    was sent. A run should stop on it: every other call would meet the same outage.
    """


_BY_CODE: dict[str, type[APIError]] = {
    "MissingParameter": InvalidParameterError,
    "SignatureDoesNotMatch": AuthenticationError,
    "IncompleteSignature": AuthenticationError,
    "SignatureNonceUsed": AuthenticationError,
    "ServiceUnavailable": ServerError,
    "InternalError": ServerError,
}
_BY_PREFIX: tuple[tuple[str, type[APIError]], ...] = (
    ("Throttling", ThrottlingError),
    ("InvalidParameter", InvalidParameterError),
    ("InvalidAccessKeyId", AuthenticationError),
    ("InvalidTimeStamp", AuthenticationError),
    ("InvalidSecurityToken", AuthenticationError),
    ("Forbidden", AuthenticationError),
)


def error_class(code: str, http_status: int) -> type[APIError]:
    """The error class for a service ``Code``; the HTTP status decides only unknown codes."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    for prefix, cls in _BY_PREFIX:
        if code.startswith(prefix):
            return cls
    if code.endswith("NotFound") or http_status == 404:
        return NotFoundError
    if http_status == 429:
        return ThrottlingError
    if http_status >= 500:
        return ServerError
    return APIError


def api_error(body: Any, http_status: int, redact: Callable[[str], str] | None = None) -> APIError:
    """Build the typed error from a decoded error body (anything not a dict is tolerated)."""
    fields: dict[str, Any] = body if isinstance(body, dict) else {}
    code = str(fields.get("Code") or f"HTTP{http_status}")
    message = str(fields.get("Message") or "")
    if redact is not None:
        message = redact(message)
    cls = error_class(code, http_status)
    return cls(
        code,
        message,
        http_status=http_status,
        request_id=_opt_str(fields.get("RequestId")),
        recommend=_opt_str(fields.get("Recommend")),
        host_id=_opt_str(fields.get("HostId")),
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt of the call may succeed: the one rule, used by the client's
    retries and by the registrar's row budget alike.

    A :class:`TransportError` unless it says ``retryable=False`` (a refused certificate, an
    unsupported URL, an answer too large); an :class:`APIError` the service calls transient
    (throttling, busy, internal, a reused nonce); nothing else. Whether a retry is *safe*
    (the request may have acted) is a separate question: see ``TransportError.request_sent``.
    """
    return isinstance(exc, (TransportError, APIError)) and exc.retryable

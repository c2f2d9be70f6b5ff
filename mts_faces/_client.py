"""``MtsFaceClient``: the client options and the one request path every operation takes.

Path of a call: validate the input (``_operations``), take a concurrency slot and a rate-limit
slot, sign with a fresh nonce and timestamp (``_signing``), send (``_http``), then parse the
answer or classify the error, and retry what is safe to retry (``_retry``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import ssl
import time
import uuid
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from ._credentials import Credentials, CredentialsProvider, resolve_credentials
from ._exceptions import (
    AmbiguousOutcomeError,
    APIError,
    ConfigurationError,
    MtsFacesError,
    ResponseFormatError,
    ServerError,
    ThrottlingError,
    TransportError,
    api_error,
    is_retryable,
)
from ._http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    Backend,
    HttpTransport,
    RawResponse,
    check_seconds,
)
from ._limiter import (
    INTERACTIVE,
    LaneSemaphore,
    Limiter,
    LimiterAdapter,
    Priority,
    WindowLimiter,
    check_priority,
)
from ._models import Acknowledgement, CustomPersons, RegisteredFace
from ._operations import (
    API_VERSION,
    LIST_CUSTOM_PERSONS,
    REGISTER_CUSTOM_FACE,
    TAG_CUSTOM_PERSON,
    UNREGISTER_CUSTOM_FACE,
    Operation,
)
from ._retry import RetryPolicy, parse_retry_after
from ._signing import (
    EMPTY_BODY_SHA256,
    canonical_query,
    percent_encode,
    v1_signature,
    v3_authorization,
)
from ._telemetry import AttemptHook, CallTrace, ClientStats, Telemetry, limiter_reading
from ._window import call_limit

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("mts_faces")

CUSTOM_FACE_REGIONS = frozenset({"cn-beijing", "cn-shanghai", "cn-hangzhou"})
DEFAULT_REGION = "cn-shanghai"
DEFAULT_QPS = 100.0
USER_AGENT = "mts-faces/0.1"


def endpoint_for_region(region_id: str, *, vpc: bool = False) -> str:
    """``https://mts.<region>.aliyuncs.com`` (or ``mts-vpc.`` inside an Alibaba VPC)."""
    if region_id not in CUSTOM_FACE_REGIONS:
        raise ConfigurationError(
            f"region_id {region_id!r} does not offer custom faces; use one of "
            f"{', '.join(sorted(CUSTOM_FACE_REGIONS))}, or pass an explicit endpoint="
        )
    host = "mts-vpc" if vpc else "mts"
    return f"https://{host}.{region_id}.aliyuncs.com"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_endpoint(endpoint: str, *, allow_insecure_http: bool) -> str:
    """Normalise ``endpoint`` to ``scheme://host[:port]``; refuse plain http off loopback."""
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"endpoint must be an http(s) URL with a host, got {endpoint!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigurationError(f"endpoint must have no path or query, got {endpoint!r}")
    if "@" in parts.netloc or "\\" in endpoint:
        # User info is never how this service authenticates, and URL parsers disagree on
        # which host ``http://a\\@b`` names: refuse rather than guess where keys would go.
        # (The value is not echoed: user info may hold a password.)
        raise ConfigurationError(
            "endpoint must be scheme://host[:port], with no user info and no backslash"
        )
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise ConfigurationError(
            f"refusing plain http to {parts.hostname}: credentials and faces would travel "
            "unencrypted; use https, or pass allow_insecure_http=True to opt in"
        )
    return f"{parts.scheme}://{parts.netloc}"


class MtsFaceClient:
    """Async client for the MTS custom-face operations; use it as ``async with``.

    Every attempt takes a slot from one rate limiter (default: the account quota of 100 calls
    per second) and runs on one pooled set of keep-alive connections.

    Args:
        access_key_id: AccessKey ID; with ``access_key_secret`` (and ``security_token`` for
            STS). Default: ``ALIBABA_CLOUD_ACCESS_KEY_ID`` and friends from the environment.
        access_key_secret: the AccessKey secret (never logged or shown in a repr).
        security_token: an STS token, for temporary credentials.
        credentials: a :class:`Credentials` instead of the three values above.
        region_id: one of :data:`CUSTOM_FACE_REGIONS`; picks the endpoint.
        endpoint: an explicit ``https://host[:port]`` instead of the region's.
        vpc: use the region's ``mts-vpc.`` host (inside an Alibaba VPC).
        allow_insecure_http: allow a plain-http ``endpoint`` off loopback.
        signature_version: 3 (ACS3-HMAC-SHA256, default) or 1 (HMAC-SHA1).
        qps: calls per second allowed by the default limiter (the account quota: 100).
        limiter: a limiter of your own (shared, Redis-backed, ``aiolimiter.AsyncLimiter``, any
            object with ``async acquire()`` or an async context manager) instead of ``qps``'s.
        max_retries: further attempts after the first, for what is safe to retry.
        backoff_base: first backoff ceiling in seconds, doubled per retry (full jitter).
        backoff_max: the largest backoff ceiling in seconds.
        timeout: total seconds one attempt may take, connecting and reading the whole answer
            included; each operation takes ``timeout=`` to change it for one call.
        connect_timeout: seconds to open a connection (a failure there was surely not sent).
        max_connections: calls in flight and connections kept open, at most.
        verify: TLS trust: True (Mozilla's CA set), False, a CA file or folder, or an
            ``ssl.SSLContext``. Environment variables never change it.
        http_client: an ``httpx.AsyncClient`` to send with (proxies, limits, event hooks,
            ``MockTransport``). It stays yours: not closed by :meth:`aclose`, and its own TLS,
            proxy and environment settings apply instead of ``verify``; redirects are still
            never followed.
        transport: an ``httpx.AsyncBaseTransport`` for the client built here
            (``httpx.MockTransport``, the emulator's in-process transport); closed with it.
            Any other object is a :class:`ConfigurationError`.
        http_backend: ``"httpx"`` (default; what respx intercepts) or ``"aiohttp"``, the
            fast path at a fraction of the CPU per call (the ``aiohttp`` extra).
        max_response_bytes: answers larger than this are refused as they stream in
            (:class:`ResponseTooLargeError`), never buffered whole.
        on_attempt: called with an :class:`AttemptEvent` after every attempt (see
            :meth:`add_attempt_hook`).
        tracer_provider: an OpenTelemetry ``TracerProvider`` for this client's spans
            (default: the global one, once the application has set it; the ``otel`` extra).
        meter_provider: an OpenTelemetry ``MeterProvider`` for its metrics (default: global).
        telemetry_include_ids: put person, library and face IDs, image URLs and error
            messages in span attributes. Off by default: they can be personal data.
    """

    def __init__(
        self,
        *,
        access_key_id: str | None = None,
        access_key_secret: str | None = None,
        security_token: str | None = None,
        credentials: Credentials | CredentialsProvider | None = None,
        region_id: str = DEFAULT_REGION,
        endpoint: str | None = None,
        vpc: bool = False,
        allow_insecure_http: bool = False,
        signature_version: Literal[1, 3] = 3,
        qps: float = DEFAULT_QPS,
        limiter: Limiter | AbstractAsyncContextManager[Any] | None = None,
        max_retries: int = 3,
        backoff_base: float = 0.2,
        backoff_max: float = 8.0,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_connections: int = 64,
        verify: bool | str | ssl.SSLContext = True,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_backend: Backend | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        on_attempt: AttemptHook | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        telemetry_include_ids: bool = False,
    ) -> None:
        if signature_version not in (1, 3):
            raise ConfigurationError(f"signature_version must be 1 or 3, got {signature_version!r}")
        if max_connections < 1:
            raise ConfigurationError(f"max_connections must be >= 1, got {max_connections}")
        try:
            call_limit(qps)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(str(exc)) from None
        check_seconds("timeout", timeout)
        check_seconds("connect_timeout", connect_timeout)
        self.credentials = resolve_credentials(
            access_key_id, access_key_secret, security_token, credentials
        )
        self.region_id = region_id
        self.endpoint = (
            check_endpoint(endpoint, allow_insecure_http=allow_insecure_http)
            if endpoint is not None
            else endpoint_for_region(region_id, vpc=vpc)
        )
        self._host = urlsplit(self.endpoint).netloc
        self.signature_version = signature_version
        self.retry_policy = RetryPolicy(max_retries, backoff_base, backoff_max)
        self.limiter: object = limiter if limiter is not None else WindowLimiter(qps)
        """The rate limiter as given (default: a :class:`WindowLimiter` at ``qps``)."""
        self._limiter = LimiterAdapter(self.limiter)
        self.qps = qps
        self.max_connections = max_connections
        self.timeout = timeout
        """The read timeout of a request, in seconds."""
        self.attempts = 0
        """Attempts sent so far (every retry counts): what the account quota is charged."""
        # Calls wait here for a connection *before* taking a rate slot, so a slot is never
        # spent while the call queues for the pool (that would bunch requests at the server).
        # Bulk calls leave a few to interactive ones (see LaneSemaphore).
        self._slots = LaneSemaphore(max_connections)
        self._transport = HttpTransport(
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            verify=verify,
            http_client=http_client,
            transport=transport,
            backend=http_backend,
            max_response_bytes=max_response_bytes,
            redact=self.credentials.redact,
        )
        self._rng = random.Random()
        self._telemetry = Telemetry(
            hooks=(on_attempt,) if on_attempt is not None else (),
            include_ids=telemetry_include_ids,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            rate=lambda: self.current_rate,
            margin=lambda: limiter_reading(self.limiter, "current_margin"),
            region=region_id,
            host=self._host,
        )

    def __repr__(self) -> str:
        return (
            f"MtsFaceClient(endpoint={self.endpoint!r}, "
            f"access_key_id={getattr(self.credentials, 'access_key_id', None)!r}, "
            f"signature_version={self.signature_version})"
        )

    @property
    def current_rate(self) -> float | None:
        """The limiter's current rate in calls per second (lowered by throttling when the
        limiter is adaptive), or None for a limiter that reports none."""
        rate = getattr(self.limiter, "current_rate", None)
        return float(rate) if isinstance(rate, int | float) else None

    @property
    def stats(self) -> ClientStats:
        """Calls, attempts, throttles, retries, requests in flight, the limiter's rate and
        recent latency percentiles: a snapshot (see :class:`ClientStats`)."""
        return self._telemetry.stats()

    def add_attempt_hook(self, hook: AttemptHook) -> None:
        """Call ``hook(event)`` after every attempt, on the event loop, with a frozen
        :class:`AttemptEvent` (no IDs, URLs or credentials in it). Keep it quick; an
        exception it raises is logged and does not affect the call."""
        self._telemetry.add_hook(hook)

    def remove_attempt_hook(self, hook: AttemptHook) -> None:
        """Stop calling ``hook``."""
        self._telemetry.remove_hook(hook)

    async def __aenter__(self) -> MtsFaceClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._transport.aclose()

    # --- operations ------------------------------------------------------------------------

    async def register_custom_face(
        self,
        category_id: str,
        person_id: str,
        image_url: str,
        person_name: str | None = None,
        *,
        max_retries: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (per attempt)
        priority: Priority = INTERACTIVE,
    ) -> RegisteredFace:
        """Register one face image for a person; never retried blindly once sent.

        Raises :class:`AmbiguousOutcomeError` when the face may or may not have been stored.
        ``max_retries`` (every operation has it) overrides the client's retry count for this
        call; ``0`` leaves retrying to the caller. ``timeout`` (seconds per attempt) overrides
        the client's for this call.
        ``priority``: the limiter's lane, ``"interactive"`` (default) or ``"bulk"``.
        """
        result: RegisteredFace = await self.call(
            REGISTER_CUSTOM_FACE,
            max_retries=max_retries,
            timeout=timeout,
            priority=priority,
            category_id=category_id,
            person_id=person_id,
            image_url=image_url,
            person_name=person_name,
        )
        return result

    async def unregister_custom_face(
        self,
        category_id: str,
        person_id: str,
        face_id: str,
        *,
        max_retries: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (per attempt)
        priority: Priority = INTERACTIVE,
    ) -> Acknowledgement:
        """Remove a face; ``face_id="ALL"``: all the person's, ``person_id="ALL"``: the library.

        ``timeout`` (seconds per attempt) overrides the client's for this call.
        ``priority``: the limiter's lane, ``"interactive"`` (default) or ``"bulk"``.
        """
        result: Acknowledgement = await self.call(
            UNREGISTER_CUSTOM_FACE,
            max_retries=max_retries,
            timeout=timeout,
            priority=priority,
            category_id=category_id,
            person_id=person_id,
            face_id=face_id,
        )
        return result

    async def list_custom_persons(
        self,
        category_id: str | None = None,
        person_id: str | None = None,
        *,
        max_retries: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (per attempt)
        priority: Priority = INTERACTIVE,
    ) -> CustomPersons:
        """List libraries, persons and faces, optionally narrowed to one library or person.

        ``timeout`` (seconds per attempt) overrides the client's for this call.
        ``priority``: the limiter's lane, ``"interactive"`` (default) or ``"bulk"``.
        """
        result: CustomPersons = await self.call(
            LIST_CUSTOM_PERSONS,
            max_retries=max_retries,
            timeout=timeout,
            priority=priority,
            category_id=category_id,
            person_id=person_id,
        )
        return result

    async def tag_custom_person(
        self,
        category_id: str,
        person_id: str,
        *,
        person_name: str | None = None,
        person_description: str | None = None,
        category_name: str | None = None,
        category_description: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (per attempt)
        priority: Priority = INTERACTIVE,
    ) -> Acknowledgement:
        """Set the names and descriptions of a person and of its library.

        ``timeout`` (seconds per attempt) overrides the client's for this call.
        ``priority``: the limiter's lane, ``"interactive"`` (default) or ``"bulk"``.
        """
        result: Acknowledgement = await self.call(
            TAG_CUSTOM_PERSON,
            max_retries=max_retries,
            timeout=timeout,
            priority=priority,
            category_id=category_id,
            person_id=person_id,
            person_name=person_name,
            person_description=person_description,
            category_name=category_name,
            category_description=category_description,
        )
        return result

    # --- the one request path --------------------------------------------------------------

    async def call(
        self,
        operation: Operation,
        *,
        max_retries: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (per attempt)
        priority: Priority = INTERACTIVE,
        **values: str | None,
    ) -> Any:
        """Validate, send with retries, and parse one operation; the typed methods use this.

        ``max_retries`` overrides the client's retry count for this call (``0``: one attempt);
        ``timeout``: total seconds per attempt for this call (default: the client's).
        ``priority``: the limiter's lane for every attempt (``"interactive"`` or ``"bulk"``).
        """
        if timeout is not None:
            check_seconds("timeout", timeout)
        lane = check_priority(priority)
        params = operation.build_params(values)
        limit = self.retry_policy.max_retries if max_retries is None else max_retries
        if limit < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {max_retries}")
        trace = self._telemetry.begin(operation, params, lane)
        try:
            result = await self._send(operation, params, timeout, limit, lane, trace)
        except BaseException as exc:
            trace.end(exc)
            raise
        trace.end(None, result)
        return result

    async def _send(
        self,
        operation: Operation,
        params: dict[str, str],
        timeout: float | None,  # noqa: ASYNC109 (per attempt)
        limit: int,
        lane: Priority,
        trace: CallTrace,
    ) -> Any:
        retry = 0
        while True:
            try:
                body = await self._attempt(operation, params, retry + 1, timeout, trace, lane)
                return operation.parse(body)
            except MtsFacesError as exc:
                if not self._may_retry(operation, exc) or retry >= limit:
                    final = self._final_error(operation, exc)
                    # Retries are DEBUG; only the outcome the caller sees is logged above.
                    logger.info(
                        "%s failed after %d attempt(s): %s",
                        operation.action,
                        retry + 1,
                        _short(final),
                    )
                    if final is exc:
                        raise
                    raise final from exc
                retry += 1
                retry_after = exc.retry_after if isinstance(exc, ThrottlingError) else None
                wait = self.retry_policy.delay(retry, retry_after, self._rng)
                trace.retrying(exc)
                logger.debug(
                    "%s retry %d/%d in %.3fs after %s",
                    operation.action,
                    retry,
                    limit,
                    wait,
                    _short(exc),
                )
                await asyncio.sleep(wait)

    async def _attempt(
        self,
        operation: Operation,
        params: dict[str, str],
        attempt: int,
        timeout: float | None,  # noqa: ASYNC109 (per attempt)
        trace: CallTrace,
        priority: Priority = INTERACTIVE,
    ) -> dict[str, Any]:
        # Before the slots: a provider's first fetch must not hold a connection or rate slot,
        # and the limiter keys its schedule by the account.
        creds = await self.credentials.get_credentials()
        async with self._slots.hold(priority):
            waiting = time.perf_counter()
            grant = await self._limiter.acquire(
                action=operation.action,
                region=self.region_id,
                priority=priority,
                account=creds.access_key_id,
            )
            # Again after the waits, just before signing (at once: there are some now), so
            # credentials refreshed while this call queued are the ones it signs with.
            creds = await self.credentials.get_credentials()
            # Nonce and timestamp are drawn after the wait, per attempt: a retry is a new request.
            url, headers = self._sign(operation.action, params, creds)
            self.attempts += 1
            trace.sent(waiting)
            started = time.perf_counter()
            try:
                response = await self._transport.post(url, headers, timeout=timeout)
            except TransportError as exc:
                logger.debug(
                    "%s attempt %d failed after %.1f ms: %s",
                    operation.action,
                    attempt,
                    (time.perf_counter() - started) * 1000,
                    exc,
                )
                raise
        elapsed_ms = (time.perf_counter() - started) * 1000
        body = self._decode(response)
        request_id = body.get("RequestId") if isinstance(body, dict) else None
        logger.debug(
            "%s attempt %d status %d request_id %s in %.1f ms",
            operation.action,
            attempt,
            response.status,
            request_id,
            elapsed_ms,
        )
        if 200 <= response.status < 300 and isinstance(body, dict) and "Code" not in body:
            self._limiter.feedback(grant, throttled=False)
            return body
        error = self._api_error(body, response)
        self._limiter.feedback(grant, throttled=isinstance(error, ThrottlingError))
        raise error

    def _sign(
        self, action: str, params: dict[str, str], creds: Credentials
    ) -> tuple[str, dict[str, str]]:
        timestamp = utc_timestamp()
        nonce = new_nonce()
        headers = {"user-agent": USER_AGENT, "host": self._host}
        if self.signature_version == 3:
            signed = {
                "host": self._host,
                "x-acs-action": action,
                "x-acs-version": API_VERSION,
                "x-acs-date": timestamp,
                "x-acs-signature-nonce": nonce,
                "x-acs-content-sha256": EMPTY_BODY_SHA256,
            }
            if creds.security_token:
                signed["x-acs-security-token"] = creds.security_token
            # Built once: what is signed is exactly what is sent.
            canonical = canonical_query(params)
            signed["authorization"] = v3_authorization(
                "POST", canonical, signed, creds.access_key_id, creds.access_key_secret
            )
            headers.update(signed)
            return f"{self.endpoint}/?{canonical}", headers
        query = {
            **params,
            "Action": action,
            "Version": API_VERSION,
            "Format": "json",
            "AccessKeyId": creds.access_key_id,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureVersion": "1.0",
            "SignatureNonce": nonce,
            "Timestamp": timestamp,
        }
        if creds.security_token:
            query["SecurityToken"] = creds.security_token
        canonical = canonical_query(query)
        signature = v1_signature("POST", canonical, creds.access_key_secret)
        url = f"{self.endpoint}/?{canonical}&Signature={percent_encode(signature)}"
        return url, headers

    def _decode(self, response: RawResponse) -> Any:
        try:
            return json.loads(response.body) if response.body else {}
        except ValueError:
            if 200 <= response.status < 300:
                # A proxy's page may echo the request URL, and with it a version-1 token.
                snippet = self.credentials.redact(repr(response.body[:200]))
                raise ResponseFormatError(
                    f"answer with HTTP {response.status} is not JSON: {snippet}"
                ) from None
            return {}

    def _api_error(self, body: Any, response: RawResponse) -> APIError:
        error = api_error(body, response.status, self.credentials.redact)
        if isinstance(error, ThrottlingError):
            error.retry_after = parse_retry_after(response.headers.get("x-acs-retry-after"))
        return error

    @staticmethod
    def _may_retry(operation: Operation, exc: MtsFacesError) -> bool:
        if not is_retryable(exc):  # e.g. a refused certificate, an answer too large
            return False
        if isinstance(exc, TransportError):
            return not exc.request_sent or operation.idempotent
        if isinstance(exc, APIError):
            # InternalError may come after the work was done: only idempotent calls repeat it.
            return operation.idempotent or not _may_have_acted(exc)
        return False

    @staticmethod
    def _final_error(operation: Operation, exc: MtsFacesError) -> MtsFacesError:
        if not operation.idempotent:
            sent_no_answer = isinstance(exc, TransportError) and exc.request_sent
            # A success status whose body we cannot read: the work was most likely done.
            unreadable_success = isinstance(exc, ResponseFormatError)
            if (
                sent_no_answer
                or unreadable_success
                or (isinstance(exc, APIError) and _may_have_acted(exc))
            ):
                return AmbiguousOutcomeError(operation.action, exc)
        return exc


def utc_timestamp() -> str:
    """The current UTC time as the service wants it: ``YYYY-MM-DDThh:mm:ssZ``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_nonce() -> str:
    """A fresh random ``SignatureNonce``; the service refuses a nonce it has seen."""
    return uuid.uuid4().hex


def _may_have_acted(exc: APIError) -> bool:
    # ServiceUnavailable means the call was turned away; any other 5xx may follow the work.
    return isinstance(exc, ServerError) and exc.code != "ServiceUnavailable"


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"

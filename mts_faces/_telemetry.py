"""What a client's calls do, for whoever watches: a stats snapshot, attempt hooks, OpenTelemetry.

One :class:`Telemetry` per client; every operation call takes one :class:`CallTrace` from it,
which the request path tells three things: an attempt was sent (after the limiter granted its
slot), an attempt failed and will be retried, the call ended (result or error). Everything
else is derived here:

- ``client.stats``: counters and recent latency percentiles, in bounded memory (a ring of the
  last :data:`LATENCY_SAMPLES` attempts), always kept: a few counter updates per call.
- attempt hooks (``on_attempt=``): a frozen :class:`AttemptEvent` per attempt, called on the
  event loop; a hook that raises is logged and skipped, never breaks the call.
- OpenTelemetry through ``opentelemetry-api`` only (the ``otel`` extra): a CLIENT span per
  operation call with RPC semantic-convention attributes and an event per attempt, and
  metrics. Nothing is imported or emitted until the application has configured a tracer or
  meter provider (globally, or passed to the client); until then the cost is one dictionary
  lookup per call. Person IDs, image URLs, FaceIds, library IDs and error messages (which
  may echo them) are never attributes unless ``include_ids=True``; credentials never are.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._exceptions import AmbiguousOutcomeError, APIError, ThrottlingError, TransportError

if TYPE_CHECKING:
    from ._operations import Operation

logger = logging.getLogger("mts_faces")

LATENCY_SAMPLES = 2048
"""Attempts whose latency and limiter wait feed the percentiles of :class:`ClientStats`."""

INSTRUMENTATION_NAME = "mts_faces"
RPC_SYSTEM = "alibaba_cloud"
RPC_SERVICE = "mts"

AttemptOutcome = Literal["ok", "throttled", "error", "transport_error", "cancelled"]
CallOutcome = Literal["ok", "throttled", "ambiguous", "error", "cancelled"]

# Parameters that may be personal data or name a customer's resources: attributes only when
# the user opts in (wire name -> attribute name).
_ID_ATTRIBUTES = {
    "CategoryId": "mts_faces.category_id",
    "PersonId": "mts_faces.person_id",
    "FaceId": "mts_faces.face_id",
    "ImageUrl": "mts_faces.image_url",
}


@attrs.frozen
class AttemptEvent:
    """One attempt of an operation call, as handed to ``on_attempt`` hooks.

    Holds no parameter of the call (no person, library, face or URL) and no credential.
    """

    action: str
    """The operation's Action, e.g. ``"RegisterCustomFace"``."""
    attempt: int
    """1 for the first attempt of a call, 2 for its first retry, ..."""
    outcome: AttemptOutcome
    """``ok``, ``throttled``, ``error`` (another error answer), ``transport_error`` (no usable
    answer) or ``cancelled`` (the caller gave up while it was in flight)."""
    started: float
    """When the request was sent, in seconds since the epoch (``time.time()``)."""
    limiter_wait: float
    """Seconds this attempt waited for the rate limiter's slot."""
    duration: float
    """Seconds from sending to the answer (or the failure)."""
    in_flight: int
    """Requests of this client on the wire when this one was sent, itself included."""
    retrying: bool
    """Whether another attempt of the same call follows."""
    error: str | None = None
    """The service's error ``Code`` (``Throttling.User``, ``InternalError``, ...) or the error
    class for failures without one (``RequestTimeoutError``); None on success."""
    http_status: int | None = None
    """The HTTP status of an error answer; None on success or when no answer came."""
    request_id: str | None = None
    """The service's RequestId, when an answer came."""
    rate: float | None = None
    """The limiter's rate (calls per second) after this attempt; None if it reports none."""

    @property
    def throttled(self) -> bool:
        """Whether the service throttled this attempt."""
        return self.outcome == "throttled"


AttemptHook = Callable[[AttemptEvent], object]


@attrs.frozen
class ClientStats:
    """A snapshot of one client's calls since it was built (``client.stats``).

    Percentiles are over the last :data:`LATENCY_SAMPLES` attempts (None before the first).
    """

    calls: int
    """Operation calls finished, whatever their outcome."""
    succeeded: int
    """Calls that returned a result."""
    failed: int
    """Calls that raised (ambiguous ones included)."""
    ambiguous: int
    """Registrations whose outcome is unknown (:class:`AmbiguousOutcomeError`)."""
    attempts: int
    """Requests sent, retries included: what the account quota is charged."""
    throttled: int
    """Attempts the service throttled."""
    retried: int
    """Attempts that were retried (each retry counts once)."""
    in_flight: int
    """Requests on the wire now."""
    current_rate: float | None
    """The limiter's current rate in calls per second (None if it reports none)."""
    current_margin: float | None
    """The limiter's window margin in seconds, for limiters that report one (else None)."""
    latency_p50: float | None
    """Median seconds from sending to the answer."""
    latency_p95: float | None
    """95th percentile of the same."""
    limiter_wait_p50: float | None
    """Median seconds an attempt waited for the limiter."""
    limiter_wait_p95: float | None
    """95th percentile of the same."""


def limiter_reading(limiter: object, name: str) -> float | None:
    """A number a limiter reports as attribute ``name`` (``current_rate``,
    ``current_margin``), or None for a limiter without it."""
    value = getattr(limiter, name, None)
    return float(value) if isinstance(value, int | float) else None


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank; None when empty."""
    if not sorted_values:
        return None
    rank = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[min(rank, len(sorted_values) - 1)]


def _code_of(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return exc.code
    return type(exc).__name__


def _attempt_outcome(exc: BaseException | None) -> AttemptOutcome:
    if exc is None:
        return "ok"
    if isinstance(exc, ThrottlingError):
        return "throttled"
    if isinstance(exc, APIError):
        return "error"
    if isinstance(exc, TransportError):
        return "transport_error"
    if isinstance(exc, BaseException) and not isinstance(exc, Exception):
        return "cancelled"
    return "error"


def _call_outcome(exc: BaseException | None) -> CallOutcome:
    if exc is None:
        return "ok"
    if isinstance(exc, AmbiguousOutcomeError):
        return "ambiguous"
    if isinstance(exc, ThrottlingError):
        return "throttled"
    if not isinstance(exc, Exception):
        return "cancelled"
    return "error"


class Telemetry:
    """The per-client collector behind ``client.stats``, attempt hooks and OpenTelemetry.

    Args:
        hooks: attempt hooks to start with.
        include_ids: put IDs, URLs and error messages in span attributes (personal data).
        tracer_provider: an OpenTelemetry ``TracerProvider`` to use instead of the global one.
        meter_provider: an OpenTelemetry ``MeterProvider`` to use instead of the global one.
        rate: reads the limiter's current rate (None if it has none).
        margin: reads the limiter's current window margin in seconds (None if it has none).
        region: the client's region, for ``cloud.region``.
        host: the endpoint's ``host[:port]``, for ``server.address`` / ``server.port``.
    """

    def __init__(
        self,
        *,
        hooks: Iterable[AttemptHook] = (),
        include_ids: bool = False,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        rate: Callable[[], float | None] = lambda: None,
        margin: Callable[[], float | None] = lambda: None,
        region: str = "",
        host: str = "",
    ) -> None:
        self.hooks: tuple[AttemptHook, ...] = tuple(hooks)
        self.include_ids = include_ids
        self._rate = rate
        self._margin = margin
        self.calls = self.succeeded = self.failed = self.ambiguous = 0
        self.attempts = self.throttled = self.retried = self.in_flight = 0
        self._latencies = [0.0] * LATENCY_SAMPLES
        self._waits = [0.0] * LATENCY_SAMPLES
        self._samples = 0  # attempts recorded into the rings (their write position)
        address, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
        self._base_attributes: dict[str, Any] = {
            "rpc.system": RPC_SYSTEM,
            "rpc.service": RPC_SERVICE,
            "cloud.provider": "alibaba_cloud",
            "cloud.region": region,
            "server.address": address or host,
        }
        if port.isdigit():
            self._base_attributes["server.port"] = int(port)
        # Metric attributes: few, as each recording hashes them.
        self._metric_base = {
            k: v
            for k, v in self._base_attributes.items()
            if k in ("rpc.system", "rpc.service", "server.address")
        }
        self._labels: dict[tuple[str, str | None, str | None], dict[str, Any]] = {}
        self._explicit = tracer_provider is not None or meter_provider is not None
        self._otel: _Otel | None = None
        if self._explicit:
            self._otel = _Otel.build(tracer_provider, meter_provider, self)
        self._recheck_at = 0.0  # when to look again for a global provider still missing

    # --- hooks and stats ----------------------------------------------------------------

    def add_hook(self, hook: AttemptHook) -> None:
        """Call ``hook`` with every attempt's :class:`AttemptEvent` from now on."""
        self.hooks = (*self.hooks, hook)

    def remove_hook(self, hook: AttemptHook) -> None:
        """Stop calling ``hook`` (a hook never added is ignored)."""
        self.hooks = tuple(h for h in self.hooks if h != hook)  # == : bound methods

    def stats(self) -> ClientStats:
        """The counters and percentiles now."""
        count = min(self._samples, LATENCY_SAMPLES)
        latencies = sorted(self._latencies[:count])
        waits = sorted(self._waits[:count])
        return ClientStats(
            calls=self.calls,
            succeeded=self.succeeded,
            failed=self.failed,
            ambiguous=self.ambiguous,
            attempts=self.attempts,
            throttled=self.throttled,
            retried=self.retried,
            in_flight=self.in_flight,
            current_rate=self._rate(),
            current_margin=self._margin(),
            latency_p50=percentile(latencies, 0.5),
            latency_p95=percentile(latencies, 0.95),
            limiter_wait_p50=percentile(waits, 0.5),
            limiter_wait_p95=percentile(waits, 0.95),
        )

    def labels(
        self, action: str, outcome: str | None = None, error: str | None = None
    ) -> dict[str, Any]:
        """Metric attributes for an action (and an outcome, an error type), built once."""
        key = (action, outcome, error)
        found = self._labels.get(key)
        if found is None:
            found = {**self._metric_base, "rpc.method": action}
            if outcome is not None:
                found["mts_faces.outcome"] = outcome
            if error is not None:
                found["error.type"] = error
            if len(self._labels) < 512:  # error codes come from the service: stay bounded
                self._labels[key] = found
        return found

    @property
    def current_rate(self) -> float | None:
        """The limiter's current rate, as the client reports it."""
        return self._rate()

    @property
    def current_margin(self) -> float | None:
        """The limiter's current window margin in seconds, if it reports one."""
        return self._margin()

    # --- the request path's side ----------------------------------------------------------

    def begin(
        self, operation: Operation, params: Mapping[str, str], priority: str | None = None
    ) -> CallTrace:
        """A trace for one operation call (in the limiter lane ``priority``), started now."""
        otel = self._otel if self._explicit else self._global_otel()
        return CallTrace(self, operation.action, params, otel, priority)

    def _global_otel(self) -> _Otel | None:
        otel = self._otel
        if otel is not None and (otel.complete or time.monotonic() < self._recheck_at):
            return otel
        # Nobody configured OpenTelemetry without importing it: until then, one lookup.
        modules = sys.modules
        if "opentelemetry.trace" not in modules and "opentelemetry.metrics" not in modules:
            return None
        tracer_provider, meter_provider = _configured_providers()
        if tracer_provider is None and meter_provider is None:
            return None
        if otel is None or (tracer_provider is not None) + (meter_provider is not None) > (
            (otel.tracer is not None) + (otel.instruments is not None)
        ):
            self._otel = otel = _Otel.build(tracer_provider, meter_provider, self)
        # One provider set, not the other (yet): look for it again now and then.
        self._recheck_at = time.monotonic() + 5.0
        return otel

    def _record(self, latency: float, wait: float) -> None:
        slot = self._samples % LATENCY_SAMPLES
        self._latencies[slot] = latency
        self._waits[slot] = wait
        self._samples += 1

    def _emit(self, event: AttemptEvent) -> None:
        for hook in self.hooks:
            try:
                hook(event)
            except Exception:
                logger.exception("attempt hook %r raised; the call goes on", hook)


class CallTrace:
    """One operation call as the request path reports it (see the module's docstring)."""

    __slots__ = (
        "_attempt",
        "_sent_at",
        "_sent_wall",
        "_span",
        "_started",
        "_throttles",
        "_token",
        "_waited",
        "_waited_total",
        "action",
        "in_flight_at_send",
        "otel",
        "telemetry",
    )

    def __init__(
        self,
        telemetry: Telemetry,
        action: str,
        params: Mapping[str, str],
        otel: _Otel | None,
        priority: str | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.action = action
        self.otel = otel
        self._started = time.perf_counter()
        self._attempt = 0
        self._sent_at: float | None = None  # the attempt on the wire, if any
        self._sent_wall = 0.0
        self._waited = 0.0
        self._waited_total = 0.0
        self._throttles = 0
        self.in_flight_at_send = 0
        self._span: Any = None
        self._token: Any = None
        if otel is not None:
            self._span, self._token = otel.start_call(telemetry, action, params, priority)

    def sent(self, waiting_since: float) -> None:
        """The limiter granted the slot (it was asked at ``waiting_since``, a
        ``time.perf_counter()`` reading) and the request is being sent."""
        now = time.perf_counter()
        telemetry = self.telemetry
        telemetry.attempts += 1
        telemetry.in_flight += 1
        self._attempt += 1
        self._sent_at = now
        self._sent_wall = time.time()
        self._waited = now - waiting_since
        self._waited_total += self._waited
        self.in_flight_at_send = telemetry.in_flight

    def retrying(self, exc: BaseException) -> None:
        """The attempt failed with ``exc``; another one follows."""
        self.telemetry.retried += 1
        self._end_attempt(exc, retrying=True)

    def end(self, error: BaseException | None, result: object = None) -> None:
        """The call returned ``result``, or raised ``error``."""
        telemetry = self.telemetry
        cause = error.cause if isinstance(error, AmbiguousOutcomeError) else error
        request_id = getattr(result, "request_id", None)
        if self._sent_at is not None:
            self._end_attempt(cause, retrying=False, request_id=request_id)
        telemetry.calls += 1
        if error is None:
            telemetry.succeeded += 1
        else:
            telemetry.failed += 1
            if isinstance(error, AmbiguousOutcomeError):
                telemetry.ambiguous += 1
        if self.otel is not None:
            duration = time.perf_counter() - self._started
            self.otel.end_call(self, error, request_id, duration)

    def _end_attempt(
        self, exc: BaseException | None, *, retrying: bool, request_id: str | None = None
    ) -> None:
        sent_at = self._sent_at
        if sent_at is None:  # failed before it was sent (e.g. cancelled at the limiter)
            return
        self._sent_at = None
        telemetry = self.telemetry
        duration = time.perf_counter() - sent_at
        telemetry.in_flight -= 1
        telemetry._record(duration, self._waited)
        outcome = _attempt_outcome(exc)
        if outcome == "throttled":
            telemetry.throttled += 1
            self._throttles += 1
        if isinstance(exc, APIError):
            request_id = exc.request_id
        if not telemetry.hooks and self.otel is None:
            return
        event = AttemptEvent(
            action=self.action,
            attempt=self._attempt,
            outcome=outcome,
            started=self._sent_wall,
            limiter_wait=self._waited,
            duration=duration,
            in_flight=self.in_flight_at_send,
            retrying=retrying,
            error=None if exc is None else _code_of(exc),
            http_status=exc.http_status if isinstance(exc, APIError) else None,
            request_id=request_id,
            rate=telemetry.current_rate,
        )
        if self.otel is not None:
            self.otel.attempt(self, event)
        if telemetry.hooks:
            telemetry._emit(event)


# --- OpenTelemetry ------------------------------------------------------------------------


def _configured_providers() -> tuple[Any, Any]:
    """The global tracer and meter providers, each None unless an application set one."""
    tracer_provider = meter_provider = None
    if "opentelemetry.trace" in sys.modules:
        from opentelemetry import trace

        candidate = trace.get_tracer_provider()
        if not isinstance(candidate, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            tracer_provider = candidate
    if "opentelemetry.metrics" in sys.modules:
        from opentelemetry import metrics

        found = metrics.get_meter_provider()
        # The proxy's class is private; its name is what identifies it.
        if not isinstance(found, metrics.NoOpMeterProvider) and type(found).__name__ not in (
            "_ProxyMeterProvider",
            "ProxyMeterProvider",
        ):
            meter_provider = found
    return tracer_provider, meter_provider


class _Instruments:
    """The metric instruments of one meter provider, shared by every client using it."""

    def __init__(self, meter_provider: Any) -> None:
        from opentelemetry.metrics import Observation

        from . import __version__

        self._observation = Observation
        meter = meter_provider.get_meter(INSTRUMENTATION_NAME, __version__)
        self.call_duration = meter.create_histogram(
            "mts_faces.client.call.duration",
            unit="s",
            description="Operation calls, by outcome: limiter waits, attempts and backoff",
        )
        self.attempt_duration = meter.create_histogram(
            "mts_faces.client.attempt.duration",
            unit="s",
            description="Requests (retries included), by outcome: from sending to the answer",
        )
        self.limiter_wait = meter.create_histogram(
            "mts_faces.client.limiter.wait",
            unit="s",
            description="Time an attempt waited for the rate limiter",
        )
        self.clients: weakref.WeakSet[Telemetry] = weakref.WeakSet()
        meter.create_observable_gauge(
            "mts_faces.client.limiter.rate",
            callbacks=[self._observe_rate],
            unit="{call}/s",
            description="The rate limiter's current rate",
        )
        meter.create_observable_gauge(
            "mts_faces.client.limiter.margin",
            callbacks=[self._observe_margin],
            unit="s",
            description="The rate limiter's window margin (limiters that report one)",
        )

    def _observe_rate(self, options: Any) -> Iterable[Any]:
        for client in list(self.clients):
            rate = client.current_rate
            if rate is not None:
                yield self._observation(rate, client._metric_base)

    def _observe_margin(self, options: Any) -> Iterable[Any]:
        for client in list(self.clients):
            margin = client.current_margin
            if margin is not None:
                yield self._observation(margin, client._metric_base)


# Instruments per meter provider (by identity), so that clients sharing a provider share them.
# Weak keys: a provider the application drops takes its instruments with it.
_INSTRUMENTS: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()


def _instruments_for(meter_provider: Any) -> _Instruments:
    found = _INSTRUMENTS.get(meter_provider)
    if found is None:
        found = _INSTRUMENTS[meter_provider] = _Instruments(meter_provider)
    return found


class _Otel:
    """Spans and metrics for one client, from the providers it resolved."""

    def __init__(self, tracer: Any, instruments: _Instruments | None) -> None:
        from opentelemetry import context, trace

        self.tracer = tracer
        self.instruments = instruments
        self.complete = tracer is not None and instruments is not None
        self._trace = trace
        self._context = context

    @classmethod
    def build(cls, tracer_provider: Any, meter_provider: Any, telemetry: Telemetry) -> _Otel:
        from ._extras import import_extra

        import_extra("opentelemetry.trace", "telemetry (tracer_provider=, meter_provider=)")
        from . import __version__

        tracer = (
            tracer_provider.get_tracer(INSTRUMENTATION_NAME, __version__)
            if tracer_provider is not None
            else None
        )
        instruments = _instruments_for(meter_provider) if meter_provider is not None else None
        if instruments is not None:
            instruments.clients.add(telemetry)
        return cls(tracer, instruments)

    def start_call(
        self,
        telemetry: Telemetry,
        action: str,
        params: Mapping[str, str],
        priority: str | None,
    ) -> tuple[Any, Any]:
        if self.tracer is None:
            return None, None
        attributes = {**telemetry._base_attributes, "rpc.method": action}
        if priority is not None:
            attributes["mts_faces.priority"] = priority
        if telemetry.include_ids:
            for wire, name in _ID_ATTRIBUTES.items():
                if wire in params:
                    attributes[name] = params[wire]
        span = self.tracer.start_span(
            f"{RPC_SERVICE}/{action}", kind=self._trace.SpanKind.CLIENT, attributes=attributes
        )
        # Current for the call's duration, so instrumented HTTP clients nest their spans.
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token

    def attempt(self, call: CallTrace, event: AttemptEvent) -> None:
        span = call._span
        if span is not None:
            attributes: dict[str, Any] = {
                "mts_faces.attempt": event.attempt,
                "mts_faces.outcome": event.outcome,
                "mts_faces.limiter_wait": event.limiter_wait,
                "mts_faces.duration": event.duration,
                "mts_faces.retrying": event.retrying,
            }
            if event.error is not None:
                attributes["error.type"] = event.error
            if event.http_status is not None:
                attributes["http.response.status_code"] = event.http_status
            if event.request_id is not None:
                attributes["mts_faces.request_id"] = event.request_id
            span.add_event("mts_faces.attempt", attributes)
        instruments = self.instruments
        if instruments is not None:
            labels = call.telemetry.labels(call.action, event.outcome, event.error)
            instruments.attempt_duration.record(event.duration, labels)
            waited = call.telemetry.labels(call.action)
            instruments.limiter_wait.record(event.limiter_wait, waited)

    def end_call(
        self,
        call: CallTrace,
        error: BaseException | None,
        request_id: str | None,
        duration: float,
    ) -> None:
        outcome = _call_outcome(error)
        telemetry = call.telemetry
        instruments = self.instruments
        if instruments is not None:
            labels = telemetry.labels(call.action, outcome)
            instruments.call_duration.record(duration, labels)
        span = call._span
        if span is None:
            return
        attributes: dict[str, Any] = {
            "mts_faces.outcome": outcome,
            "mts_faces.attempts": call._attempt,
            "mts_faces.throttles": call._throttles,
            "mts_faces.limiter_wait": call._waited_total,
        }
        failure = error.cause if isinstance(error, AmbiguousOutcomeError) else error
        if request_id is None and isinstance(failure, APIError):
            request_id = failure.request_id
        if request_id is not None:
            attributes["mts_faces.request_id"] = request_id
        if error is not None and failure is not None:
            code = _code_of(failure)
            attributes["error.type"] = type(error).__name__
            attributes["mts_faces.error_code"] = code
            # Messages may echo a person or URL back: only when the user opted in.
            description = f"{type(error).__name__}: {error}" if telemetry.include_ids else code
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, description))
        span.set_attributes(attributes)
        span.end()
        if call._token is not None:
            # Ended in another context than it began: nothing to restore.
            with contextlib.suppress(Exception):
                self._context.detach(call._token)


__all__ = ["AttemptEvent", "CallTrace", "ClientStats", "Telemetry"]

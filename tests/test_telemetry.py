"""Telemetry: ``client.stats``, attempt hooks, and OpenTelemetry spans and metrics.

Spans and metrics are captured with the OTel SDK's in-memory exporter and reader, passed to
the client (``tracer_provider=`` / ``meter_provider=``), so no global state is touched; what
needs the global providers runs in a subprocess. The service is the in-process emulator;
throttling is made deterministic with the emulator's injected clock, moved on by a hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mts_faces import AmbiguousOutcomeError, AttemptEvent, MtsFaceClient
from mts_faces._telemetry import LATENCY_SAMPLES, percentile
from mts_faces.emulator import Emulator, EmulatorConfig

PERSON = "person-Zhang-Wei-4711"
CATEGORY = "lib-private-99"
URL = "https://img.example.com/private/zhang-wei-4711.jpg"


class Clock:
    """The emulator's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Otel:
    """An SDK tracer provider and meter provider writing to memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def kwargs(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> its data points."""
        found: dict[str, list[Any]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


def count(points: list[Any], **labels: Any) -> int:
    """Recordings of a histogram whose attributes match ``labels``."""
    return sum(p.count for p in points if all(p.attributes.get(k) == v for k, v in labels.items()))


def client_for(emulator: Emulator, **overrides: Any) -> MtsFaceClient:
    return MtsFaceClient(**emulator.client_kwargs(in_process=True, **overrides))


@pytest.fixture
def otel() -> Otel:
    return Otel()


async def test_success_span_metrics_and_stats(otel: Otel) -> None:
    emulator = Emulator(EmulatorConfig(seed=1))
    events: list[AttemptEvent] = []
    async with client_for(emulator, on_attempt=events.append, **otel.kwargs()) as client:
        face = await client.register_custom_face(CATEGORY, PERSON, URL)
        stats = client.stats

    [span] = otel.spans()
    assert span.name == "mts/RegisterCustomFace"
    assert span.kind is SpanKind.CLIENT
    attributes = dict(span.attributes or {})
    assert attributes["rpc.system"] == "alibaba_cloud"
    assert attributes["rpc.service"] == "mts"
    assert attributes["rpc.method"] == "RegisterCustomFace"
    assert attributes["cloud.region"] == "cn-shanghai"
    assert attributes["mts_faces.priority"] == "interactive"
    assert attributes["server.address"]
    assert attributes["mts_faces.outcome"] == "ok"
    assert attributes["mts_faces.attempts"] == 1
    assert attributes["mts_faces.throttles"] == 0
    assert attributes["mts_faces.request_id"] == face.request_id
    assert attributes["mts_faces.limiter_wait"] >= 0
    assert span.status.status_code is not StatusCode.ERROR
    [event] = span.events
    assert event.name == "mts_faces.attempt"
    assert event.attributes is not None
    assert event.attributes["mts_faces.outcome"] == "ok"
    assert event.attributes["mts_faces.retrying"] is False

    metrics = otel.metrics()
    calls = metrics["mts_faces.client.call.duration"]
    assert count(calls, **{"mts_faces.outcome": "ok", "rpc.method": "RegisterCustomFace"}) == 1
    [latency] = metrics["mts_faces.client.attempt.duration"]
    assert latency.attributes["mts_faces.outcome"] == "ok"
    assert latency.count == 1
    [wait] = metrics["mts_faces.client.limiter.wait"]
    assert wait.count == 1
    assert latency.attributes["rpc.method"] == "RegisterCustomFace"
    [rate] = metrics["mts_faces.client.limiter.rate"]
    assert rate.value == 100.0

    [hooked] = events
    assert hooked.outcome == "ok" and hooked.attempt == 1 and not hooked.retrying
    assert hooked.request_id == face.request_id
    assert hooked.in_flight == 1
    assert stats.calls == stats.succeeded == stats.attempts == 1
    assert stats.failed == stats.throttled == stats.retried == stats.in_flight == 0
    assert stats.current_rate == 100.0
    assert stats.latency_p50 is not None and stats.latency_p95 is not None


async def test_throttled_then_retried(otel: Otel) -> None:
    clock = Clock()
    emulator = Emulator(EmulatorConfig(qps=1, seed=2), clock=clock)
    events: list[AttemptEvent] = []

    def on_attempt(event: AttemptEvent) -> None:
        events.append(event)
        if event.throttled:
            clock.now += 1.5  # the emulator's quota window has passed when the retry arrives

    kwargs = dict(qps=100.0, backoff_base=0.001, on_attempt=on_attempt, **otel.kwargs())
    async with client_for(emulator, **kwargs) as client:
        await client.register_custom_face(CATEGORY, "p-1", URL)
        second = await client.register_custom_face(CATEGORY, "p-2", URL)
        stats = client.stats

    assert [e.outcome for e in events] == ["ok", "throttled", "ok"]
    throttled = events[1]
    assert throttled.retrying and throttled.error == "Throttling.User"
    assert throttled.http_status is not None and throttled.request_id
    assert events[2].attempt == 2 and events[2].request_id == second.request_id
    assert emulator.stats.throttled == 1  # the service's own count

    span = otel.spans()[1]
    attributes = dict(span.attributes or {})
    assert attributes["mts_faces.outcome"] == "ok"
    assert attributes["mts_faces.attempts"] == 2
    assert attributes["mts_faces.throttles"] == 1
    assert attributes["mts_faces.request_id"] == second.request_id
    outcomes = [(e.attributes or {}).get("mts_faces.outcome") for e in span.events]
    assert outcomes == ["throttled", "ok"]
    assert (span.events[0].attributes or {})["error.type"] == "Throttling.User"

    metrics = otel.metrics()
    attempts = metrics["mts_faces.client.attempt.duration"]
    throttled_label = {"mts_faces.outcome": "throttled", "error.type": "Throttling.User"}
    assert count(attempts, **throttled_label) == 1
    assert count(attempts, **{"mts_faces.outcome": "ok"}) == 2
    assert count(metrics["mts_faces.client.call.duration"], **{"mts_faces.outcome": "ok"}) == 2
    assert count(metrics["mts_faces.client.limiter.wait"]) == 3
    assert stats.throttled == 1 and stats.retried == 1 and stats.attempts == 3
    assert stats.calls == stats.succeeded == 2


@pytest.mark.parametrize(
    ("fault", "code"),
    [("internal_error_rate", "InternalError"), ("drop_rate", "RemoteProtocolError")],
)
async def test_ambiguous_registration(otel: Otel, fault: str, code: str) -> None:
    emulator = Emulator(EmulatorConfig(seed=3, **{fault: 1.0}))
    events: list[AttemptEvent] = []
    async with client_for(emulator, on_attempt=events.append, **otel.kwargs()) as client:
        with pytest.raises(AmbiguousOutcomeError):
            await client.register_custom_face(CATEGORY, PERSON, URL)
        stats = client.stats

    [span] = otel.spans()
    attributes = dict(span.attributes or {})
    assert attributes["mts_faces.outcome"] == "ambiguous"
    assert attributes["error.type"] == "AmbiguousOutcomeError"
    assert attributes["mts_faces.attempts"] == 1  # never retried blindly
    assert span.status.status_code is StatusCode.ERROR
    [event] = events
    assert not event.retrying
    if code == "InternalError":
        assert attributes["mts_faces.error_code"] == "InternalError"
        assert attributes["mts_faces.request_id"] == event.request_id
        assert event.outcome == "error" and event.http_status == 500
    else:
        assert event.outcome == "transport_error" and event.http_status is None
    metrics = otel.metrics()
    calls = metrics["mts_faces.client.call.duration"]
    assert count(calls, **{"mts_faces.outcome": "ambiguous"}) == 1
    assert stats.ambiguous == stats.failed == stats.calls == 1
    assert stats.in_flight == 0


def _all_exported_text(otel: Otel) -> str:
    """Every attribute value, event attribute and status description that was exported."""
    parts: list[str] = []
    for span in otel.spans():
        parts.append(span.name)
        parts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
        parts.append(span.status.description or "")
        for event in span.events:
            parts += [f"{k}={v}" for k, v in (event.attributes or {}).items()]
    for points in otel.metrics().values():
        for point in points:
            parts += [f"{k}={v}" for k, v in point.attributes.items()]
    return "\n".join(parts)


@pytest.mark.parametrize("include_ids", [False, True])
async def test_no_ids_urls_or_secrets_unless_opted_in(otel: Otel, include_ids: bool) -> None:
    # The failure path too: the service's error messages may echo the person back.
    emulator = Emulator(EmulatorConfig(seed=4, internal_error_rate=0.5))
    secret = emulator.key.access_key_secret
    async with client_for(emulator, telemetry_include_ids=include_ids, **otel.kwargs()) as client:
        for i in range(6):
            with contextlib.suppress(AmbiguousOutcomeError):
                await client.register_custom_face(CATEGORY, PERSON, URL.replace(".jpg", f"{i}.jpg"))
        with pytest.raises(Exception):  # noqa: B017 (any error: a person the service lacks)
            await client.unregister_custom_face(CATEGORY, "nobody-" + PERSON, "f" * 32)
        await client.list_custom_persons(CATEGORY, PERSON)
    text = _all_exported_text(otel)
    assert "mts/ListCustomPersons" in text and "mts/UnregisterCustomFace" in text
    assert secret not in text
    assert emulator.key.access_key_id not in text
    for private in (PERSON, CATEGORY, "img.example.com"):
        assert (private in text) is include_ids, private


async def test_hook_errors_do_not_break_calls(caplog: pytest.LogCaptureFixture) -> None:
    emulator = Emulator(EmulatorConfig(seed=5))
    seen: list[AttemptEvent] = []

    def broken(event: AttemptEvent) -> None:
        raise RuntimeError("hook bug")

    async with client_for(emulator, on_attempt=broken) as client:
        client.add_attempt_hook(seen.append)
        with caplog.at_level(logging.ERROR, logger="mts_faces"):
            await client.register_custom_face(CATEGORY, PERSON, URL)
        client.remove_attempt_hook(seen.append)
        await client.register_custom_face(CATEGORY, PERSON, URL + "?2")
    assert len(seen) == 1  # removed before the second call
    assert "hook bug" in caplog.text
    assert client.stats.succeeded == 2


async def test_in_flight_and_cancellation(otel: Otel) -> None:
    emulator = Emulator(EmulatorConfig(seed=6, latency=30.0))
    events: list[AttemptEvent] = []
    async with client_for(emulator, qps=1e6, on_attempt=events.append, **otel.kwargs()) as client:
        tasks = [
            asyncio.create_task(client.register_custom_face(CATEGORY, f"p{i}", URL))
            for i in range(5)
        ]
        for _ in range(200):
            await asyncio.sleep(0)
            if client.stats.in_flight == 5:
                break
        assert client.stats.in_flight == 5
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stats = client.stats
    assert stats.in_flight == 0
    assert stats.calls == 5 and stats.failed == 5 and stats.succeeded == 0
    assert sorted(e.in_flight for e in events) == [1, 2, 3, 4, 5]
    assert {e.outcome for e in events} == {"cancelled"}
    spans = otel.spans()
    assert len(spans) == 5
    assert {(s.attributes or {})["mts_faces.outcome"] for s in spans} == {"cancelled"}


def test_percentiles_and_bounded_samples() -> None:
    assert percentile([], 0.5) is None
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.95) == 95.0
    assert percentile([3.0], 0.95) == 3.0
    assert LATENCY_SAMPLES >= 1024


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_opentelemetry_not_even_imported_unless_the_application_did() -> None:
    out = _python(
        """
        import asyncio, sys
        from mts_faces import MtsFaceClient
        from mts_faces.emulator import Emulator

        async def main():
            emulator = Emulator()
            async with MtsFaceClient(**emulator.client_kwargs(in_process=True)) as client:
                await client.list_custom_persons()
        asyncio.run(main())
        print(sorted(m for m in sys.modules if m.startswith(("opentelemetry", "matplotlib"))))
        """
    )
    assert out == "[]"


def test_global_providers_nothing_before_configured_then_spans() -> None:
    out = _python(
        """
        import asyncio
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
        from mts_faces import MtsFaceClient
        from mts_faces.emulator import Emulator

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))

        async def main():
            emulator = Emulator()
            async with MtsFaceClient(**emulator.client_kwargs(in_process=True)) as client:
                await client.list_custom_persons()  # no provider configured yet
                before = len(exporter.get_finished_spans())
                trace.set_tracer_provider(provider)
                await client.list_custom_persons()
                after = [s.name for s in exporter.get_finished_spans()]
            print(before, after)
        asyncio.run(main())
        """
    )
    assert out == "0 ['mts/ListCustomPersons']"


def test_missing_otel_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from mts_faces import MissingExtraError

    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(MissingExtraError) as caught:
        MtsFaceClient(
            access_key_id="LTAIexample",
            access_key_secret="s",
            tracer_provider=object(),
        )
    assert caught.value.extra == "otel"


class ReportingLimiter:
    """A limiter of the user's own that reports a rate and a window margin."""

    current_rate = 42.0
    current_margin = 0.007

    async def acquire(self) -> None:
        return None

    def on_success(self) -> None:
        return None

    def on_throttled(self) -> None:
        return None


async def test_limiter_rate_and_margin_reported(otel: Otel) -> None:
    emulator = Emulator(EmulatorConfig(seed=8))
    limiter = ReportingLimiter()
    async with client_for(emulator, limiter=limiter, **otel.kwargs()) as client:
        await client.list_custom_persons()
        stats = client.stats
    assert stats.current_rate == 42.0 and stats.current_margin == 0.007
    metrics = otel.metrics()
    assert [p.value for p in metrics["mts_faces.client.limiter.rate"]] == [42.0]
    assert [p.value for p in metrics["mts_faces.client.limiter.margin"]] == [0.007]
    # The default limiter reports its own margin; the client reads it, never makes one up.
    async with client_for(emulator) as plain:
        assert plain.stats.current_margin == getattr(plain.limiter, "current_margin", None)

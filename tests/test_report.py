"""Run reports: the recorder's bounded timeline, and the HTML page with its inline plots."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mts_faces import AttemptEvent, MtsFaceClient
from mts_faces.emulator import Emulator, EmulatorConfig
from mts_faces.report import Bucket, RunRecorder, render_html, write_report

VOID = {"meta", "br", "img", "hr", "input", "link", "col", "area", "base", "source", "wbr"}
SVG_NS = "{http://www.w3.org/2000/svg}"


class Checker(HTMLParser):
    """Checks that every element is closed in order; collects the text and the inline SVG."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.seen: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_page(page: str) -> Checker:
    """The page is well nested HTML5 with exactly one inline SVG that parses as XML."""
    assert page.startswith("<!DOCTYPE html>")
    checker = Checker()
    checker.feed(page)
    checker.close()
    assert not checker.errors, checker.errors[:5]
    assert not checker.stack, checker.stack
    assert checker.seen[:3] == ["html", "head", "meta"]
    start, end = page.find("<svg"), page.rfind("</svg>")
    if start >= 0:
        root = ET.fromstring(page[start : end + len("</svg>")])
        assert root.tag == f"{SVG_NS}svg"
    # Self-contained: nothing to fetch (no script, stylesheet or image from elsewhere).
    assert "http-equiv" not in page and "<script" not in page and "<link" not in page
    assert 'src="http' not in page and "url(http" not in page
    return checker


def event(started: float, outcome: str = "ok", **changes: object) -> AttemptEvent:
    fields: dict[str, object] = dict(
        action="RegisterCustomFace",
        attempt=1,
        outcome=outcome,
        started=started,
        limiter_wait=0.0,
        duration=0.05,
        in_flight=1,
        retrying=False,
        error=None if outcome == "ok" else "Throttling.User",
        rate=100.0,
    )
    fields.update(changes)
    return AttemptEvent(**fields)  # type: ignore[arg-type]


def test_buckets_count_attempts_by_second() -> None:
    recorder = RunRecorder(quota=100, clock=lambda: 1000.0)
    for i in range(10):
        recorder(event(1000.0 + i * 0.1))
    recorder(event(1001.5, "throttled", retrying=True, in_flight=7))
    recorder(event(1001.6, "error", error="InternalError", http_status=500, request_id="R-1"))
    timeline = recorder.timeline()
    assert timeline.width == 1.0
    assert [b.ok for b in timeline.buckets] == [10, 0]
    assert [b.throttled for b in timeline.buckets] == [0, 1]
    assert [b.errors for b in timeline.buckets] == [0, 1]
    assert timeline.buckets[1].in_flight == 7
    assert recorder.outcomes == {"ok": 10, "throttled": 1, "error": 1}
    # Only calls that failed for good are listed (the throttled attempt was retried).
    assert recorder.failures == [
        "+1.6 s RegisterCustomFace attempt 1: InternalError HTTP 500, RequestId R-1"
    ]


def test_timeline_memory_is_bounded_and_totals_kept() -> None:
    recorder = RunRecorder(max_buckets=8, clock=lambda: 0.0)
    for second in range(100):
        recorder(event(second + 0.5))
        recorder(event(second + 0.6, "throttled", retrying=True))
    timeline = recorder.timeline()
    assert len(timeline.buckets) <= 8
    assert timeline.width == 16.0
    assert sum(b.ok for b in timeline.buckets) == 100
    assert sum(b.throttled for b in timeline.buckets) == 100
    assert timeline.per_second("ok")[0] == 1.0  # 16 in 16 seconds


def test_latency_quantiles_are_close() -> None:
    recorder = RunRecorder(clock=lambda: 0.0)
    for i in range(1, 101):
        recorder(event(0.5, duration=i / 1000))  # 1..100 ms
    bucket = recorder.timeline().buckets[0]
    p50, p95 = bucket.latency(0.5), bucket.latency(0.95)
    assert p50 is not None and p95 is not None
    assert 0.050 * 0.95 <= p50 <= 0.050 * 1.05
    assert 0.095 * 0.95 <= p95 <= 0.095 * 1.05
    assert Bucket().latency(0.5) is None


def test_page_is_valid_html_holding_the_plots() -> None:
    recorder = RunRecorder(quota=100, clock=lambda: 0.0)
    for i in range(300):
        recorder(event(i / 100))
    recorder(event(1.2, "throttled"))
    page = render_html(
        recorder,
        title="demo <run>",
        summary={"registered": 299, "failed": 1},
        failures=["row 7: <script>alert(1)</script> & more"],
    )
    checker = check_page(page)
    assert checker.seen.count("svg") == 1
    text = "".join(checker.text)
    assert "demo <run>" in text  # escaped in the source, shown as written
    assert "<script>alert(1)</script> & more" in text
    assert "registered" in text and "299" in text
    # The plot's own labels (text kept as text in the SVG).
    for label in ("calls per second", "throttled /s", "quota 100/s", "p95", "in flight"):
        assert label in page, label


def test_page_without_calls_has_no_plot() -> None:
    page = render_html(RunRecorder(clock=lambda: 0.0))
    check_page(page)
    assert "No call was made" in page and "<svg" not in page


def test_write_report_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "run.html"
    target.write_text("old")
    recorder = RunRecorder(clock=lambda: 0.0)
    recorder(event(0.1))
    assert write_report(target, recorder) == target
    check_page(target.read_text(encoding="utf-8"))
    assert [p.name for p in tmp_path.iterdir()] == ["run.html"]  # no temporary left


def test_svg_path_gets_the_plots_alone(tmp_path: Path) -> None:
    recorder = RunRecorder(quota=10, clock=lambda: 0.0)
    recorder(event(0.1))
    path = write_report(tmp_path / "run.svg", recorder, title="demo")
    root = ET.fromstring(path.read_text(encoding="utf-8"))
    assert root.tag == f"{SVG_NS}svg"
    assert "quota 10/s" in path.read_text(encoding="utf-8")


async def test_report_of_a_throttled_run_in_process(tmp_path: Path) -> None:
    # The client believes in 3x the emulator's quota: throttles happen and show.
    emulator = Emulator(EmulatorConfig(qps=5, seed=11))
    recorder = RunRecorder(quota=5)
    kwargs = emulator.client_kwargs(in_process=True, qps=15.0, backoff_base=0.05)
    async with MtsFaceClient(**kwargs, on_attempt=recorder) as client:
        await asyncio.gather(
            *(
                client.register_custom_face("c", f"p{i}", f"https://x.example/{i}.jpg")
                for i in range(12)
            ),
            return_exceptions=True,
        )
    throttled = sum(b.throttled for b in recorder.timeline().buckets)
    assert throttled == emulator.stats.throttled > 0
    path = write_report(tmp_path / "run.html", recorder)
    check_page(path.read_text(encoding="utf-8"))


def test_bad_max_buckets() -> None:
    with pytest.raises(ValueError, match="max_buckets"):
        RunRecorder(max_buckets=1)

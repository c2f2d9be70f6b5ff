"""Run reports: what a run did, second by second, as one self-contained HTML page.

A :class:`RunRecorder` is an attempt hook (``client.add_attempt_hook(recorder)``); it keeps
a timeline of per-second buckets: requests answered, throttled and failed, latency
percentiles, requests in flight, the limiter's rate. Memory is bounded whatever the run's
length: past ``max_buckets`` buckets, neighbours merge and each bucket covers twice the time.
:func:`write_report` draws it (matplotlib, the ``report`` extra) as inline SVG in one HTML
file that needs no network to open::

    recorder = RunRecorder(quota=client.qps)
    client.add_attempt_hook(recorder)
    ...  # the run
    write_report("run.html", recorder, summary={"registered": 990, "failed": 1})

``mts-faces register ... --report run.html`` does this, also when the run is interrupted.
"""

from __future__ import annotations

import html
import io
import math
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._telemetry import AttemptEvent

__all__ = [
    "Bucket",
    "RunRecorder",
    "Timeline",
    "draw",
    "plot_svg",
    "render_html",
    "write_report",
]

# Latency histogram of a bucket: bin i holds [FIRST * RATIO**i, FIRST * RATIO**(i+1)).
_FIRST = 0.0005
_RATIO = 1.1
_BINS = 128


def _bin(seconds: float) -> int:
    if seconds <= _FIRST:
        return 0
    return min(_BINS - 1, int(math.log(seconds / _FIRST) / math.log(_RATIO)))


def _bin_value(index: int) -> float:
    """The geometric middle of a bin: the estimate is within 5% of any value in it."""
    return float(_FIRST * _RATIO ** (index + 0.5))


@attrs.define
class Bucket:
    """What happened in one bucket of the timeline (attempts counted by when they were sent)."""

    ok: int = 0
    """Attempts answered with success."""
    throttled: int = 0
    """Attempts the service throttled."""
    errors: int = 0
    """Attempts answered with another error, or with no usable answer."""
    in_flight: int = 0
    """The most requests on the wire at once."""
    rate: float | None = None
    """The limiter's rate (calls per second) last seen."""
    latencies: dict[int, int] = attrs.field(factory=dict)
    """Latency histogram: bin -> attempts (see :meth:`latency`)."""

    @property
    def attempts(self) -> int:
        """Every attempt sent in this bucket."""
        return self.ok + self.throttled + self.errors

    def latency(self, q: float) -> float | None:
        """The ``q`` quantile of latency in seconds (within 5%), None when empty."""
        total = sum(self.latencies.values())
        if not total:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for index in sorted(self.latencies):
            seen += self.latencies[index]
            if seen >= rank:
                return _bin_value(index)
        return None  # pragma: no cover

    def merge(self, other: Bucket) -> None:
        """Add ``other`` into this bucket."""
        self.ok += other.ok
        self.throttled += other.throttled
        self.errors += other.errors
        self.in_flight = max(self.in_flight, other.in_flight)
        if other.rate is not None:
            self.rate = other.rate
        for index, count in other.latencies.items():
            self.latencies[index] = self.latencies.get(index, 0) + count


@attrs.frozen
class Timeline:
    """A copy of a recorder's buckets: ``buckets[i]`` covers ``start + i * width`` seconds on."""

    start: float
    """Epoch seconds of the first bucket's start."""
    width: float
    """Seconds per bucket (1, or a power of two after merging)."""
    buckets: tuple[Bucket, ...]
    quota: float | None
    """The quota line to draw (calls per second), if known."""

    def per_second(self, field: str) -> list[float]:
        """``ok``, ``throttled``, ``errors`` or ``attempts`` of each bucket, per second."""
        return [getattr(b, field) / self.width for b in self.buckets]


class RunRecorder:
    """An attempt hook that records a run's timeline (see the module docstring).

    Args:
        quota: the quota line (calls per second) to draw, usually ``client.qps``.
        max_buckets: the most buckets kept; beyond it, pairs merge (bounded memory).
        max_failures: how many failed calls to remember with their reasons.
        clock: epoch seconds; the run starts when the recorder is made.
    """

    def __init__(
        self,
        *,
        quota: float | None = None,
        max_buckets: int = 3600,
        max_failures: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_buckets < 2:
            raise ValueError(f"max_buckets must be >= 2, got {max_buckets}")
        self.quota = quota
        self.max_buckets = max_buckets
        self.max_failures = max_failures
        self.start = clock()
        self._clock = clock
        self.width = 1.0
        self._buckets: list[Bucket] = []
        self.outcomes: dict[str, int] = {}
        """Attempt outcomes (``ok``, ``throttled``, ...) -> count, over the whole run."""
        self.failures: list[str] = []
        """The first calls that failed for good: time, action, error, HTTP status, RequestId."""
        self.failed_calls = 0

    def __call__(self, event: AttemptEvent) -> None:
        """Record one attempt (the hook's entry point)."""
        self.add(
            event.started,
            event.outcome,
            event.duration,
            in_flight=event.in_flight,
            rate=event.rate,
        )
        if not event.retrying and event.outcome != "ok":
            self.failed_calls += 1
            if len(self.failures) < self.max_failures:
                at = event.started - self.start
                status = f" HTTP {event.http_status}" if event.http_status else ""
                request = f", RequestId {event.request_id}" if event.request_id else ""
                self.failures.append(
                    f"+{at:.1f} s {event.action} attempt {event.attempt}: "
                    f"{event.error or event.outcome}{status}{request}"
                )

    def add(
        self,
        started: float,
        outcome: str,
        duration: float,
        *,
        in_flight: int = 0,
        rate: float | None = None,
    ) -> None:
        """Record an attempt sent at ``started`` (epoch seconds): for clients without hooks."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        index = int(max(0.0, started - self.start) / self.width)
        while index >= self.max_buckets:
            self._halve()
            index = int(max(0.0, started - self.start) / self.width)
        buckets = self._buckets
        while len(buckets) <= index:
            buckets.append(Bucket())
        bucket = buckets[index]
        if outcome == "ok":
            bucket.ok += 1
        elif outcome == "throttled":
            bucket.throttled += 1
        elif outcome != "cancelled":
            bucket.errors += 1
        if in_flight > bucket.in_flight:
            bucket.in_flight = in_flight
        if rate is not None:
            bucket.rate = rate
        if outcome != "cancelled":
            slot = _bin(duration)
            bucket.latencies[slot] = bucket.latencies.get(slot, 0) + 1

    def _halve(self) -> None:
        merged: list[Bucket] = []
        for i in range(0, len(self._buckets), 2):
            bucket = self._buckets[i]
            if i + 1 < len(self._buckets):
                bucket.merge(self._buckets[i + 1])
            merged.append(bucket)
        self._buckets = merged
        self.width *= 2

    def timeline(self) -> Timeline:
        """A snapshot of the buckets so far."""
        copies = tuple(attrs.evolve(b, latencies=dict(b.latencies)) for b in self._buckets)
        return Timeline(self.start, self.width, copies, self.quota)

    @property
    def elapsed(self) -> float:
        """Seconds since the recorder was made."""
        return self._clock() - self.start


# --- drawing ------------------------------------------------------------------------------


def plot_svg(timeline: Timeline, title: str = "", *, standalone: bool = False) -> str:
    """The timeline as SVG (text), drawn by matplotlib without a display: an ``<svg>``
    element to inline in HTML, or with ``standalone`` a whole SVG file."""
    from ._extras import import_extra

    matplotlib = import_extra("matplotlib", "a run report")
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "mts-faces"}):
        figure = draw(timeline, title)
        out = io.StringIO()
        figure.savefig(out, format="svg", metadata={"Date": None})
    svg = out.getvalue()
    # Inline in HTML: the XML prolog and doctype are not allowed there.
    return svg if standalone else svg[svg.index("<svg") :]


def draw(timeline: Timeline, title: str = "") -> Any:
    """A matplotlib ``Figure`` of the timeline: calls per second against the quota line and
    throttles, latency p50/p95, requests in flight (the ``report`` extra)."""
    from ._extras import import_extra

    import_extra("matplotlib", "a run report")
    from matplotlib.figure import Figure

    # One more edge than buckets, so that the last bucket is drawn its full width.
    times = [i * timeline.width for i in range(len(timeline.buckets) + 1)]
    bars = times[:-1]
    figure = Figure(figsize=(9, 7.5), layout="constrained")
    rate_ax, latency_ax, flight_ax = figure.subplots(3, 1, sharex=True)
    ok = timeline.per_second("ok")
    throttled = timeline.per_second("throttled")
    errors = timeline.per_second("errors")
    # Stacked: the bars' height is every request sent in that second.
    bottom = [0.0] * len(ok)
    for values, name, color in (
        (ok, "answered OK /s", "tab:blue"),
        (throttled, "throttled /s", "tab:red"),
        (errors, "errors /s", "tab:orange"),
    ):
        if any(values) or name != "errors /s":
            rate_ax.bar(
                bars,
                values,
                width=timeline.width,
                align="edge",
                bottom=bottom,
                color=color,
                alpha=0.75,
                label=name,
            )
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    rates = [b.rate for b in timeline.buckets]
    if any(r is not None for r in rates):
        rate_ax.step(
            times,
            _edge([math.nan if r is None else r for r in rates]),
            where="post",
            color="tab:green",
            linewidth=1,
            label="limiter rate",
        )
    if timeline.quota is not None:
        rate_ax.axhline(
            timeline.quota,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"quota {timeline.quota:g}/s",
        )
    highest = max([*bottom, timeline.quota or 0.0, *(r for r in rates if r is not None)])
    rate_ax.set_ylim(0, highest * 1.45 or 1.0)  # room for the legend above the bars
    rate_ax.set_ylabel("calls per second")
    rate_ax.legend(loc="upper right", fontsize="small", ncols=3)
    rate_ax.set_title(title or "Calls per second (by when they were sent)")
    p50 = [_ms(b.latency(0.5)) for b in timeline.buckets]
    p95 = [_ms(b.latency(0.95)) for b in timeline.buckets]
    latency_ax.step(times, _edge(p50), where="post", label="p50", color="tab:blue")
    latency_ax.step(times, _edge(p95), where="post", label="p95", color="tab:purple")
    latency_ax.set_ylabel("latency (ms)")
    latency_ax.legend(loc="upper right", fontsize="small")
    in_flight = _edge([b.in_flight for b in timeline.buckets])
    flight_ax.step(times, in_flight, where="post", color="tab:gray")
    flight_ax.set_ylabel("requests in flight (max)")
    flight_ax.set_xlabel(f"seconds since start (buckets of {timeline.width:g} s)")
    for axes in (rate_ax, latency_ax, flight_ax):
        axes.grid(True, alpha=0.3)
    latency_ax.set_ylim(bottom=0)
    flight_ax.set_ylim(bottom=0)
    return figure


def _edge(values: Sequence[float]) -> list[float]:
    return [*values, values[-1]] if values else []


def _ms(seconds: float | None) -> float:
    return math.nan if seconds is None else seconds * 1000


def render_html(
    recorder: RunRecorder,
    *,
    title: str = "mts-faces run",
    summary: Mapping[str, int] | None = None,
    failures: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> str:
    """The report page: counts, the plots as inline SVG, the first failures.

    ``summary`` (e.g. rows registered, skipped, failed) and ``failures`` (reasons, e.g. the
    registrar's first failed rows) come from the caller; the recorder's own failed calls
    are listed too. Every text is HTML-escaped.
    """
    timeline = recorder.timeline()
    svg = plot_svg(timeline) if timeline.buckets else "<p>No call was made.</p>"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(recorder.start))
    e = html.escape
    rows = []
    for name, count in (summary or {}).items():
        rows.append(f"<tr><th>{e(name)}</th><td>{count:,}</td></tr>")
    for name, count in sorted(recorder.outcomes.items()):
        rows.append(f"<tr><th>attempts {e(name)}</th><td>{count:,}</td></tr>")
    listed = [*failures, *recorder.failures]
    failure_items = "".join(f"<li>{e(line)}</li>" for line in listed)
    failure_block = (
        f"<h2>First failures</h2><ol>{failure_items}</ol>" if listed else "<p>No failures.</p>"
    )
    note_block = "".join(f"<p>{e(note)}</p>" for note in notes)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{e(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 1em auto; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; padding: 0.15em 1em 0.15em 0; }}
td {{ text-align: right; font-variant-numeric: tabular-nums; }}
svg {{ max-width: 100%; height: auto; }}
</style>
</head>
<body>
<h1>{e(title)}</h1>
<p>Started {e(started)}; {recorder.elapsed:.1f} s; quota {e(_quota(timeline.quota))}.</p>
{note_block}
<table>{"".join(rows)}</table>
<h2>Over time</h2>
<figure>{svg}</figure>
{failure_block}
</body>
</html>
"""


def _quota(quota: float | None) -> str:
    return "unknown" if quota is None else f"{quota:g} calls/s"


def write_report(
    path: str | os.PathLike[str],
    recorder: RunRecorder,
    *,
    title: str = "mts-faces run",
    summary: Mapping[str, int] | None = None,
    failures: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> Path:
    """Write :func:`render_html`'s page to ``path`` atomically (a reader never sees half a
    page; an interrupted write leaves the previous file); returns the path.

    A path ending in ``.svg`` gets the plots alone, as an SVG file (for a README, a ticket).
    """
    target = Path(path)
    if target.suffix.lower() == ".svg":
        page = plot_svg(recorder.timeline(), title, standalone=True)
    else:
        page = render_html(recorder, title=title, summary=summary, failures=failures, notes=notes)
    # Beside the target (same file system, so the rename is atomic), with the usual
    # permissions (the umask applies), then renamed over it.
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(page)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target

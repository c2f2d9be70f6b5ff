"""A one-line live progress bar for a terminal (stderr), redrawn at most ten times a second."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .registrar import Progress


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render(progress: Progress, width: int = 24) -> str:
    """One line: bar (when the total is known), counts, rate and ETA."""
    parts = []
    if progress.total:
        fraction = min(1.0, progress.done / progress.total)
        filled = int(fraction * width)
        bar = "#" * filled + "." * (width - filled)
        parts.append(f"[{bar}] {progress.done:,}/{progress.total:,} {fraction:4.0%}")
    else:
        parts.append(f"{progress.done:,} rows")
    parts.append(f"{progress.rate:6.1f} faces/s")
    eta = progress.eta
    parts.append(f"ETA {_duration(eta)}" if eta is not None else f"{_duration(progress.elapsed)}")
    parts.append(
        f"registered {progress.registered:,} skipped {progress.skipped:,} "
        f"failed {progress.failed:,}"
    )
    return " | ".join(parts)


class ProgressBar:
    """Call it with each :class:`Progress`; on a terminal it redraws one line in place,
    elsewhere it prints a line every ``interval`` seconds (so logs stay readable)."""

    def __init__(self, stream: TextIO | None = None, interval: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.interval = interval if interval is not None else (0.1 if self.live else 5.0)
        self._last = 0.0
        self._latest: Progress | None = None

    def __call__(self, progress: Progress) -> None:
        self._latest = progress
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._draw(progress)

    def _draw(self, progress: Progress) -> None:
        line = render(progress)
        if self.live:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self._latest is not None:
            self._draw(self._latest)
        if self.live:
            self.stream.write("\n")
            self.stream.flush()

"""Sliding one-second windows: the per-key quota, and the peak counts the statistics report.

A window is the half-open second ``(t - 1, t]`` ending at an arrival ``t``: two events exactly
one second apart never share a window. Checking each window that ends at an event covers
every window, since a window's count only changes at events.
"""

from __future__ import annotations

from collections import deque

WINDOW = 1.0


class SlidingWindow:
    """Times of the events of the last second, and the most ever seen in one second."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()
        self.peak = 0

    def _expire(self, now: float) -> None:
        times = self._times
        while times and times[0] <= now - WINDOW:
            times.popleft()

    def count(self, now: float) -> int:
        """Events in the second ending at ``now``."""
        self._expire(now)
        return len(self._times)

    def add(self, now: float) -> None:
        """Record an event at ``now`` (times must not go backwards)."""
        self._expire(now)
        self._times.append(now)
        self.peak = max(self.peak, len(self._times))


class Quota:
    """At most ``limit`` accepted calls per key in any sliding second."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._windows: dict[str, SlidingWindow] = {}

    def admit(self, key: str, now: float) -> bool:
        """Charge one call to ``key`` at ``now``; False (and nothing charged) when over quota."""
        if self._limit is None:
            return True
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = SlidingWindow()
        if window.count(now) >= self._limit:
            return False
        window.add(now)
        return True

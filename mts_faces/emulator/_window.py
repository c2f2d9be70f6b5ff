"""Sliding one-second windows: the account quota, and the peak counts the statistics report.

A window is the half-open second ``(t - 1, t]`` ending at an arrival ``t``: two events exactly
one second apart never share a window. Checking each window that ends at an event covers
every window, since a window's count only changes at events.

The quota is counted as the service counts it: per account (several AccessKeys may belong to
one account) and per API action, each action with its own limit.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable

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

    def frees_in(self, now: float, limit: int) -> float:
        """Seconds from ``now`` until the window ending then holds fewer than ``limit`` events.

        The window ``(t - 1, t]`` holds fewer than ``limit`` once the event ``limit`` places
        from the newest has left it, i.e. at ``t = times[-limit] + 1``.
        """
        self._expire(now)
        if len(self._times) < limit:
            return 0.0
        return max(0.0, self._times[-limit] + WINDOW - now)


class Quota:
    """At most ``limit(action)`` accepted calls per (account, action) in any sliding second.

    ``limits`` maps an action to its own limit; actions not in it get ``default``; a limit of
    None means no quota.
    """

    def __init__(self, default: int | None, limits: dict[str, int] | None = None) -> None:
        self._default = default
        self._limits = dict(limits or {})
        self._windows: dict[Hashable, SlidingWindow] = {}

    def limit(self, action: str) -> int | None:
        """The quota of ``action`` (None: unlimited)."""
        return self._limits.get(action, self._default)

    def _window(self, scope: tuple[str, str]) -> SlidingWindow:
        window = self._windows.get(scope)
        if window is None:
            window = self._windows[scope] = SlidingWindow()
        return window

    def admit(self, account: str, action: str, now: float) -> bool:
        """Charge one call at ``now``; False (and nothing charged) when over quota."""
        limit = self.limit(action)
        if limit is None:
            return True
        window = self._window((account, action))
        if window.count(now) >= limit:
            return False
        window.add(now)
        return True

    def retry_after(self, account: str, action: str, now: float) -> float:
        """Seconds until ``account`` may make one more ``action`` call (0: it may now)."""
        limit = self.limit(action)
        if limit is None:
            return 0.0
        return self._window((account, action)).frees_in(now, limit)

    @property
    def peak(self) -> int:
        """The most calls accepted in any one second of any one (account, action)."""
        return max((w.peak for w in self._windows.values()), default=0)

    def reset_peaks(self) -> None:
        """Forget the peaks (the windows' contents stay)."""
        for window in self._windows.values():
            window.peak = 0


def retry_after_ms(seconds: float) -> int:
    """A wait as the ``x-acs-retry-after`` header states it: whole milliseconds, at least 1."""
    return max(1, math.ceil(seconds * 1000))


class Rival:
    """Another program spending ``qps`` calls per second of one account's quota.

    Its calls come at fixed times: paced, ``start + i / qps``; bursty, all of one second's
    calls at once at ``start + k``. It runs from ``start`` for ``duration`` seconds (None: for
    ever); times count from ``origin`` (set by the first request the emulator sees). Its calls
    are charged lazily: before a request is checked at ``now``, every rival call due by ``now``
    is charged in order, so the quota sees them as if they had come on time. A throttled rival
    call is not retried.
    """

    def __init__(self, qps: float, start: float, duration: float | None, bursty: bool) -> None:
        self.qps = qps
        self.start = start
        self.end = math.inf if duration is None else start + duration
        self.bursty = bursty
        self.origin: float | None = None
        self._next = 0  # index of the next call
        self.accepted = 0
        self.throttled = 0

    def _time(self, index: int) -> float:
        if self.bursty:
            per_second = max(1, round(self.qps))
            return self.start + index // per_second
        return self.start + index / self.qps

    def due(self, now: float) -> list[float]:
        """The absolute times of the calls due by ``now`` not yet charged, in order."""
        if self.origin is None:
            self.origin = now
        due: list[float] = []
        while True:
            at = self._time(self._next)
            if at >= self.end or self.origin + at > now:
                return due
            due.append(self.origin + at)
            self._next += 1

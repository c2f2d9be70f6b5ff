"""Counters the tests and benchmarks read: what arrived, what was accepted, what failed how."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs

from ._window import SlidingWindow

INTERNAL_ERROR = "internal_error"
UNAVAILABLE = "unavailable"
DROP = "drop"
COMMIT_TIMEOUT = "commit_timeout"
FAULT_KINDS = (INTERNAL_ERROR, UNAVAILABLE, DROP, COMMIT_TIMEOUT)
# Counted only once they occur (their knobs are off by default).
LATE_COMMIT = "late_commit"
MALFORMED_LISTING = "malformed_listing"


@attrs.frozen
class EmulatorStats:
    """A snapshot of the emulator's counters since start or the last ``reset_stats()``.

    ``accepted`` counts requests that passed the signature checks and the quota (each is
    charged to its key's quota, whatever happens next); ``throttled`` those the quota turned
    away. The ``max_window_*`` figures are the most in any sliding one-second window.
    """

    requests: int
    accepted: int
    throttled: int
    rejected: int
    """Error answers for bad signatures, keys, timestamps, nonces, actions or parameters."""
    requests_by_action: Mapping[str, int]
    signature_versions: Mapping[int, int]
    """Requests whose signature checked out, by signature version (1 or 3)."""
    errors_by_code: Mapping[str, int]
    faulted: Mapping[str, int]
    """Injected faults by kind: internal_error, unavailable, drop, commit_timeout,
    late_commit, malformed_listing."""
    max_window_accepted: int
    max_window_arrivals: int
    faces_stored: int
    max_window_quota: int = 0
    """The most calls accepted in any one second of one (account, action) quota, the rival's
    calls included: never more than that quota's limit."""
    rival_accepted: int = 0
    """Calls of the emulated rival program the quota accepted."""
    rival_throttled: int = 0
    """Calls of the emulated rival program the quota turned away."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every figure."""
        return attrs.asdict(self)


class StatsRecorder:
    """The live counters behind :class:`EmulatorStats`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Zero every counter and forget the window peaks."""
        self.requests = 0
        self.accepted = 0
        self.throttled = 0
        self.rejected = 0
        self.by_action: Counter[str] = Counter()
        self.signature_versions: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.faults: Counter[str] = Counter({kind: 0 for kind in FAULT_KINDS})
        self.arrival_window = SlidingWindow()
        self.accepted_window = SlidingWindow()

    def arrived(self, now: float) -> None:
        """A request arrived (whatever becomes of it)."""
        self.requests += 1
        self.arrival_window.add(now)

    def admitted(self, now: float) -> None:
        """A request passed the checks and the quota."""
        self.accepted += 1
        self.accepted_window.add(now)

    def snapshot(self, faces_stored: int) -> EmulatorStats:
        """Freeze the counters."""
        return EmulatorStats(
            requests=self.requests,
            accepted=self.accepted,
            throttled=self.throttled,
            rejected=self.rejected,
            requests_by_action=dict(self.by_action),
            signature_versions=dict(self.signature_versions),
            errors_by_code=dict(self.errors),
            faulted=dict(self.faults),
            max_window_accepted=self.accepted_window.peak,
            max_window_arrivals=self.arrival_window.peak,
            faces_stored=faces_stored,
        )

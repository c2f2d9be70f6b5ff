"""What a bulk registration reports: per-row outcomes, progress snapshots, repairs, the report.

Public through :mod:`mts_faces.registrar`.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from ._exceptions import APIError, MtsFacesError
from .manifest import BadRow, FaceRow

Status = Literal["registered", "skipped", "failed", "not attempted"]
"""A row's final status. ``not attempted``: never sent because the run stopped first (a rerun
with the same ledger does it); ``failed``: sent and refused, a bad row, or left in doubt."""

NOT_ATTEMPTED: Status = "not attempted"

# The report keeps the reasons of this many failed rows, and this many repairs, for its
# summary; every row's reason is in its own outcome.
MAX_FAILURES_KEPT = 10
MAX_REPAIRS_KEPT = 1000


@attrs.frozen
class RowOutcome:
    """What became of one row: registered (with its FaceId), skipped, failed or not
    attempted, and why.

    ``resumed``: the outcome comes from the ledger of an earlier run. ``in_doubt``: the row
    was sent and whether it was stored is not known yet (the ledger keeps it open; a rerun
    settles it before sending anything).
    """

    row: FaceRow | BadRow
    status: Status
    face_id: str | None = None
    request_id: str | None = None
    reason: str | None = None
    error: MtsFacesError | None = attrs.field(default=None, eq=False, repr=False)
    resumed: bool = False
    in_doubt: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record of the outcome (what ``mts-faces register`` writes)."""
        record: dict[str, Any] = {"row": self.row.row, "status": self.status}
        if isinstance(self.row, FaceRow):
            record.update(
                category_id=self.row.category_id,
                person_id=self.row.person_id,
                image_url=self.row.image_url,
            )
        for name in ("face_id", "request_id", "reason"):
            value = getattr(self, name)
            if value is not None:
                record[name] = value
        if isinstance(self.error, APIError):
            record["error_code"] = self.error.code
        if self.resumed:
            record["resumed"] = True
        if self.in_doubt:
            record["in_doubt"] = True
        return record


@attrs.frozen
class Repair:
    """A duplicate found by listing a person: one image URL under several FaceIds.

    ``kept`` stays; ``removed`` were unregistered (``repaired=True``) or would be (a dry run,
    or an unregistration that failed: ``error`` says why).
    """

    category_id: str
    person_id: str
    image_url: str
    kept: str
    removed: tuple[str, ...]
    repaired: bool
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record (``mts-faces register`` writes it with ``"event": "repair"``)."""
        record = attrs.asdict(self)
        record["removed"] = list(self.removed)
        if self.error is None:
            del record["error"]
        return record


@attrs.frozen
class Progress:
    """A snapshot for progress displays; ``total`` is None when the input length is unknown."""

    read: int
    registered: int
    skipped: int
    failed: int
    in_flight: int
    elapsed: float
    total: int | None = None
    not_attempted: int = 0

    @property
    def done(self) -> int:
        """Rows with a final outcome."""
        return self.registered + self.skipped + self.failed + self.not_attempted

    @property
    def rate(self) -> float:
        """Registrations per second so far."""
        return self.registered / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current pace, when the total is known."""
        if self.total is None or self.done == 0:
            return None
        return max(0.0, (self.total - self.done) * self.elapsed / self.done)


NOT_CHECKED = "from ledger, not checked against the library (--no-check-existing)"
"""The reason of a row taken as registered from the ledger without listing its library."""


@attrs.define
class RegistrationReport:
    """Counts, FaceIds by person, repairs, elapsed time and achieved call rate of one run."""

    rows: int = 0
    registered: int = 0
    skipped: int = 0
    failed: int = 0
    not_attempted: int = 0
    """rows read but never sent because the run stopped (rerun to do them)."""
    resumed: int = 0
    """registered rows taken from the ledger (their face checked in the library when listed)."""
    unchecked: int = 0
    """of the resumed rows, those taken from the ledger without listing the library
    (``check_existing=False``): their faces may be gone."""
    library_checked: bool = True
    """False when the run did not list the libraries (``check_existing=False``)."""
    reconciled: int = 0
    """ambiguous registrations found stored by listing the person."""
    ambiguous: int = 0
    """registrations sent without a usable answer (each settled before any resend)."""
    reregistered: int = 0
    """rows the ledger held as registered whose face was gone from the library: sent again."""
    in_doubt: int = 0
    """failed rows whose registration may still have been stored (a rerun settles them)."""
    duplicates_found: int = 0
    """extra FaceIds (same person and image URL) found by the end-of-run verification."""
    repaired: int = 0
    """of those, unregistered."""
    repairs: list[Repair] = attrs.field(factory=list)
    """the first ``MAX_REPAIRS_KEPT`` duplicates found and what was done."""
    calls: int = 0
    """API attempts made by the client during the run (registrations, listings, retries)."""
    elapsed: float = 0.0
    stopped: bool = False
    """True when the run was stopped before the input was exhausted."""
    ledger: str | None = None
    """the ledger's path, when the run kept one."""
    faces: dict[tuple[str, str], list[str]] = attrs.field(factory=dict)
    """(category, person) → FaceIds registered (when ``collect_faces``)."""
    skip_reasons: dict[str, int] = attrs.field(factory=dict)
    first_failures: list[str] = attrs.field(factory=list)
    """``row N: reason`` of the first failed rows (at most ``MAX_FAILURES_KEPT``)."""

    @property
    def calls_per_second(self) -> float:
        """API attempts per second of wall time."""
        return self.calls / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def registrations_per_second(self) -> float:
        """Registered rows per second of wall time."""
        return self.registered / self.elapsed if self.elapsed > 0 else 0.0

    def count(self, outcome: RowOutcome, collect_faces: bool) -> None:
        """Add one row's outcome to the counts."""
        self.rows += 1
        if outcome.status == "registered":
            self.registered += 1
            if outcome.resumed:
                self.resumed += 1
                if outcome.reason == NOT_CHECKED:
                    self.unchecked += 1
            if collect_faces and outcome.face_id and isinstance(outcome.row, FaceRow):
                key = (outcome.row.category_id, outcome.row.person_id)
                self.faces.setdefault(key, []).append(outcome.face_id)
        elif outcome.status == "skipped":
            self.skipped += 1
            kind = (outcome.reason or "").split(" (")[0].split(";")[0]
            kind = "duplicate" if kind.startswith("duplicate") else kind
            self.skip_reasons[kind] = self.skip_reasons.get(kind, 0) + 1
        elif outcome.status == NOT_ATTEMPTED:
            self.not_attempted += 1
        else:
            self.failed += 1
            if outcome.in_doubt:
                self.in_doubt += 1
            if len(self.first_failures) < MAX_FAILURES_KEPT:
                self.first_failures.append(f"row {outcome.row.row}: {outcome.reason}")

    def add_repair(self, repair: Repair) -> None:
        """Count a duplicate found (and repaired, or not)."""
        self.duplicates_found += len(repair.removed)
        if repair.repaired:
            self.repaired += len(repair.removed)
        if len(self.repairs) < MAX_REPAIRS_KEPT:
            self.repairs.append(repair)

"""Bulk registration: many (category, person, image URL) rows, each registered exactly once.

How it works, and why:

* Rows are **streamed**: a feeder reads ahead at most ``buffer_size`` rows, so memory grows
  with the concurrency, not with the manifest. Per-person state is kept for persons with work
  in progress plus an LRU of recently idle ones; an evicted person who shows up again is
  listed afresh from the service, which is the source of truth.
* The **cap of 10 faces per person** is decided when a row is read: faces already in the
  library (one ``ListCustomPersons`` per category, unless ``check_existing=False``) plus rows
  accepted so far. Rows past it are skipped with a reason, never sent. A second row with the
  same person and image URL is a duplicate and is skipped too.
* **Exactly once**: at most one call is in flight per person. When a registration's outcome
  is ambiguous (sent, no answer; or ``InternalError``) the registrar lists that person before
  doing anything else: a face with the same image URL that it did not know of is the result
  of the lost call; otherwise it registers again.
* A **journal** (``journal.py``) records ``start`` before a registration is sent and ``done``
  after; a rerun with the same journal skips finished rows and reconciles the rows that were
  in flight, so a crash at any point loses nothing and registers nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Literal

import attrs

from ._client import MtsFaceClient
from ._exceptions import (
    AmbiguousOutcomeError,
    APIError,
    AuthenticationError,
    MtsFacesError,
    NotFoundError,
    TransportError,
    ValidationError,
)
from ._models import CustomPersons
from ._operations import MAX_FACES_PER_PERSON
from .journal import Journal, JournalState, load_journal
from .manifest import BadRow, FaceRow, ManifestEntry, build_row

logger = logging.getLogger("mts_faces.registrar")

Status = Literal["registered", "skipped", "failed"]

# The report keeps the reasons of this many failed rows for its summary; every row's reason
# is in its own outcome.
MAX_FAILURES_KEPT = 10
RowInput = FaceRow | BadRow | Mapping[str, Any]


@attrs.frozen
class RowOutcome:
    """What became of one row: registered (with its FaceId), skipped or failed, and why."""

    row: FaceRow | BadRow
    status: Status
    face_id: str | None = None
    request_id: str | None = None
    reason: str | None = None
    error: MtsFacesError | None = attrs.field(default=None, eq=False, repr=False)
    resumed: bool = False
    """True when the outcome comes from the journal of an earlier run."""

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

    @property
    def done(self) -> int:
        """Rows with a final outcome."""
        return self.registered + self.skipped + self.failed

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


@attrs.define
class RegistrationReport:
    """Counts, FaceIds by person, elapsed time and achieved call rate of one run."""

    rows: int = 0
    registered: int = 0
    skipped: int = 0
    failed: int = 0
    resumed: int = 0
    reconciled: int = 0
    """ambiguous registrations found stored by listing the person."""
    calls: int = 0
    """API attempts made by the client during the run (registrations, listings, retries)."""
    elapsed: float = 0.0
    stopped: bool = False
    """True when the run was stopped before the input was exhausted."""
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


class _Person:
    """Per-person state. ``faces`` maps image URL → FaceId of faces known to be stored."""

    __slots__ = ("busy", "faces", "key", "pending", "reserved", "seen")

    def __init__(self, key: tuple[str, str]) -> None:
        self.key = key
        self.faces: dict[str, str] = {}
        self.seen: dict[str, int] = {}  # image URL → first row number in this input
        self.reserved = 0  # faces in the library plus rows accepted for registration
        self.pending: deque[FaceRow] = deque()
        self.busy = False

    def know(self, image_url: str, face_id: str) -> None:
        if image_url not in self.faces:
            self.faces[image_url] = face_id


class _BloomFilter:
    """A fixed-size set of evicted person keys: a false positive costs one extra listing."""

    def __init__(self, bits: int = 1 << 23, hashes: int = 5) -> None:
        self._bits = bytearray()  # 1 MiB, allocated on the first eviction only
        self._size = bits
        self._hashes = hashes

    def _positions(self, key: tuple[str, str]) -> list[int]:
        digest = hashlib.blake2b("\x1f".join(key).encode(), digest_size=4 * self._hashes).digest()
        return [
            int.from_bytes(digest[4 * i : 4 * i + 4], "little") % self._size
            for i in range(self._hashes)
        ]

    def add(self, key: tuple[str, str]) -> None:
        if not self._bits:
            self._bits = bytearray(self._size // 8)
        for p in self._positions(key):
            self._bits[p >> 3] |= 1 << (p & 7)

    def __contains__(self, key: tuple[str, str]) -> bool:
        if not self._bits:
            return False
        return all(self._bits[p >> 3] & (1 << (p & 7)) for p in self._positions(key))


class _Gate:
    """A semaphore whose limit can change: the registrar's concurrency follows latency."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._changed = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.active < self.limit)
            self.active += 1

    async def release(self) -> None:
        async with self._changed:
            self.active -= 1
            self._changed.notify()

    async def resize(self, limit: int) -> None:
        async with self._changed:
            grew = limit > self.limit
            self.limit = limit
            if grew:
                self._changed.notify_all()


_DONE = object()


class Registrar:
    """Registers many faces through one :class:`MtsFaceClient`, each row exactly once.

    ``concurrency`` bounds calls in flight (default: sized from the quota and the observed
    latency, at most the client's ``max_connections``). ``journal`` makes the run resumable;
    ``check_existing=False`` skips listing the libraries first (the cap then counts this
    input only). A row whose call keeps failing is retried ``row_retries`` times, waiting
    ``row_backoff`` × 2ⁿ seconds, on top of the client's own retries; after a lost answer
    the registrar waits ``ambiguity_settle`` seconds before listing the person. ``stop()``
    or a cancelled consumer gives calls in flight ``drain_timeout`` seconds to finish.
    """

    def __init__(
        self,
        client: MtsFaceClient,
        *,
        concurrency: int | None = None,
        check_existing: bool = True,
        journal: str | os.PathLike[str] | None = None,
        progress: Callable[[Progress], None] | None = None,
        total: int | None = None,
        collect_faces: bool = True,
        buffer_size: int | None = None,
        row_retries: int = 3,
        row_backoff: float = 2.0,
        ambiguity_settle: float = 1.0,
        drain_timeout: float = 30.0,
        max_idle_persons: int = 10_000,
        default_category: str | None = None,
    ) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.client = client
        self.check_existing = check_existing
        self.journal_path = journal
        self.progress_callback = progress
        self.total = total
        self.collect_faces = collect_faces
        self.row_retries = row_retries
        self.row_backoff = row_backoff
        self.ambiguity_settle = ambiguity_settle
        self.drain_timeout = drain_timeout
        self.max_idle_persons = max_idle_persons
        self.default_category = default_category
        self._fixed_concurrency = concurrency
        self._max_workers = concurrency or client.max_connections
        self._buffer_size = buffer_size or max(1024, 16 * self._max_workers)
        self.report = RegistrationReport()
        self._stop = asyncio.Event()
        self._people: dict[tuple[str, str], _Person] = {}
        self._idle: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._evicted = _BloomFilter()
        self._listed_categories: set[str] = set()
        self._latency_ewma: float | None = None

    # --- public ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop issuing new registrations; calls in flight finish, then the run ends."""
        self._stop.set()

    async def register_all(
        self, rows: Iterable[RowInput] | AsyncIterable[RowInput]
    ) -> RegistrationReport:
        """Run to the end, discarding per-row outcomes; return the report."""
        async for _ in self.run(rows):
            pass
        return self.report

    async def run(
        self, rows: Iterable[RowInput] | AsyncIterable[RowInput]
    ) -> AsyncIterator[RowOutcome]:
        """Register ``rows``; yield each row's outcome as it finishes.

        Raises :class:`AuthenticationError` (after in-flight calls end) when the service
        refuses the credentials, since no further row could succeed, and re-raises an
        unexpected error of a registration (its row is reported failed first).
        """
        started = time.monotonic()
        calls_before = self.client.attempts
        journal_state = load_journal(self.journal_path) if self.journal_path else JournalState()
        if journal_state.corrupt_lines:
            logger.warning("journal: %d unreadable lines ignored", journal_state.corrupt_lines)
        journal = Journal(self.journal_path) if self.journal_path else None
        outcomes: asyncio.Queue[RowOutcome | object] = asyncio.Queue(maxsize=4 * self._max_workers)
        run = _Run(self, journal, journal_state, outcomes)
        supervisor = asyncio.create_task(run.supervise(rows))
        try:
            while True:
                item = await outcomes.get()
                if item is _DONE:
                    break
                assert isinstance(item, RowOutcome)
                yield item
            await supervisor  # re-raises a fatal error (bad credentials) or an input error
        finally:
            if not supervisor.done():
                # The consumer went away (break, cancel): stop and drain like stop() does.
                self.stop()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(_drain_queue(outcomes, supervisor), self.drain_timeout)
                if not supervisor.done():
                    supervisor.cancel()
                    with contextlib.suppress(BaseException):
                        await supervisor
            if journal is not None:
                await journal.aclose()
            self.report.elapsed = time.monotonic() - started
            self.report.calls = self.client.attempts - calls_before
            self.report.stopped = self._stop.is_set()

    # --- state helpers ---------------------------------------------------------------------

    def _target_concurrency(self) -> int:
        if self._fixed_concurrency is not None:
            return self._fixed_concurrency
        # Little's law: calls in flight = rate × latency; 1.5× and +4 absorb latency spread.
        latency = self._latency_ewma if self._latency_ewma is not None else 0.1
        # The limiter's current rate: lower than qps after throttling, or when a shared or
        # custom limiter was passed in.
        rate = self.client.current_rate or self.client.qps
        wanted = math.ceil(rate * latency * 1.5) + 4
        return max(4, min(self._max_workers, wanted))

    def _row_backoff(self, failures: int) -> float:
        # On top of the client's own quick retries: 2, 4, 8 s by default, at most 30 s.
        return float(min(30.0, self.row_backoff * 2.0 ** (failures - 1)))

    def _observe_latency(self, seconds: float) -> None:
        if self._latency_ewma is None:
            self._latency_ewma = seconds
        else:
            self._latency_ewma += 0.1 * (seconds - self._latency_ewma)

    def _mark_idle(self, person: _Person) -> None:
        self._idle[person.key] = None
        self._idle.move_to_end(person.key)
        while len(self._idle) > self.max_idle_persons and self.check_existing:
            key, _ = self._idle.popitem(last=False)
            self._people.pop(key, None)
            self._evicted.add(key)


async def _drain_queue(queue: asyncio.Queue[Any], task: asyncio.Task[Any]) -> None:
    while not task.done():
        try:
            await asyncio.wait_for(queue.get(), 0.05)
        except TimeoutError:
            continue


class _Run:
    """The machinery of one :meth:`Registrar.run`: a feeder, workers and the outcome queue."""

    def __init__(
        self,
        registrar: Registrar,
        journal: Journal | None,
        journal_state: JournalState,
        outcomes: asyncio.Queue[RowOutcome | object],
    ) -> None:
        self.r = registrar
        self.client = registrar.client
        self.journal = journal
        self.journal_state = journal_state
        self.outcomes = outcomes
        self.ready: asyncio.Queue[_Person] = asyncio.Queue()
        self.buffered = asyncio.Semaphore(registrar._buffer_size)
        self.gate = _Gate(registrar._target_concurrency())
        self.in_flight = 0
        self.queued = 0
        self.read = 0
        self.all_done = asyncio.Event()
        self.all_done.set()
        self.fatal: BaseException | None = None
        self.started = time.monotonic()

    # --- orchestration ---------------------------------------------------------------------

    async def supervise(self, rows: Iterable[RowInput] | AsyncIterable[RowInput]) -> None:
        workers = [asyncio.create_task(self.worker()) for _ in range(self.r._max_workers)]
        try:
            try:
                await self.feed(rows)
            finally:
                # Let queued rows finish (stop() leaves them pending: they end as not sent).
                await self.all_done.wait()
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self.outcomes.put(_DONE)
        if self.fatal is not None:
            raise self.fatal

    async def feed(self, rows: Iterable[RowInput] | AsyncIterable[RowInput]) -> None:
        async for item in _aiter(rows):
            if self.r._stop.is_set():
                break
            self.read += 1
            entry = self.to_entry(item)
            if isinstance(entry, BadRow):
                await self.emit(RowOutcome(entry, "failed", reason=f"bad row: {entry}"))
                continue
            person = await self.person_for(entry)
            if person is None:  # listing failed fatally
                break
            await self.admit(person, entry)

    def to_entry(self, item: RowInput) -> ManifestEntry:
        if isinstance(item, BadRow):
            return item
        if isinstance(item, FaceRow):
            row = item if item.row else attrs.evolve(item, row=self.read)
            try:
                return row.validated()
            except ValidationError as exc:
                return BadRow(row.row, exc.reason, exc.field)
        if isinstance(item, Mapping):
            return build_row(dict(item), self.read, self.r.default_category)
        return BadRow(self.read, f"unsupported row type {type(item).__name__}")

    async def person_for(self, row: FaceRow) -> _Person | None:
        key = row.person_key
        person = self.r._people.get(key)
        if person is not None:
            self.r._idle.pop(key, None)
            return person
        if self.r.check_existing:
            category = row.category_id.casefold()
            try:
                if category not in self.r._listed_categories:
                    await self.load_listing(self.client.list_custom_persons(row.category_id))
                    self.r._listed_categories.add(category)
                if key not in self.r._people and key in self.r._evicted:
                    # Known once, then evicted: its faces must be read again.
                    await self.load_listing(
                        self.client.list_custom_persons(row.category_id, row.person_id), keep=key
                    )
            except AuthenticationError as exc:
                self.fatal = exc
                return None
            except MtsFacesError as exc:
                # Without the listing the cap and duplicates cannot be checked: fail loudly
                # per row rather than risk an 11th face; a rerun retries.
                await self.emit(
                    RowOutcome(
                        row, "failed", reason=f"could not list existing faces: {exc}", error=exc
                    )
                )
                return _Person(key)  # a throwaway; admit() sees the outcome is already out
        person = self.r._people.get(key)
        if person is None:
            person = self.r._people[key] = _Person(key)
        return person

    async def load_listing(self, call: Any, keep: tuple[str, str] | None = None) -> None:
        try:
            listing: CustomPersons = await call
        except NotFoundError:
            return
        for category, listed, face in listing.iter_faces():
            key = (category.category_id.casefold(), listed.person_id.casefold())
            person = self.r._people.get(key)
            if person is None:
                person = self.r._people[key] = _Person(key)
                if key != keep:
                    self.r._mark_idle(person)
            if face.image_url not in person.faces:
                person.know(face.image_url, face.face_id)
                person.reserved += 1

    async def admit(self, person: _Person, row: FaceRow) -> None:
        if person.key not in self.r._people:  # throwaway person: listing failed, outcome sent
            return
        url = row.image_url
        known = person.faces.get(url)
        from_journal = self.journal_state.registered.get(row.row_key)
        first = person.seen.get(url)
        person.seen.setdefault(url, row.row)
        outcome: RowOutcome | None = None
        if first is not None:
            outcome = RowOutcome(
                row,
                "skipped",
                face_id=known,
                reason=f"duplicate of row {first} (same person and image URL)",
            )
        elif from_journal is not None:
            face_id, request_id = from_journal
            if known is None:
                person.know(url, face_id)
                person.reserved += 1
            outcome = RowOutcome(
                row, "registered", face_id=face_id, request_id=request_id, resumed=True
            )
        elif known is not None:
            if row.row_key in self.journal_state.in_flight:
                # Sent by a run that died before hearing back; the listing shows it stored.
                self.r.report.reconciled += 1
                outcome = RowOutcome(
                    row,
                    "registered",
                    face_id=known,
                    resumed=True,
                    reason="reconciled: found stored after an interrupted run",
                )
            else:
                outcome = RowOutcome(row, "skipped", face_id=known, reason="already in the library")
        elif person.reserved >= MAX_FACES_PER_PERSON:
            outcome = RowOutcome(
                row,
                "skipped",
                reason=f"cap: person already has {MAX_FACES_PER_PERSON} faces (library and "
                f"earlier rows); the service allows at most {MAX_FACES_PER_PERSON} per person",
            )
        if outcome is not None:
            if person.key not in self.r._idle and not person.busy and not person.pending:
                self.r._mark_idle(person)
            await self.emit(outcome)
            return
        person.reserved += 1
        await self.buffered.acquire()
        self.queued += 1
        self.all_done.clear()
        person.pending.append(row)
        if not person.busy and len(person.pending) == 1:
            self.ready.put_nowait(person)

    async def worker(self) -> None:
        while True:
            person = await self.ready.get()
            row = person.pending.popleft()
            person.busy = True
            await self.gate.acquire()
            self.in_flight += 1
            try:
                if self.r._stop.is_set() or self.fatal is not None:
                    person.reserved -= 1
                    outcome = RowOutcome(row, "failed", reason="not sent: the run was stopped")
                else:
                    outcome = await self.register(person, row)
            except Exception as exc:
                # A bug or an unexpected library error: this worker must still account for
                # the row (or the run would wait for it forever), and the run must stop and
                # re-raise, since the same fault would hit every other row.
                logger.exception("row %d: unexpected error; stopping the run", row.row)
                if self.fatal is None:
                    self.fatal = exc
                self.r.stop()
                outcome = RowOutcome(
                    row, "failed", reason=f"unexpected error, outcome unknown: {exc!r}"
                )
            finally:
                self.in_flight -= 1
                await self.gate.release()
            person.busy = False
            await self.emit(outcome)
            self.buffered.release()
            self.queued -= 1
            if person.pending:
                self.ready.put_nowait(person)
            else:
                self.r._mark_idle(person)
            if self.queued == 0:
                self.all_done.set()

    # --- one row ---------------------------------------------------------------------------

    async def register(self, person: _Person, row: FaceRow) -> RowOutcome:
        in_doubt = row.row_key in self.journal_state.in_flight
        failures = 0
        while True:
            if in_doubt:
                found = await self.find_lost_face(person, row)
                if isinstance(found, RowOutcome):
                    return found
                in_doubt = False
            if self.journal is not None:
                await self.journal.start(row.row_key, row.row, _row_fields(row))
            sent_at = time.monotonic()
            try:
                face = await self.client.register_custom_face(
                    row.category_id, row.person_id, row.image_url, row.person_name
                )
            except AmbiguousOutcomeError as exc:
                logger.info(
                    "row %d: ambiguous outcome (%s); listing the person", row.row, exc.cause
                )
                in_doubt = True
                failures += 1
                if failures > self.r.row_retries:
                    return await self.finish_failed(
                        person,
                        row,
                        exc,
                        "outcome unknown after repeated lost answers",
                        in_doubt=True,
                    )
                await asyncio.sleep(self.r.ambiguity_settle)
                continue
            except (TransportError, APIError) as exc:
                if isinstance(exc, AuthenticationError) and exc.code != "SignatureNonceUsed":
                    self.fatal = exc
                    self.r.stop()
                    return await self.finish_failed(person, row, exc, f"{exc.code}: {exc.message}")
                retryable = _retryable(exc)
                failures += 1
                if retryable and failures <= self.r.row_retries:
                    await asyncio.sleep(self.r._row_backoff(failures))
                    continue
                return await self.finish_failed(person, row, exc, _reason(exc))
            self.r._observe_latency(time.monotonic() - sent_at)
            target = self.r._target_concurrency()
            if target != self.gate.limit:
                await self.gate.resize(target)
            person.know(row.image_url, face.face_id)
            return await self.finish_registered(row, face.face_id, face.request_id)

    async def find_lost_face(self, person: _Person, row: FaceRow) -> RowOutcome | None:
        """List the person: a stored face with this URL that we did not know is ours."""
        failures = 0
        while True:
            try:
                listing = await self.client.list_custom_persons(row.category_id, row.person_id)
                break
            except NotFoundError:
                return None  # no such person (or library): the lost call stored nothing
            except MtsFacesError as exc:
                # The client already retried quickly; a busy or flaky service gets the same
                # slower second chance here as a registration does, before we give up.
                failures += 1
                retryable = _retryable(exc)
                if retryable and failures <= self.r.row_retries:
                    await asyncio.sleep(self.r._row_backoff(failures))
                    continue
                return await self.finish_failed(
                    person,
                    row,
                    exc,
                    f"could not verify an ambiguous registration: {exc}",
                    in_doubt=True,
                )
        known_ids = set(person.faces.values())
        for _, listed, face in listing.iter_faces():
            if listed.person_id.casefold() != row.person_key[1]:
                continue
            if face.image_url == row.image_url and face.face_id not in known_ids:
                person.know(row.image_url, face.face_id)
                self.r.report.reconciled += 1
                return await self.finish_registered(
                    row, face.face_id, None, reason="reconciled: found stored after a lost answer"
                )
        return None

    async def finish_registered(
        self, row: FaceRow, face_id: str, request_id: str | None, reason: str | None = None
    ) -> RowOutcome:
        if self.journal is not None:
            await self.journal.done(
                row.row_key, row.row, "registered", face_id=face_id, request_id=request_id
            )
        return RowOutcome(row, "registered", face_id=face_id, request_id=request_id, reason=reason)

    async def finish_failed(
        self,
        person: _Person,
        row: FaceRow,
        exc: MtsFacesError,
        reason: str,
        *,
        in_doubt: bool = False,
    ) -> RowOutcome:
        if not in_doubt:
            person.reserved -= 1  # the slot was not used; a rerun may use it
        if self.journal is not None and not in_doubt:
            # An in-doubt row keeps its open ``start`` so that a rerun reconciles it first.
            await self.journal.done(row.row_key, row.row, "failed", reason=reason)
        return RowOutcome(row, "failed", reason=reason, error=exc)

    # --- outcomes --------------------------------------------------------------------------

    async def emit(self, outcome: RowOutcome) -> None:
        report = self.r.report
        report.rows += 1
        if outcome.status == "registered":
            report.registered += 1
            if outcome.resumed:
                report.resumed += 1
            if self.r.collect_faces and outcome.face_id and isinstance(outcome.row, FaceRow):
                key = (outcome.row.category_id, outcome.row.person_id)
                report.faces.setdefault(key, []).append(outcome.face_id)
        elif outcome.status == "skipped":
            report.skipped += 1
            kind = (outcome.reason or "").split(" (")[0].split(";")[0]
            kind = "duplicate" if kind.startswith("duplicate") else kind
            report.skip_reasons[kind] = report.skip_reasons.get(kind, 0) + 1
        else:
            report.failed += 1
            if len(report.first_failures) < MAX_FAILURES_KEPT:
                report.first_failures.append(f"row {outcome.row.row}: {outcome.reason}")
        await self.outcomes.put(outcome)
        if self.r.progress_callback is not None:
            self.r.progress_callback(
                Progress(
                    read=self.read,
                    registered=report.registered,
                    skipped=report.skipped,
                    failed=report.failed,
                    in_flight=self.in_flight,
                    elapsed=time.monotonic() - self.started,
                    total=self.r.total,
                )
            )


def _row_fields(row: FaceRow) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "category_id": row.category_id,
        "person_id": row.person_id,
        "image_url": row.image_url,
    }
    return fields


def _retryable(exc: MtsFacesError) -> bool:
    """Worth another try later: a transport failure, or an API error the service calls
    transient (throttling, busy, internal)."""
    return isinstance(exc, TransportError) or (isinstance(exc, APIError) and exc.retryable)


def _reason(exc: MtsFacesError) -> str:
    if isinstance(exc, APIError):
        return f"{exc.code}: {exc.message}"
    return str(exc)


async def _aiter(rows: Iterable[RowInput] | AsyncIterable[RowInput]) -> AsyncIterator[RowInput]:
    if isinstance(rows, AsyncIterable):
        async for row in rows:
            yield row
        return
    for count, row in enumerate(rows, 1):
        yield row
        if count % 256 == 0:
            # A long run of rows that need no call must not starve the event loop.
            await asyncio.sleep(0)

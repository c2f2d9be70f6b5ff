"""The scheduler of a bulk registration: a feeder reads rows, admits them, and one task per
active person takes that person's rows one at a time through the :class:`Settler`.

* Rows are **streamed**: at most ``buffer_size`` admitted rows wait, so memory follows the
  buffer, not the input. Per-person state is kept for persons with work in progress plus an
  LRU of idle ones; an evicted person met again is listed afresh (or, without listings, read
  back from the ledger). A person's state holds at most the faces it may have (the cap), not
  one entry per row: rows past the cap are skipped without being remembered.
* The **cap of 10 faces per person** is decided when a row is read: faces in the library
  (one ``ListCustomPersons`` per library, unless ``check_existing=False``) plus rows
  accepted so far. Rows past it are skipped, never sent; so is a second row with the same
  person and image URL.
* **One call in flight per person**: each person's rows go through one task, in order, so
  a row being settled holds back only its own person. A row's wait for its settle deadline
  holds no concurrency slot.
* **The library wins over the ledger**: a row the ledger holds as registered is checked
  against the listing the run makes anyway; a face gone from the library is registered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
)
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._exceptions import (
    AuthenticationError,
    MtsFacesError,
    NotFoundError,
    RateLimiterError,
    ValidationError,
)
from ._models import CustomPersons
from ._operations import MAX_FACES_PER_PERSON
from ._outcomes import NOT_ATTEMPTED, NOT_CHECKED, Progress, RegistrationReport, Repair, RowOutcome
from ._settling import PoolHooks, SettlePool
from .imagekey import DEFAULT_IMAGE_KEYS, ImageKeys
from .manifest import BadRow, FaceRow, ManifestEntry, build_row
from .reconcile import (
    Doubt,
    Duplicate,
    Fatal,
    Gate,
    ListingCircuit,
    ListingTries,
    NotSent,
    RegistrarClient,
    RetryBudget,
    ServiceCalls,
    SettleHooks,
    Settler,
    default_settle,
    find_duplicates,
    repair,
)

if TYPE_CHECKING:
    from .ledger import Ledger, LedgerRow

logger = logging.getLogger("mts_faces.registrar")

RowInput = FaceRow | BadRow | Mapping[str, Any]

MAX_AMBIGUOUS_IN_MEMORY = 10_000
"""Without a ledger, the end-of-run verification remembers this many ambiguous persons."""


class Person:
    """Per-person state: faces known stored (image key → FaceId), rows accepted (image key →
    row number), rows waiting, rows in doubt."""

    __slots__ = ("doubts", "faces", "key", "pending", "reserved", "seen", "task")

    def __init__(self, key: tuple[str, str]) -> None:
        self.key = key
        self.faces: dict[str, str] = {}
        self.seen: dict[str, int] = {}  # image key → row number of the accepted row
        self.reserved = 0  # faces in the library plus rows accepted for registration
        self.pending: deque[tuple[FaceRow, LedgerRow | None, Doubt | None]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.doubts = 0  # rows in doubt, held by the settle pool

    @property
    def busy(self) -> bool:
        """Whether a row of the person is queued, in flight or in doubt."""
        return self.task is not None or bool(self.pending) or self.doubts > 0

    def know(self, image_key: str, face_id: str) -> None:
        """Record a face known to be stored."""
        if image_key not in self.faces:
            self.faces[image_key] = face_id

    def listed(self, image_key: str, face_id: str) -> None:
        """Record a face a listing of the library shows (it takes a place under the cap)."""
        if image_key not in self.faces:
            self.know(image_key, face_id)
            self.reserved += 1

    def find(self, row: FaceRow, keys: ImageKeys) -> str | None:
        """The FaceId stored for ``row``'s image: by its identity, or by its URL's key (a
        listing knows faces by URL only)."""
        found = self.faces.get(row.identity(keys))
        if found is None and row.image_key:
            found = self.faces.get(keys.key(row.image_url))
        return found

    def holds(self, face_id: str) -> bool:
        """Whether ``face_id`` is among the faces known stored."""
        return face_id in self.faces.values()

    def accept(self, row: FaceRow, keys: ImageKeys = DEFAULT_IMAGE_KEYS) -> None:
        """Take a place under the cap for ``row``, admitted for registration."""
        self.reserved += 1
        self.seen[row.identity(keys)] = row.row

    def resume(self, row: FaceRow, face_id: str, keys: ImageKeys = DEFAULT_IMAGE_KEYS) -> None:
        """Take in ``row`` as stored under ``face_id`` (the ledger holds it done): it fills a
        place under the cap unless the listing counted it already."""
        if self.find(row, keys) is None and not self.holds(face_id):
            self.reserved += 1
        identity = row.identity(keys)
        self.know(identity, face_id)
        self.seen.setdefault(identity, row.row)


AdmissionKind = Literal[
    "register", "duplicate", "blocked", "resumed", "reconciled", "in_library", "cap"
]


@attrs.frozen
class Admission:
    """What becomes of a row when it is read (see :func:`decide_admission`).

    ``kind``: ``register`` (send it), ``duplicate`` (same person and image URL as an earlier
    row), ``blocked`` (its library's listing circuit is open), ``resumed`` (the ledger holds
    it registered), ``reconciled`` (an interrupted send the listing shows stored),
    ``in_library`` (already stored), ``cap`` (the person has 10 faces). ``face_id``: the
    face it maps to when known; ``reason``: why it is not sent; ``forget_prior``: the
    ledger's registered face is gone from the library, so its record is to be dropped.
    """

    kind: AdmissionKind
    face_id: str | None = None
    reason: str | None = None
    forget_prior: bool = False


def decide_admission(
    person: Person,
    row: FaceRow,
    prior: LedgerRow | None,
    blocked: str | None,
    check_existing: bool,
    keys: ImageKeys = DEFAULT_IMAGE_KEYS,
) -> Admission:
    """The one decision of what becomes of a row read for ``person``: used by a registration
    (the scheduler) and by a plan of one (``mts-faces plan``). It changes nothing; a caller
    that registers the row calls :meth:`Person.accept`.

    ``prior``: the ledger's record of the row; ``blocked``: why its library cannot be listed
    (None when it can); ``check_existing``: whether the library was listed (False trusts the
    ledger); ``keys``: how image URLs are keyed (rows and faces are compared by image key).
    """
    first = person.seen.get(row.identity(keys))
    known = person.find(row, keys)
    if first is not None:
        return Admission("duplicate", known, f"duplicate of row {first} (same person and image)")
    if blocked is not None and prior is None:
        return Admission("blocked", None, f"not sent: {blocked}")
    forget = False
    if prior is not None and prior.state == "registered" and prior.face_id:
        if not check_existing:
            # Without a listing the ledger is trusted: say so, the face may be gone.
            return Admission("resumed", prior.face_id, NOT_CHECKED)
        if person.holds(prior.face_id):
            return Admission("resumed", prior.face_id)
        if known is not None:
            return Admission("resumed", known)
        forget = True
    elif prior is not None and prior.state in ("started", "ambiguous") and known is not None:
        return Admission("reconciled", known, "reconciled: found stored after an interrupted run")
    if known is not None:
        return Admission("in_library", known, "already in the library", forget)
    if person.reserved >= MAX_FACES_PER_PERSON:
        return Admission(
            "cap",
            None,
            f"cap: person already has {MAX_FACES_PER_PERSON} faces (library and "
            f"earlier rows); the service allows at most {MAX_FACES_PER_PERSON} per person",
            forget,
        )
    return Admission("register", None, None, forget)


class BloomFilter:
    """A fixed-size set of evicted person keys: a false positive costs one extra lookup."""

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
        """Add ``key``."""
        if not self._bits:
            self._bits = bytearray(self._size // 8)
        for p in self._positions(key):
            self._bits[p >> 3] |= 1 << (p & 7)

    def __contains__(self, key: tuple[str, str]) -> bool:
        if not self._bits:
            return False
        return all(self._bits[p >> 3] & (1 << (p & 7)) for p in self._positions(key))


@attrs.define
class SchedulerOptions:
    """The registrar's settings, as the scheduler uses them (see :class:`Registrar`)."""

    concurrency: int | None
    check_existing: bool
    collect_faces: bool
    buffer_size: int
    settle: float
    budget: RetryBudget
    drain_timeout: float
    max_idle_persons: int
    default_category: str | None
    verify: bool
    repair: bool
    total: int | None
    progress: Callable[[Progress], None] | None
    clock: Callable[[], float]
    precheck: Callable[[FaceRow], str | None] | None = None
    image_keys: ImageKeys = DEFAULT_IMAGE_KEYS


_DONE = object()


class Scheduler:
    """One run: feeder, per-person tasks, outcomes queue, end-of-run verification."""

    def __init__(
        self,
        client: RegistrarClient,
        ledger: Ledger | None,
        options: SchedulerOptions,
        report: RegistrationReport,
        stop_event: asyncio.Event,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.o = options
        self.report = report
        self.stop_event = stop_event
        self.max_workers = options.concurrency or client.max_connections
        self.outcomes: asyncio.Queue[RowOutcome | object] = asyncio.Queue(
            maxsize=4 * self.max_workers
        )
        self.gate = Gate(self._target_concurrency(None))
        self.calls = ServiceCalls(client, self.gate, self._observe_latency)
        self.circuit = ListingCircuit(options.budget.circuit_threshold)
        self.settler = Settler(
            self.calls,
            ledger,
            settle=options.settle,
            budget=options.budget,
            circuit=self.circuit,
            hooks=SettleHooks(self.stopping, self._on_ambiguous, self._on_reconciled),
            clock=options.clock,
            sleep=self.sleep,
            inherited_settle=max(options.settle, default_settle(client.timeout)),
            image_keys=options.image_keys,
        )
        self.keys = options.image_keys
        self.pool = SettlePool(
            self.settler,
            self.calls,
            PoolHooks(
                finish=self._finish_doubt,
                resend=self._resend,
                idle=self._person_idle,
                category_faces=self._category_faces,
                kept_face=self._kept_face,
                repaired=self.report.add_repair,
                fatal=self._set_fatal,
            ),
            budget=options.budget,
            image_keys=options.image_keys,
            verify_after=max(options.settle, client.timeout),
            verify=options.verify,
            repair=options.repair,
            coalesce=min(1.0, options.settle / 10),
            rng=self.settler.rng,
            stopping=self.stopping,
        )
        # Faces each library holds as far as the run knows (its listing, plus rows sent):
        # whether a settling listing may take the whole library.
        self.category_faces: dict[str, int] = {}
        self.people: dict[tuple[str, str], Person] = {}
        self.idle: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.evicted = BloomFilter()
        self.listed_categories: set[str] = set()
        self.buffered = asyncio.Semaphore(options.buffer_size)
        self.queued = 0
        self.all_done = asyncio.Event()
        self.all_done.set()
        self.read = 0
        self.fatal: BaseException | None = None
        self.started = time.monotonic()
        # Without a ledger: persons with an ambiguous row → (category, person, latest start),
        # and the FaceId each of their rows reported, for the end-of-run verification.
        self._ambiguous: dict[tuple[str, str], tuple[str, str, float]] = {}
        self._reported: set[str] = set()

    # --- orchestration -------------------------------------------------------------------------

    def stopping(self) -> bool:
        """Whether the run is stopping (``stop()``, a fatal error, the consumer left)."""
        return self.stop_event.is_set()

    def stop(self) -> None:
        """Stop: no new sends; rows waiting end ``not attempted``."""
        self.stop_event.set()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when the run stops meanwhile."""
        if seconds <= 0 or self.stopping():
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), seconds)

    async def supervise(self, rows: Iterable[RowInput] | AsyncIterable[RowInput]) -> None:
        """Feed every row, wait for every person's task, verify, then end the outcomes."""
        pool = asyncio.create_task(self.pool.run())
        try:
            try:
                await self.feed(rows)
            finally:
                await self.all_done.wait()
                self.pool.close()
                await pool
            if self.o.verify and self.fatal is None:
                await self.verify_ambiguous()
        finally:
            if not pool.done():
                pool.cancel()
            for person in list(self.people.values()):
                if person.task is not None:
                    person.task.cancel()
            await self.outcomes.put(_DONE)
        if self.fatal is not None:
            raise self.fatal

    async def feed(self, rows: Iterable[RowInput] | AsyncIterable[RowInput]) -> None:
        """Read, validate and admit rows until the input ends or the run stops."""
        source = _aiter(rows)
        try:
            async for item in source:
                if self.stopping():
                    break
                self.read += 1
                entry = self.to_entry(item)
                if isinstance(entry, BadRow):
                    await self.emit(RowOutcome(entry, "failed", reason=f"bad row: {entry}"))
                    continue
                skip = self.o.precheck(entry) if self.o.precheck is not None else None
                if skip is not None:
                    await self.emit(RowOutcome(entry, "skipped", reason=skip))
                    continue
                person = await self.person_for(entry)
                if person is None:
                    break  # a fatal error
                await self.admit(person, entry)
        finally:
            # Leaving early closes the caller's input (an async generator's ``finally`` runs).
            await source.aclose()
            await _close_input(rows)

    def to_entry(self, item: RowInput) -> ManifestEntry:
        """A validated row, or a bad row with its reason."""
        if isinstance(item, BadRow):
            return item
        if isinstance(item, FaceRow):
            row = item if item.row else attrs.evolve(item, row=self.read)
            try:
                return row.validated()
            except ValidationError as exc:
                return BadRow(row.row, exc.reason, exc.field)
        if isinstance(item, Mapping):
            return build_row(dict(item), self.read, self.o.default_category)
        return BadRow(self.read, f"unsupported row type {type(item).__name__}")

    # --- persons -------------------------------------------------------------------------------

    async def person_for(self, row: FaceRow) -> Person | None:
        """The person's state: known, or listed from the library, or rebuilt from the ledger."""
        key = row.person_key
        person = self.people.get(key)
        if person is not None:
            self.idle.pop(key, None)
            return person
        was_evicted = key in self.evicted
        if self.o.check_existing:
            category = row.category_id.casefold()
            if self.circuit.reason(row.category_id) is None:
                if category not in self.listed_categories:
                    if await self.load_listing(row.category_id, None, key):
                        self.listed_categories.add(category)
                elif key not in self.people and was_evicted:
                    # Known once, then evicted: its faces must be read again.
                    await self.load_listing(row.category_id, row.person_id, key)
            if self.fatal is not None:
                return None
        person = self.people.get(key)
        if person is None:
            person = self.people[key] = Person(key)
            if was_evicted and not self.o.check_existing and self.ledger is not None:
                # No listing to read the person back from: the ledger knows its rows.
                for prior in self.ledger.person_rows(row.category_id, row.person_id):
                    if prior.state != "failed":
                        person.reserved += 1
                        person.seen.setdefault(prior.identity(self.keys), prior.row)
                        if prior.state == "registered" and prior.face_id:
                            person.know(prior.identity(self.keys), prior.face_id)
        return person

    async def load_listing(
        self, category_id: str, person_id: str | None, keep: tuple[str, str] | None
    ) -> bool:
        """List a library (or one person) into per-person state; False when it failed
        (the circuit counts it; the category's rows then stop once it opens)."""
        tries = ListingTries(self.o.budget)
        while True:
            try:
                listing = await self.calls.list(category_id, person_id)
                break
            except NotFoundError:
                self.circuit.success(category_id)
                return True
            except (AuthenticationError, RateLimiterError) as exc:
                self._set_fatal(exc)
                return False
            except MtsFacesError as exc:
                self.circuit.failure(category_id, exc)
                if tries.spent(exc):
                    self.circuit.open(category_id, exc, tries.tries)
                if self.circuit.reason(category_id) is not None or self.stopping():
                    return False
                await self.sleep(self.o.budget.delay(tries.tries, exc, self.settler.rng))
        self.circuit.success(category_id)
        self._load(listing, keep)
        return True

    def _load(self, listing: CustomPersons, keep: tuple[str, str] | None) -> None:
        for category, listed, face in listing.iter_faces():
            folded = category.category_id.casefold()
            self.category_faces[folded] = self.category_faces.get(folded, 0) + 1
            key = (folded, listed.person_id.casefold())
            person = self.people.get(key)
            if person is None:
                person = self.people[key] = Person(key)
                if key != keep:
                    self._mark_idle(person)
            person.listed(self.keys.key(face.image_url), face.face_id)

    def _mark_idle(self, person: Person) -> None:
        self.idle[person.key] = None
        self.idle.move_to_end(person.key)
        while len(self.idle) > self.o.max_idle_persons:
            key, _ = self.idle.popitem(last=False)
            gone = self.people.get(key)
            if gone is not None and gone.busy:
                continue  # busy again: not idle after all
            self.people.pop(key, None)
            self.evicted.add(key)

    # --- admission -----------------------------------------------------------------------------

    async def admit(self, person: Person, row: FaceRow) -> None:
        """Decide a row at once (skip, resumed, circuit open) or queue it for its person."""
        key = row.key(self.keys)
        prior = self.ledger.get(key) if self.ledger is not None else None
        decision = decide_admission(
            person,
            row,
            prior,
            self.circuit.reason(row.category_id),
            self.o.check_existing,
            self.keys,
        )
        if decision.forget_prior:
            # The library wins: the ledger's face is gone, so it is registered again.
            self.report.reregistered += 1
            if self.ledger is not None:
                await self.ledger.forget_face(key, "gone from the library")
            prior = None
        outcome: RowOutcome | None = None
        if decision.kind == "duplicate":
            outcome = RowOutcome(row, "skipped", face_id=decision.face_id, reason=decision.reason)
        elif decision.kind == "blocked":
            outcome = RowOutcome(row, "failed", reason=decision.reason)
        elif decision.kind == "resumed":
            assert decision.face_id is not None and prior is not None
            outcome = self._resumed(
                person, row, decision.face_id, prior.request_id, decision.reason
            )
        elif decision.kind == "reconciled":
            assert decision.face_id is not None
            # Sent by an earlier run that never heard back; the listing shows it stored.
            self.report.reconciled += 1
            if self.ledger is not None:
                await self.ledger.registered(
                    key,
                    row.row,
                    row.category_id,
                    row.person_id,
                    row.image_url,
                    decision.face_id,
                    None,
                )
            outcome = self._resumed(person, row, decision.face_id, None, decision.reason)
        elif decision.kind in ("in_library", "cap"):
            outcome = RowOutcome(row, "skipped", face_id=decision.face_id, reason=decision.reason)
        if outcome is not None:
            if not person.busy and person.key not in self.idle:
                self._mark_idle(person)
            await self.emit(outcome)
            return
        person.accept(row, self.keys)
        folded = row.category_id.casefold()
        self.category_faces[folded] = self.category_faces.get(folded, 0) + 1
        await self.buffered.acquire()
        self.queued += 1
        self.all_done.clear()
        person.pending.append((row, prior, None))
        self._run_person(person)

    def _run_person(self, person: Person) -> None:
        if person.task is None:
            person.task = asyncio.create_task(self.person_loop(person))

    def _resumed(
        self,
        person: Person,
        row: FaceRow,
        face_id: str,
        request_id: str | None,
        reason: str | None = None,
    ) -> RowOutcome:
        person.resume(row, face_id, self.keys)
        return RowOutcome(
            row, "registered", face_id=face_id, request_id=request_id, resumed=True, reason=reason
        )

    async def person_loop(self, person: Person) -> None:
        """Take the person's rows one at a time to their outcome; a row in doubt goes to the
        settle pool and the person's next row goes on."""
        while person.pending:
            row, prior, resume = person.pending.popleft()
            result: RowOutcome | Doubt
            try:
                if self.stopping() and prior is None and resume is None:
                    result = RowOutcome(row, NOT_ATTEMPTED, reason="not sent: the run stopped")
                else:
                    result = await self.settler.send(person, row, prior, resume)
            except Fatal as exc:
                self._set_fatal(exc.error)
                result = RowOutcome(row, "failed", reason=str(exc.error), error=exc.error)
            except NotSent as exc:
                self._set_fatal(exc.error)
                result = RowOutcome(
                    row, NOT_ATTEMPTED, reason=f"not sent: {exc.error}", error=exc.error
                )
            except Exception as exc:
                # A bug, a ledger that cannot be written, an unexpected library error: the row
                # is accounted for and the run stops and re-raises, since the same fault
                # would hit every other row.
                if not isinstance(exc, MtsFacesError):
                    logger.exception("row %d: unexpected error; stopping the run", row.row)
                self._set_fatal(exc)
                result = RowOutcome(
                    row,
                    "failed",
                    reason=f"in doubt: {exc}; rerun to settle",
                    in_doubt=True,
                    error=exc if isinstance(exc, MtsFacesError) else None,
                )
            if isinstance(result, Doubt):
                if self.stopping():
                    # The pool may have ended already: the row stays in doubt for a rerun.
                    result = await self.settler.in_doubt(
                        row, "the run stopped while the row was settling", result.last_error
                    )
                else:
                    # Counted against the cap as possibly stored until the pool settles it.
                    person.doubts += 1
                    self.pool.add(result)
                    continue
            await self._finish(person, row, result)
        person.task = None
        self._went_idle(person)

    async def _finish(self, person: Person, row: FaceRow, outcome: RowOutcome) -> None:
        """Account for a row's final outcome: its place under the cap, the consumer, the
        read-ahead buffer."""
        if outcome.status in ("failed", NOT_ATTEMPTED) and not outcome.in_doubt:
            person.reserved -= 1  # the slot was not used; a later row may use it
            person.seen.pop(row.identity(self.keys), None)
        elif outcome.status == "registered" and outcome.face_id:
            self._note_reported(row, outcome.face_id)
        await self.emit(outcome)
        self.buffered.release()
        self.queued -= 1
        if self.queued == 0:
            self.all_done.set()

    async def _finish_doubt(self, doubt: Doubt, outcome: RowOutcome) -> None:
        person = self._doubt_person(doubt)
        person.doubts -= 1
        await self._finish(person, doubt.row, outcome)
        self._went_idle(person)

    def _resend(self, doubt: Doubt) -> None:
        """A row proved absent after its deadline: first in its person's queue again."""
        person = self._doubt_person(doubt)
        person.doubts -= 1
        person.pending.appendleft((doubt.row, None, doubt))
        self._run_person(person)

    def _doubt_person(self, doubt: Doubt) -> Person:
        person = doubt.person
        assert isinstance(person, Person)
        return person

    def _went_idle(self, person: Person) -> None:
        if not person.busy:
            self._mark_idle(person)
            self.pool.poke()

    def _person_idle(self, key: tuple[str, str]) -> bool:
        person = self.people.get(key)
        return person is None or not person.busy

    def _category_faces(self, category_id: str) -> int | None:
        if not self.o.check_existing:
            return None  # never listed: its size is unknown
        return self.category_faces.get(category_id.casefold(), 0)

    def _set_fatal(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
        self.stop()

    # --- the end-of-run verification -----------------------------------------------------------

    def _on_ambiguous(self, row: FaceRow, started_at: float) -> None:
        self.report.ambiguous += 1
        if self.ledger is not None:
            return  # the ledger's index lists them
        key = row.person_key
        if key in self._ambiguous or len(self._ambiguous) < MAX_AMBIGUOUS_IN_MEMORY:
            self._ambiguous[key] = (row.category_id, row.person_id, started_at)
        else:
            logger.warning(
                "more than %d ambiguous persons: keep a ledger to verify them all",
                MAX_AMBIGUOUS_IN_MEMORY,
            )

    def _on_reconciled(self) -> None:
        self.report.reconciled += 1

    def _note_reported(self, row: FaceRow, face_id: str) -> None:
        if self.ledger is None and row.person_key in self._ambiguous:
            self._reported.add(face_id)

    def _ambiguous_persons(self) -> Iterable[tuple[str, str, float]]:
        if self.ledger is not None:
            return list(self.ledger.ambiguous_persons())
        return list(self._ambiguous.values())

    async def verify_ambiguous(self) -> None:
        """The end-of-run pass: list each person that had an ambiguous outcome and was not
        verified while the run went on (the pool remembers a bounded number), after its
        settle deadline; repair any image stored under several FaceIds."""
        persons = self._ambiguous_persons()
        for category_id, person_id, latest in persons:
            if self.stopping():
                return
            key = (category_id.casefold(), person_id.casefold())
            if key in self.pool.verified:
                continue  # verified while the run went on
            # A late commit may land up to the settle period after the send, and no sooner
            # than the client's timeout: the listing waits for both.
            wait = latest + max(self.o.settle, self.client.timeout) - self.o.clock()
            if wait > 0:
                await self.sleep(wait)
            listing = await self._list_for_verify(category_id, person_id)
            if listing is None:
                continue
            dups = list(find_duplicates(listing, self.keys, only=key))
            if not dups:
                continue
            for done in await repair(self.calls, dups, self._kept_face, apply=self.o.repair):
                self.report.add_repair(done)

    async def _list_for_verify(self, category_id: str, person_id: str) -> CustomPersons | None:
        tries = ListingTries(self.o.budget)
        while True:
            try:
                return await self.calls.list(category_id, person_id)
            except NotFoundError:
                return None
            except MtsFacesError as exc:
                if tries.spent(exc) or self.stopping():
                    logger.warning(
                        "verify %s/%s: %d listings failed (last: %s); `mts-faces verify` "
                        "checks it later",
                        category_id,
                        person_id,
                        tries.tries,
                        exc,
                    )
                    return None
                await self.sleep(self.o.budget.delay(tries.tries, exc, self.settler.rng))

    def _kept_face(self, dup: Duplicate) -> str | None:
        """The FaceId of a duplicate the ledger (or, without one, this run) holds."""
        if self.ledger is not None:
            return held_face(self.ledger.person_rows(dup.category_id, dup.person_id), dup)
        return next((f for f in dup.face_ids if f in self._reported), None)

    # --- concurrency ---------------------------------------------------------------------------

    def _target_concurrency(self, latency: float | None) -> int:
        if self.o.concurrency is not None:
            return self.o.concurrency
        # Little's law: calls in flight = rate × latency; 1.5× and +4 absorb latency spread.
        rate = self.client.current_rate or self.client.qps
        wanted = math.ceil(rate * (latency if latency is not None else 0.1) * 1.5) + 4
        return max(4, min(self.max_workers, wanted))

    async def _observe_latency(self, average: float) -> None:
        # ``average``: the moving average of registrations' latency (ServiceCalls keeps it).
        target = self._target_concurrency(average)
        if target != self.gate.limit:
            await self.gate.resize(target)

    # --- outcomes ------------------------------------------------------------------------------

    async def emit(self, outcome: RowOutcome) -> None:
        """Count an outcome and hand it to the consumer (waits while the consumer is behind)."""
        self.report.count(outcome, self.o.collect_faces)
        await self.outcomes.put(outcome)
        if self.o.progress is not None:
            r = self.report
            self.o.progress(
                Progress(
                    read=self.read,
                    registered=r.registered,
                    skipped=r.skipped,
                    failed=r.failed,
                    in_flight=self.calls.in_flight,
                    elapsed=time.monotonic() - self.started,
                    total=self.o.total,
                    not_attempted=r.not_attempted,
                )
            )

    async def outcomes_until_done(self) -> AsyncIterator[RowOutcome]:
        """The outcomes, in the order they finish, until the run ends."""
        while True:
            item = await self.outcomes.get()
            if item is _DONE:
                return
            assert isinstance(item, RowOutcome)
            yield item

    async def drain(self, supervisor: asyncio.Task[None]) -> None:
        """Throw outcomes away until ``supervisor`` ends (the consumer has gone)."""
        while not supervisor.done():
            try:
                await asyncio.wait_for(self.outcomes.get(), 0.05)
            except TimeoutError:
                continue


def held_face(rows: Iterable[LedgerRow], dup: Duplicate) -> str | None:
    """Of a duplicate's FaceIds, the one a ledger row of its person holds registered."""
    return next(
        (r.face_id for r in rows if r.state == "registered" and r.face_id in dup.face_ids), None
    )


def repairs_of(report: RegistrationReport) -> list[Repair]:
    """The repairs a run made (for writers of outcome files)."""
    return list(report.repairs)


async def _aiter(
    rows: Iterable[RowInput] | AsyncIterable[RowInput],
) -> AsyncGenerator[RowInput, None]:
    if isinstance(rows, AsyncIterable):
        async for row in rows:
            yield row
        return
    for count, row in enumerate(rows, 1):
        yield row
        if count % 256 == 0:
            # A long run of rows that need no call must not starve the event loop.
            await asyncio.sleep(0)


async def _close_input(rows: Iterable[RowInput] | AsyncIterable[RowInput]) -> None:
    aclose = getattr(rows, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(RuntimeError):  # already running: closed from inside
            await aclose()
        return
    close = getattr(rows, "close", None)
    if callable(close) and not hasattr(rows, "read"):
        close()

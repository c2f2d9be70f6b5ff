"""Exactly once without an idempotency token: register → ambiguous → settle → list → decide,
and verify & repair of duplicates.

RegisterCustomFace has no client token: a call whose answer is lost may or may not have
stored a face, and may still store it seconds later. So:

* A row's start is durable in the ledger before its request leaves (the scheduler sees to it).
* After an ambiguous outcome the row is never sent again before its **settle deadline**
  (its start time + ``settle``); the person is listed until then. A face with the row's image
  URL is the lost call's result. Only a well-formed listing *taken after the deadline* that
  lacks it proves absence; a failed or malformed listing proves nothing.
* A category whose listing keeps failing opens a **circuit**: its rows stop with a clear
  reason instead of each paying the whole retry cost.
* Each row has **one retry budget**: the client is called with ``max_retries=0`` and this
  module decides every retry.
* At the end of a run every person that had an ambiguous outcome is listed once more after
  its deadline; an image URL under several FaceIds is a duplicate and the extras are
  unregistered (the FaceId the ledger holds is kept; else the first listed).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ._exceptions import (
    AmbiguousOutcomeError,
    APIError,
    AuthenticationError,
    MtsFacesError,
    NotFoundError,
    RateLimiterError,
    ThrottlingError,
    TransportError,
    is_retryable,
)
from ._limiter import BULK, Priority
from ._models import Acknowledgement, CustomPersons, Face, RegisteredFace
from ._outcomes import NOT_ATTEMPTED, Repair, RowOutcome
from .manifest import FaceRow

if TYPE_CHECKING:
    from .ledger import Ledger, LedgerRow

logger = logging.getLogger("mts_faces.registrar")


def default_settle(timeout: float) -> float:
    """The settle period derived from a request timeout: 3 × timeout, at least 5 s.

    A registration whose answer was lost is not sent again until this long after it was
    sent; a face that appears later than that is left for the end-of-run verification and
    ``mts-faces verify --repair``. A row an earlier run left in flight is settled with at
    least this period, whatever ``settle`` the rerun was given.
    """
    return max(5.0, 3.0 * timeout)


class HasAccessKeyId(Protocol):
    """Credentials as the registrar needs them: only the AccessKeyId (for the ledger)."""

    @property
    def access_key_id(self) -> str: ...


class HasCredentials(Protocol):
    """Where the client gets its credentials (the registrar reads the AccessKeyId only)."""

    async def get_credentials(self) -> HasAccessKeyId: ...


class RegistrarClient(Protocol):
    """What the registrar needs of a client (:class:`~mts_faces.MtsFaceClient` is one)."""

    @property
    def endpoint(self) -> str: ...
    @property
    def credentials(self) -> HasCredentials: ...
    @property
    def timeout(self) -> float: ...
    @property
    def qps(self) -> float: ...
    @property
    def current_rate(self) -> float | None: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def attempts(self) -> int: ...

    async def register_custom_face(
        self,
        category_id: str,
        person_id: str,
        image_url: str,
        person_name: str | None = None,
        *,
        max_retries: int | None = None,
        priority: Priority = ...,
    ) -> RegisteredFace: ...

    async def unregister_custom_face(
        self,
        category_id: str,
        person_id: str,
        face_id: str,
        *,
        max_retries: int | None = None,
        priority: Priority = ...,
    ) -> Acknowledgement: ...

    async def list_custom_persons(
        self,
        category_id: str | None = None,
        person_id: str | None = None,
        *,
        max_retries: int | None = None,
        priority: Priority = ...,
    ) -> CustomPersons: ...


@attrs.frozen
class RetryBudget:
    """The one retry budget of a row, whoever would retry.

    ``max_attempts``: RegisterCustomFace requests per row and run, throttled and refused ones
    included (the client is called with ``max_retries=0``, so nothing multiplies this).
    ``listing_attempts``: failed or malformed listings before a row being settled is left in
    doubt, or before a library whose first listing fails is given up (its circuit opens).
    ``circuit_threshold``: failed listings of one library in a row, whatever rows they were
    for, that open its circuit. Waits between tries:
    ``backoff`` × 2ⁿ with full jitter, at most ``backoff_max``, or the service's retry hint.
    """

    max_attempts: int = 6
    listing_attempts: int = 5
    backoff: float = 0.5
    circuit_threshold: int = 10
    backoff_max: float = 30.0

    def __attrs_post_init__(self) -> None:
        if self.max_attempts < 1 or self.listing_attempts < 1:
            raise ValueError("max_attempts and listing_attempts must be >= 1")

    def delay(self, failures: int, exc: BaseException | None, rng: random.Random) -> float:
        """Seconds to wait before the next try after ``failures`` failures."""
        if isinstance(exc, ThrottlingError) and exc.retry_after is not None:
            return min(self.backoff_max, exc.retry_after)
        cap = min(self.backoff_max, self.backoff * 2.0 ** (failures - 1))
        return rng.uniform(cap / 2, cap)


class ListingTries:
    """Failed listings of one purpose (settling a row, loading a library) against the budget.

    A throttled listing says the quota is busy, not that listing fails: it waits (the
    service's hint, or the backoff) and counts against a budget four times as large.
    """

    THROTTLED_FACTOR = 4

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget
        self.failures = 0
        self.throttled = 0

    @property
    def tries(self) -> int:
        """Failed listings so far, throttled or not."""
        return self.failures + self.throttled

    def spent(self, exc: BaseException) -> bool:
        """Count ``exc``; True when the budget is spent."""
        if isinstance(exc, ThrottlingError):
            self.throttled += 1
            return self.throttled >= self.THROTTLED_FACTOR * self.budget.listing_attempts
        self.failures += 1
        return self.failures >= self.budget.listing_attempts


class ListingCircuit:
    """Consecutive listing failures per category; at ``threshold`` the category is open
    (its rows stop with :attr:`reason`) for the rest of the run."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self._failures: dict[str, int] = {}
        self._open: dict[str, str] = {}

    def reason(self, category_id: str) -> str | None:
        """Why the category is open, or None while it is closed."""
        return self._open.get(category_id.casefold())

    def failure(self, category_id: str, exc: BaseException) -> None:
        """Count a failed listing of the category (a throttled one proves nothing about the
        listing: it neither counts nor resets)."""
        if isinstance(exc, ThrottlingError):
            return
        key = category_id.casefold()
        count = self._failures[key] = self._failures.get(key, 0) + 1
        if count >= self.threshold and key not in self._open:
            self._open[key] = (
                f"listing library {category_id!r} failed {count} times in a row "
                f"(last: {_reason(exc)}); its rows stop here, rerun later"
            )
            logger.warning("circuit open: %s", self._open[key])

    def open(self, category_id: str, exc: BaseException, tries: int) -> None:
        """Open the category now (its first listing failed ``tries`` times)."""
        key = category_id.casefold()
        self._open.setdefault(
            key,
            f"listing library {category_id!r} failed {tries} times (last: {_reason(exc)}); "
            "its rows stop here, rerun later",
        )

    def success(self, category_id: str) -> None:
        """A well-formed listing: the count starts again."""
        self._failures.pop(category_id.casefold(), None)


class Gate:
    """A semaphore whose limit can change: the registrar's concurrency follows latency."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._changed = asyncio.Condition()

    async def acquire(self) -> None:
        """Wait for a free slot and take it."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.active < self.limit)
            self.active += 1

    async def release(self) -> None:
        """Give a slot back."""
        async with self._changed:
            self.active -= 1
            self._changed.notify()

    async def resize(self, limit: int) -> None:
        """Change the limit (calls in flight above it finish normally)."""
        async with self._changed:
            grew = limit > self.limit
            self.limit = limit
            if grew:
                self._changed.notify_all()


class ServiceCalls:
    """The registrar's only door to the service: every call takes a slot of ``gate`` and is
    made with ``max_retries=0`` (retries are this module's decision).

    The call options live in :meth:`_options`, one place for every operation: no client
    retries, and the bulk priority lane.
    """

    def __init__(
        self,
        client: RegistrarClient,
        gate: Gate,
        on_latency: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.gate = gate
        self.on_latency = on_latency
        self.in_flight = 0

    @staticmethod
    def _options() -> dict[str, Any]:
        # Bulk lane: an async service's interactive calls on the same account go first.
        return {"max_retries": 0, "priority": BULK}

    async def register(
        self, row: FaceRow, before_send: Callable[[], Awaitable[object]] | None = None
    ) -> RegisteredFace:
        """One RegisterCustomFace attempt for ``row``.

        ``before_send`` is awaited once the gate's slot is held, right before the client is
        called (the settler records the row's durable start there, so waiting for a slot does
        not eat into the row's settle period); an error it raises releases the slot.
        """
        await self.gate.acquire()
        try:
            if before_send is not None:
                await before_send()
        except BaseException:
            await self.gate.release()
            raise
        self.in_flight += 1
        started = time.monotonic()
        try:
            face = await self.client.register_custom_face(
                row.category_id, row.person_id, row.image_url, row.person_name, **self._options()
            )
        finally:
            self.in_flight -= 1
            await self.gate.release()
        if self.on_latency is not None:
            await self.on_latency(time.monotonic() - started)
        return face

    async def list(self, category_id: str, person_id: str | None = None) -> CustomPersons:
        """One ListCustomPersons attempt."""
        await self.gate.acquire()
        try:
            return await self.client.list_custom_persons(category_id, person_id, **self._options())
        finally:
            await self.gate.release()

    async def unregister(self, category_id: str, person_id: str, face_id: str) -> None:
        """One UnregisterCustomFace attempt."""
        await self.gate.acquire()
        try:
            await self.client.unregister_custom_face(
                category_id, person_id, face_id, **self._options()
            )
        finally:
            await self.gate.release()


class PersonState(Protocol):
    """What the settler needs of the scheduler's per-person state."""

    faces: dict[str, str]
    """image URL → FaceId of faces known to be stored."""

    def know(self, image_url: str, face_id: str) -> None: ...


class NotSent(Exception):
    """Raised inside the settler when a row's start could not be recorded: it was not sent,
    and the run must stop (the ledger cannot be written)."""

    def __init__(self, error: MtsFacesError) -> None:
        super().__init__(str(error))
        self.error = error


class Fatal(Exception):
    """Raised inside the settler when the run must stop (bad credentials)."""

    def __init__(self, error: MtsFacesError) -> None:
        super().__init__(str(error))
        self.error = error


@attrs.define
class SettleHooks:
    """Callbacks from the settler to its run: counts and the ambiguity log."""

    stopping: Callable[[], bool]
    ambiguous: Callable[[FaceRow, float], None]
    reconciled: Callable[[], None]


class Settler:
    """Takes one row to a final outcome: send, and after an ambiguous outcome settle it.

    ``settle``: seconds after a send before absence may be concluded. ``inherited_settle``:
    the same for a row an earlier run left in flight (None: ``settle``; the registrar passes
    at least :func:`default_settle` of the client's timeout, since the earlier run may have
    been given a longer period than this one). ``ledger``: records start, ambiguity and
    outcome (None: memory only, no resume). ``clock``: wall-clock seconds, the ledger's time
    base.
    """

    def __init__(
        self,
        calls: ServiceCalls,
        ledger: Ledger | None,
        *,
        settle: float,
        budget: RetryBudget,
        circuit: ListingCircuit,
        hooks: SettleHooks,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        inherited_settle: float | None = None,
    ) -> None:
        self.calls = calls
        self.ledger = ledger
        self.settle = settle
        self.inherited_settle = settle if inherited_settle is None else inherited_settle
        self.budget = budget
        self.circuit = circuit
        self.hooks = hooks
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        # Listings while waiting for a deadline: about five per settle period.
        self.poll = max(0.05, settle / 5)

    async def register_row(
        self, person: PersonState, row: FaceRow, prior: LedgerRow | None
    ) -> RowOutcome:
        """Send ``row`` (settling first when ``prior`` says it was in flight) and decide."""
        deadline: float | None = None
        if prior is not None and prior.state in ("started", "ambiguous"):
            # In flight when an earlier run ended: it settles from its recorded start, and
            # this run's final verification lists its person again.
            started = prior.started_at if prior.started_at is not None else self.clock()
            if prior.state == "started" and self.ledger is not None:
                # No answer was recorded: the request may have left after its start, up to
                # when the earlier run was last seen alive.
                started = max(started, self.ledger.previous_seen or started)
            deadline = started + self.inherited_settle
            self.hooks.ambiguous(row, started)
            if self.ledger is not None:
                await self.ledger.ambiguous(row.row_key, "in flight when an earlier run ended")
        attempts = 0
        last_error: MtsFacesError | None = None
        while True:
            if deadline is not None:
                settled = await self.settle_row(person, row, deadline)
                if settled is not None:
                    return settled
                deadline = None
            if self.hooks.stopping():
                return await self._not_attempted(row, attempts)
            blocked = self.circuit.reason(row.category_id)
            if blocked is not None:
                return await self._failed(row, blocked, last_error, sent=attempts > 0)
            if attempts >= self.budget.max_attempts:
                assert last_error is not None
                reason = (
                    f"gave up after {attempts} attempts (the row's budget); last: "
                    f"{_reason(last_error)}"
                )
                return await self._failed(row, reason, last_error, sent=True)
            attempts += 1

            async def record_start() -> None:
                # After the gate's slot is held: waiting for a slot is not settle time.
                await self._start(row)

            try:
                face = await self.calls.register(row, record_start)
            except RateLimiterError as exc:
                # The shared limiter gave up waiting for Redis: nothing was sent, and every
                # other row would meet the same outage, so the run stops.
                await self._record_failed(row, f"not sent: {exc}")
                raise NotSent(exc) from exc
            except AmbiguousOutcomeError as exc:
                logger.info("row %d: ambiguous outcome (%s); settling", row.row, exc.cause)
                last_error = exc
                # The request left after the client's limiter wait, at the latest now: the
                # settle period counts from here (and the ledger's start moves here too, so a
                # rerun after a crash counts from it as well).
                sent_by = self.clock()
                self.hooks.ambiguous(row, sent_by)
                if self.ledger is not None:
                    await self.ledger.ambiguous(
                        row.row_key, f"ambiguous: {exc.cause}", sent_by=sent_by
                    )
                deadline = sent_by + self.settle
                continue
            except (TransportError, APIError) as exc:
                if isinstance(exc, AuthenticationError) and exc.code != "SignatureNonceUsed":
                    await self._record_failed(row, _reason(exc))
                    raise Fatal(exc) from exc
                last_error = exc
                if is_retryable(exc):
                    wait = self.budget.delay(attempts, exc, self.rng)
                    logger.info(
                        "row %d: retry %d/%d in %.2fs after %s",
                        row.row,
                        attempts,
                        self.budget.max_attempts - 1,
                        wait,
                        _reason(exc),
                    )
                    await self.sleep(wait)
                    continue
                return await self._failed(row, _reason(exc), exc, sent=True)
            person.know(row.image_url, face.face_id)
            if self.ledger is not None:
                await self.ledger.registered(
                    row.row_key,
                    row.row,
                    row.category_id,
                    row.person_id,
                    row.image_url,
                    face.face_id,
                    face.request_id,
                )
            return RowOutcome(row, "registered", face_id=face.face_id, request_id=face.request_id)

    async def settle_row(
        self, person: PersonState, row: FaceRow, deadline: float
    ) -> RowOutcome | None:
        """List the person until the row's face shows up (→ registered) or a well-formed
        listing taken after ``deadline`` lacks it (→ None: send again)."""
        tries = ListingTries(self.budget)
        last: MtsFacesError | None = None
        while True:
            blocked = self.circuit.reason(row.category_id)
            if blocked is not None:
                return await self._in_doubt(row, f"could not settle: {blocked}", last)
            if self.hooks.stopping():
                return await self._in_doubt(row, "the run stopped while the row was settling", last)
            taken_at = self.clock()
            try:
                listing: CustomPersons | None = await self.calls.list(
                    row.category_id, row.person_id
                )
            except NotFoundError:
                listing = None  # no such person or library: a well-formed "nothing"
            except (AuthenticationError, RateLimiterError) as exc:
                raise Fatal(exc) from exc
            except MtsFacesError as exc:
                last = exc
                self.circuit.failure(row.category_id, exc)
                if tries.spent(exc):
                    reason = (
                        f"could not verify an ambiguous registration: {tries.tries} listings "
                        f"failed (last: {_reason(exc)})"
                    )
                    return await self._in_doubt(row, reason, exc)
                await self.sleep(self.budget.delay(tries.tries, exc, self.rng))
                continue
            self.circuit.success(row.category_id)
            faces = [] if listing is None else person_faces(listing, row.person_key, row.image_url)
            if faces:
                face = faces[0]
                person.know(row.image_url, face.face_id)
                self.hooks.reconciled()
                reason = "reconciled: found stored after a lost answer"
                if self.ledger is not None:
                    await self.ledger.registered(
                        row.row_key,
                        row.row,
                        row.category_id,
                        row.person_id,
                        row.image_url,
                        face.face_id,
                        None,
                        reason,
                    )
                return RowOutcome(row, "registered", face_id=face.face_id, reason=reason)
            if taken_at >= deadline:
                return None
            await self.sleep(max(0.0, min(self.poll, deadline - self.clock())))

    # --- endings -------------------------------------------------------------------------------

    async def _start(self, row: FaceRow) -> float:
        if self.ledger is None:
            return self.clock()
        try:
            return await self.ledger.start(
                row.row_key, row.row, row.category_id, row.person_id, row.image_url
            )
        except MtsFacesError as exc:  # the ledger's own error: nothing was sent
            raise NotSent(exc) from exc

    async def _record_failed(self, row: FaceRow, reason: str) -> None:
        if self.ledger is not None:
            await self.ledger.failed(row.row_key, reason)

    async def _failed(
        self, row: FaceRow, reason: str, exc: MtsFacesError | None, *, sent: bool
    ) -> RowOutcome:
        if sent:
            await self._record_failed(row, reason)
        return RowOutcome(row, "failed", reason=reason, error=exc)

    async def _in_doubt(self, row: FaceRow, reason: str, exc: MtsFacesError | None) -> RowOutcome:
        # The ledger keeps the row open (started or ambiguous): a rerun settles it first.
        return RowOutcome(
            row, "failed", reason=f"in doubt: {reason}; rerun to settle", error=exc, in_doubt=True
        )

    async def _not_attempted(self, row: FaceRow, attempts: int) -> RowOutcome:
        if attempts:
            # Sent before and refused for certain: nothing is stored, nothing is pending.
            reason = "the run stopped before it was sent again"
            await self._record_failed(row, reason)
        return RowOutcome(row, NOT_ATTEMPTED, reason="not sent: the run stopped")


# --- listings and duplicates -------------------------------------------------------------------


def person_faces(listing: CustomPersons, person_key: tuple[str, str], url: str) -> list[Face]:
    """The faces of ``person_key`` (casefolded category, person) with image URL ``url``."""
    category, person_id = person_key
    return [
        face
        for listed_category, listed, face in listing.iter_faces()
        if listed.person_id.casefold() == person_id
        and listed_category.category_id.casefold() == category
        and face.image_url == url
    ]


@attrs.frozen
class Duplicate:
    """One image URL of one person stored under several FaceIds (in listing order)."""

    category_id: str
    person_id: str
    image_url: str
    face_ids: tuple[str, ...]


def find_duplicates(listing: CustomPersons) -> Iterator[Duplicate]:
    """Every (person, image URL) the listing shows under more than one FaceId."""
    for category in listing.categories:
        for person in category.persons:
            by_url: dict[str, list[str]] = {}
            for face in person.faces:
                by_url.setdefault(face.image_url, []).append(face.face_id)
            for url, ids in by_url.items():
                if len(ids) > 1:
                    yield Duplicate(category.category_id, person.person_id, url, tuple(ids))


async def repair(
    calls: ServiceCalls,
    duplicates: Iterable[Duplicate],
    keep: Callable[[Duplicate], str | None],
    *,
    apply: bool,
    attempts: int = 3,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> list[Repair]:
    """Unregister the extra FaceIds of each duplicate (``apply=False``: only report).

    ``keep`` names the FaceId to keep (the ledger's), or None to keep the first listed.
    """
    done: list[Repair] = []
    for dup in duplicates:
        wanted = keep(dup)
        kept = wanted if wanted in dup.face_ids else dup.face_ids[0]
        extras = tuple(face_id for face_id in dup.face_ids if face_id != kept)
        error: str | None = None
        if apply:
            for face_id in extras:
                for attempt in range(1, attempts + 1):
                    try:
                        await calls.unregister(dup.category_id, dup.person_id, face_id)
                        break
                    except NotFoundError:
                        break  # already gone
                    except MtsFacesError as exc:
                        if attempt == attempts or not is_retryable(exc):
                            error = f"could not unregister {face_id}: {_reason(exc)}"
                            break
                        await sleep(0.2 * 2**attempt)
                if error:
                    break
        repair_record = Repair(
            dup.category_id,
            dup.person_id,
            dup.image_url,
            kept,
            extras,
            repaired=apply and error is None,
            error=error,
        )
        logger.warning(
            "duplicate: %s/%s %s stored as %s; %s %s",
            dup.category_id,
            dup.person_id,
            dup.image_url,
            ", ".join(dup.face_ids),
            "removed" if repair_record.repaired else "would remove",
            ", ".join(extras),
        )
        done.append(repair_record)
    return done


def _reason(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return f"{exc.code}: {exc.message}"
    return str(exc)

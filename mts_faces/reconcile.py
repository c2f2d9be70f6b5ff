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
from typing import TYPE_CHECKING, Any, Literal, Protocol

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
from .imagekey import DEFAULT_IMAGE_KEYS, ImageKeys
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
    retries, and the bulk priority lane. A registration still unanswered after
    :attr:`lease` seconds gives its slot back and goes on waiting outside the gate: an
    answer that will never come (a hung connection, waited out to the timeout) must not
    hold a slot that the quota could use. ``on_latency`` is called with the moving average
    of answered registrations' latency (:attr:`latency`). Listings and removals take slots
    of ``side_gate`` (default: a gate of :attr:`SIDE_SLOTS`), not ``gate``: they wait for
    their own, slower quota (a tenth of the registrations' by default), and a burst of them
    waiting there must not hold the slots registrations need.
    """

    LEASE_FACTOR = 4.0
    """A registration holds its slot for this many times the average latency..."""
    MIN_LEASE = 1.0
    """...and at least this many seconds."""
    SIDE_SLOTS = 4
    """Listings and removals in flight at once, by default."""

    def __init__(
        self,
        client: RegistrarClient,
        gate: Gate,
        on_latency: Callable[[float], Awaitable[None]] | None = None,
        side_gate: Gate | None = None,
    ) -> None:
        self.client = client
        self.gate = gate
        self.side_gate = side_gate or Gate(self.SIDE_SLOTS)
        self.on_latency = on_latency
        self.in_flight = 0
        self.latency: float | None = None
        """Moving average (weight 0.1) of the seconds answered registrations took."""

    @property
    def lease(self) -> float:
        """Seconds a registration holds its gate slot before giving it back."""
        if self.latency is None:
            return self.MIN_LEASE
        return max(self.MIN_LEASE, self.LEASE_FACTOR * self.latency)

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
        call = asyncio.ensure_future(
            self.client.register_custom_face(
                row.category_id, row.person_id, row.image_url, row.person_name, **self._options()
            )
        )
        holding = True
        try:
            await asyncio.wait((call,), timeout=self.lease)
            if not call.done():
                holding = False  # past its lease: the slot goes back, the wait goes on
                await self.gate.release()
            face = await call
        except BaseException:
            call.cancel()
            raise
        finally:
            self.in_flight -= 1
            if holding:
                await self.gate.release()
        seconds = time.monotonic() - started
        self.latency = (
            seconds if self.latency is None else self.latency + 0.1 * (seconds - self.latency)
        )
        if self.on_latency is not None:
            await self.on_latency(self.latency)
        return face

    async def list(self, category_id: str, person_id: str | None = None) -> CustomPersons:
        """One ListCustomPersons attempt."""
        await self.side_gate.acquire()
        try:
            return await self.client.list_custom_persons(category_id, person_id, **self._options())
        finally:
            await self.side_gate.release()

    async def unregister(self, category_id: str, person_id: str, face_id: str) -> None:
        """One UnregisterCustomFace attempt."""
        await self.side_gate.acquire()
        try:
            await self.client.unregister_custom_face(
                category_id, person_id, face_id, **self._options()
            )
        finally:
            await self.side_gate.release()


class PersonState(Protocol):
    """What the settler needs of the scheduler's per-person state."""

    faces: dict[str, str]
    """image key → FaceId of faces known to be stored."""

    def know(self, image_key: str, face_id: str) -> None: ...


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
    """Callbacks from the settler to its run: counts and the ambiguity log (``ambiguous``
    is called with the row and when its request left at the latest)."""

    stopping: Callable[[], bool]
    ambiguous: Callable[[FaceRow, float], None]
    reconciled: Callable[[], None]


@attrs.define(eq=False)
class Doubt:
    """A row sent without a usable answer: it may be stored, now or later.

    ``deadline``: a well-formed listing taken at or after it that lacks the face proves it
    absent (before it, only presence can be concluded). ``sent_at``: when its last request
    left, at the latest. ``keys``: image keys of every URL
    sent for the row (a rerun may carry a URL signed anew). ``attempts`` and
    ``last_error``: the row's retry budget so far, carried into its resend.
    ``not_before``: after a failed listing, no new try before then.
    """

    row: FaceRow
    person: PersonState
    deadline: float
    sent_at: float
    keys: frozenset[str]
    attempts: int = 0
    last_error: MtsFacesError | None = None
    tries: ListingTries | None = None
    not_before: float = 0.0


Verdict = Literal["resend", "wait"]
"""What a listing says of a row in doubt when it does not show the face: absent for
certain (``resend``: taken after the deadline), or not yet known (``wait``)."""


class Settler:
    """Takes one row to a final outcome: send, and after an ambiguous outcome settle it.

    The steps are apart so that a scheduler can settle many rows with shared listings while
    their persons go on (:mod:`mts_faces._settling`): :meth:`send` returns an outcome or a
    :class:`Doubt`; :meth:`resolve` decides a doubt from a listing; :meth:`register_row`
    composes them for one row at a time.

    ``settle``: seconds after a send before absence may be concluded. ``inherited_settle``:
    the same for a row an earlier run left in flight (None: ``settle``; the registrar passes
    at least :func:`default_settle` of the client's timeout, since the earlier run may have
    been given a longer period than this one). ``ledger``: records start, ambiguity and
    outcome (None: memory only, no resume). ``clock``: wall-clock seconds, the ledger's time
    base. ``image_keys``: how image URLs are keyed (a listed face is the row's when its
    URL's key is that of a URL sent for the row).
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
        image_keys: ImageKeys = DEFAULT_IMAGE_KEYS,
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
        self.image_keys = image_keys
        # register_row's listings while waiting for a deadline: about five per settle period.
        self.poll = max(0.05, settle / 5)

    async def register_row(
        self, person: PersonState, row: FaceRow, prior: LedgerRow | None
    ) -> RowOutcome:
        """Send ``row`` (settling first when ``prior`` says it was in flight) and decide,
        settling any doubt on the spot by listing its person."""
        result = await self.send(person, row, prior)
        while isinstance(result, Doubt):
            settled = await self.settle_row(result)
            if settled is not None:
                return settled
            result = await self.send(person, row, None, result)
        return result

    async def send(
        self,
        person: PersonState,
        row: FaceRow,
        prior: LedgerRow | None = None,
        resume: Doubt | None = None,
    ) -> RowOutcome | Doubt:
        """Send ``row`` until it is registered, fails, or is in doubt (→ :class:`Doubt`).

        ``prior``: the ledger's record; a row an earlier run left in flight is not sent but
        returned in doubt at once, settling from its recorded start. ``resume``: the doubt a
        listing proved absent; its budget carries on.
        """
        key = row.key(self.image_keys)
        if resume is None and prior is not None and prior.state in ("started", "ambiguous"):
            # In flight when an earlier run ended: it settles from its recorded start, and
            # this run's verification lists its person again.
            started = prior.started_at if prior.started_at is not None else self.clock()
            if prior.state == "started" and self.ledger is not None:
                # No answer was recorded: the request may have left after its start, up to
                # when the earlier run was last seen alive.
                started = max(started, self.ledger.previous_seen or started)
            deadline = started + self.inherited_settle
            self.hooks.ambiguous(row, started)
            if self.ledger is not None:
                await self.ledger.ambiguous(key, "in flight when an earlier run ended")
            keys = {self.image_keys.key(row.image_url), self.image_keys.key(prior.image_url)}
            return Doubt(row, person, deadline, started, frozenset(keys))
        attempts = resume.attempts if resume is not None else 0
        last_error = resume.last_error if resume is not None else None
        sent_keys = resume.keys if resume is not None else frozenset()
        while True:
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
                # The settle period counts from when the request was out whole: the
                # transport says when, or else it left (after the client's limiter wait) at
                # the latest now. The ledger's start moves there too, so a rerun after a
                # crash counts from it as well.
                sent_by = self.clock()
                if exc.written_at is not None:
                    sent_by -= max(0.0, time.monotonic() - exc.written_at)
                deadline = sent_by + self.settle
                self.hooks.ambiguous(row, sent_by)
                if self.ledger is not None:
                    await self.ledger.ambiguous(key, f"ambiguous: {exc.cause}", sent_by=sent_by)
                sent = sent_keys | {self.image_keys.key(row.image_url)}
                return Doubt(row, person, deadline, sent_by, sent, attempts, exc)
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
            self._know(person, row, face.face_id)
            if self.ledger is not None:
                await self.ledger.registered(
                    key,
                    row.row,
                    row.category_id,
                    row.person_id,
                    row.image_url,
                    face.face_id,
                    face.request_id,
                )
            return RowOutcome(row, "registered", face_id=face.face_id, request_id=face.request_id)

    async def resolve(
        self, doubt: Doubt, listing: CustomPersons | None, taken_at: float
    ) -> RowOutcome | Verdict:
        """Decide ``doubt`` from a well-formed listing taken at ``taken_at`` (None: the
        service knows no such person or library). A face of the row's person whose URL's key
        is one sent for the row is the lost call's result (→ registered); none in a listing
        taken at or after the deadline proves absence (→ ``resend``); else ``wait``."""
        row = doubt.row
        self.circuit.success(row.category_id)
        found = (
            None
            if listing is None
            else next(person_faces(listing, row.person_key, doubt.keys, self.image_keys), None)
        )
        if found is None:
            return "resend" if taken_at >= doubt.deadline else "wait"
        self._know(doubt.person, row, found.face_id)
        self.hooks.reconciled()
        reason = "reconciled: found stored after a lost answer"
        if self.ledger is not None:
            await self.ledger.registered(
                row.key(self.image_keys),
                row.row,
                row.category_id,
                row.person_id,
                row.image_url,
                found.face_id,
                None,
                reason,
            )
        return RowOutcome(row, "registered", face_id=found.face_id, reason=reason)

    async def listing_failed(self, doubt: Doubt, exc: MtsFacesError) -> RowOutcome | None:
        """Count a failed or malformed listing against ``doubt``'s listing budget: the row
        ends in doubt when it is spent (None: try again after ``doubt.not_before``).
        Raises :class:`Fatal` for an error every listing would meet."""
        if isinstance(exc, AuthenticationError | RateLimiterError):
            raise Fatal(exc) from exc
        self.circuit.failure(doubt.row.category_id, exc)
        if doubt.tries is None:
            doubt.tries = ListingTries(self.budget)
        if doubt.tries.spent(exc):
            reason = (
                f"could not verify an ambiguous registration: {doubt.tries.tries} listings "
                f"failed (last: {_reason(exc)})"
            )
            return await self.in_doubt(doubt.row, reason, exc)
        doubt.not_before = self.clock() + self.budget.delay(doubt.tries.tries, exc, self.rng)
        return None

    def blocked(self, doubt: Doubt) -> str | None:
        """Why ``doubt`` can no longer be settled (its library's circuit is open, the run is
        stopping), or None."""
        blocked = self.circuit.reason(doubt.row.category_id)
        if blocked is not None:
            return f"could not settle: {blocked}"
        if self.hooks.stopping():
            return "the run stopped while the row was settling"
        return None

    async def settle_row(self, doubt: Doubt) -> RowOutcome | None:
        """List the person until the row's face shows up (→ registered) or a well-formed
        listing taken after the deadline lacks it (→ None: send again)."""
        row = doubt.row
        while True:
            blocked = self.blocked(doubt)
            if blocked is not None:
                return await self.in_doubt(row, blocked, doubt.last_error)
            taken_at = self.clock()
            try:
                listing: CustomPersons | None = await self.calls.list(
                    row.category_id, row.person_id
                )
            except NotFoundError:
                listing = None  # no such person or library: a well-formed "nothing"
            except MtsFacesError as exc:
                ended = await self.listing_failed(doubt, exc)
                if ended is not None:
                    return ended
                await self.sleep(max(0.0, doubt.not_before - self.clock()))
                continue
            verdict = await self.resolve(doubt, listing, taken_at)
            if isinstance(verdict, RowOutcome):
                return verdict
            if verdict == "resend":
                return None
            await self.sleep(max(0.0, min(self.poll, doubt.deadline - self.clock())))

    def _know(self, person: PersonState, row: FaceRow, face_id: str) -> None:
        # By the row's identity, and by its URL's key (what a later row or a listing shows).
        person.know(row.identity(self.image_keys), face_id)
        if row.image_key:
            person.know(self.image_keys.key(row.image_url), face_id)

    # --- endings -------------------------------------------------------------------------------

    async def _start(self, row: FaceRow) -> float:
        if self.ledger is None:
            return self.clock()
        try:
            return await self.ledger.start(
                row.key(self.image_keys), row.row, row.category_id, row.person_id, row.image_url
            )
        except MtsFacesError as exc:  # the ledger's own error: nothing was sent
            raise NotSent(exc) from exc

    async def _record_failed(self, row: FaceRow, reason: str) -> None:
        if self.ledger is not None:
            await self.ledger.failed(row.key(self.image_keys), reason)

    async def _failed(
        self, row: FaceRow, reason: str, exc: MtsFacesError | None, *, sent: bool
    ) -> RowOutcome:
        if sent:
            await self._record_failed(row, reason)
        return RowOutcome(row, "failed", reason=reason, error=exc)

    async def in_doubt(self, row: FaceRow, reason: str, exc: MtsFacesError | None) -> RowOutcome:
        """The outcome of a row that cannot be settled in this run: failed, in doubt. The
        ledger keeps the row open (started or ambiguous): a rerun settles it first."""
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


def person_faces(
    listing: CustomPersons,
    person_key: tuple[str, str],
    keys: frozenset[str] | set[str],
    image_keys: ImageKeys = DEFAULT_IMAGE_KEYS,
) -> Iterator[Face]:
    """The faces of ``person_key`` (casefolded category, person) whose image URL's key is in
    ``keys``."""
    category, person_id = person_key
    for listed_category, listed, face in listing.iter_faces():
        if (
            listed.person_id.casefold() == person_id
            and listed_category.category_id.casefold() == category
            and image_keys.key(face.image_url) in keys
        ):
            yield face


@attrs.frozen
class Duplicate:
    """One image of one person stored under several FaceIds (in listing order):
    ``image_key`` is the key their URLs share, ``image_url`` the first one's URL."""

    category_id: str
    person_id: str
    image_url: str
    face_ids: tuple[str, ...]
    image_key: str = ""


def find_duplicates(
    listing: CustomPersons,
    image_keys: ImageKeys = DEFAULT_IMAGE_KEYS,
    only: tuple[str, str] | None = None,
) -> Iterator[Duplicate]:
    """Every (person, image key) the listing shows under more than one FaceId (``only``:
    of that casefolded (category, person) alone). A URL signed anew is the same image."""
    for category in listing.categories:
        for person in category.persons:
            key = (category.category_id.casefold(), person.person_id.casefold())
            if only is not None and key != only:
                continue
            by_key: dict[str, list[Face]] = {}
            for face in person.faces:
                by_key.setdefault(image_keys.key(face.image_url), []).append(face)
            for image_key, faces in by_key.items():
                if len(faces) > 1:
                    yield Duplicate(
                        category.category_id,
                        person.person_id,
                        faces[0].image_url,
                        tuple(f.face_id for f in faces),
                        image_key,
                    )


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

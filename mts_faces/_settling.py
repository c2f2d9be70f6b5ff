"""Settling rows in doubt beside the run, with shared listings, and verifying as it goes.

A row whose answer was lost (:class:`~mts_faces.reconcile.Doubt`) leaves its person's queue
for the :class:`SettlePool`; the person's other rows go on, the row in doubt still counted
against the 10-face cap as possibly stored. The pool lists persons when rows fall due and
decides each row from the listing:

* A row falls due at its **deadline** (its send + the settle period): only a well-formed
  listing taken at or after it can prove the face absent. Rows whose deadlines fall within
  one ``coalesce`` period share a listing; a listing answers **every** row in doubt of the
  persons it covers (presence can be concluded from any listing, absence only after the
  row's deadline).
* A category with at least :data:`CATEGORY_LISTING_MIN` persons due at once is listed
  **once** (one ``ListCustomPersons`` for the library instead of one per person), when its
  size is known to be at most :data:`MAX_CATEGORY_FACES` faces; else each person is listed.
* **Verification overlaps the settling.** A person that had an ambiguous send is verified
  by a well-formed listing taken once it is idle (no row queued, in flight or in doubt) and
  no sooner than ``max(settle, timeout)`` after its last ambiguous send: any image stored
  under several FaceIds is repaired then. A listing made to settle a row serves as the
  verification when it meets both conditions, so a lost answer costs its own row one settle
  period, not a second one at the end of the run.

Nothing here changes the invariants of the settle window: no row is sent again before its
deadline, and absence comes only from a well-formed listing taken after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import attrs

from ._exceptions import AuthenticationError, MtsFacesError, NotFoundError, RateLimiterError
from ._models import CustomPersons
from ._outcomes import Repair, RowOutcome
from .imagekey import ImageKeys
from .reconcile import (
    Doubt,
    Duplicate,
    Fatal,
    ListingTries,
    RetryBudget,
    ServiceCalls,
    Settler,
    find_duplicates,
    repair,
)

if TYPE_CHECKING:
    import random

logger = logging.getLogger("mts_faces.registrar")

PersonKey = tuple[str, str]

CATEGORY_LISTING_MIN = 3
"""Persons of one library due at once from which the library is listed whole."""
MAX_CATEGORY_FACES = 20_000
"""Largest library (faces, as far as the run knows) listed whole to settle rows: about
2 MB of answer; a larger one is listed person by person."""


@attrs.define(eq=False)
class Verification:
    """A person to list once more: ``due`` is when its last ambiguous send has settled."""

    category_id: str
    person_id: str
    due: float
    tries: ListingTries | None = None
    not_before: float = 0.0


@attrs.define
class PoolHooks:
    """What the pool needs of its run: ``finish`` (a row in doubt reached its outcome),
    ``resend`` (a row proved absent: back to its person's queue), ``idle`` (whether a person
    has no row queued, in flight or in doubt), ``category_faces`` (a library's size as far
    as the run knows, or None), ``kept_face`` (the FaceId to keep of a duplicate, or None),
    ``repaired`` (a repair made or reported) and ``fatal`` (the run must stop)."""

    finish: Callable[[Doubt, RowOutcome], Awaitable[None]]
    resend: Callable[[Doubt], None]
    idle: Callable[[PersonKey], bool]
    category_faces: Callable[[str], int | None]
    kept_face: Callable[[Duplicate], str | None]
    repaired: Callable[[Repair], None]
    fatal: Callable[[BaseException], None]


class SettlePool:
    """Rows in doubt and persons to verify, settled by one task (:meth:`run`).

    ``settler`` decides each row; ``calls`` makes the listings and repairs; ``budget`` bounds
    the listings tried for a verification; ``verify_after``: seconds after an ambiguous send
    before its person's verification (``max(settle, timeout)``); ``verify``/``repair``: as
    the registrar's options; ``coalesce``: seconds a due row may wait for others to share
    its listing; ``max_verifications``: persons remembered for verification (more are left
    to the end-of-run pass over the ledger).
    """

    def __init__(
        self,
        settler: Settler,
        calls: ServiceCalls,
        hooks: PoolHooks,
        *,
        budget: RetryBudget,
        image_keys: ImageKeys,
        verify_after: float,
        verify: bool,
        repair: bool,
        coalesce: float,
        rng: random.Random,
        stopping: Callable[[], bool],
        max_verifications: int = 10_000,
    ) -> None:
        self.settler = settler
        self.calls = calls
        self.hooks = hooks
        self.budget = budget
        self.image_keys = image_keys
        self.verify_after = verify_after
        self.verify = verify
        self.repair = repair
        self.coalesce = coalesce
        self.rng = rng
        self.stopping = stopping
        self.max_verifications = max_verifications
        self.clock = settler.clock
        self.doubts: dict[PersonKey, list[Doubt]] = {}
        self.verifications: dict[PersonKey, Verification] = {}
        self.verified: set[PersonKey] = set()
        """Persons verified during the run, or given up with a warning (the end-of-run pass
        skips them)."""
        self.overflow = False
        """Whether some ambiguous person was not remembered (see ``max_verifications``)."""
        self.listings = 0
        """Listings the pool made."""
        self._wake = asyncio.Event()
        self._closing = False

    # --- what the run hands in -----------------------------------------------------------------

    def add(self, doubt: Doubt) -> None:
        """Hold ``doubt`` until it is settled; its person is verified afterwards, no sooner
        than its deadline and ``verify_after`` past its send."""
        key = doubt.row.person_key
        self.doubts.setdefault(key, []).append(doubt)
        due = max(doubt.deadline, doubt.sent_at + self.verify_after)
        self.verify_after_send(doubt.row.category_id, doubt.row.person_id, due)
        self._wake.set()

    def verify_after_send(self, category_id: str, person_id: str, due: float) -> None:
        """A send of the person's had no usable answer: list it once more at ``due``."""
        if not self.verify:
            return
        key = (category_id.casefold(), person_id.casefold())
        found = self.verifications.get(key)
        if found is not None:
            found.due = max(found.due, due)
        elif len(self.verifications) < self.max_verifications:
            self.verified.discard(key)
            self.verifications[key] = Verification(category_id, person_id, due)
        else:
            self.overflow = True
        self._wake.set()

    def poke(self) -> None:
        """Something the pool waits for may have changed (a person went idle)."""
        self._wake.set()

    @property
    def busy(self) -> bool:
        """Whether rows are in doubt or persons wait for verification."""
        return bool(self.doubts or self.verifications)

    # --- the task ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Settle and verify until :meth:`close` is called and nothing is left."""
        while True:
            if self.stopping():
                await self._abandon_all()
                return
            now = self.clock()
            due, wake_at = self._due(now)
            if due:
                await self._list(due)
                continue
            if self._closing and not self.busy:
                return
            self._wake.clear()
            timeout = None if wake_at is None else max(0.0, wake_at - now)
            if timeout is None and self.busy:
                timeout = 1.0  # a person busy now will be idle later: look again
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def close(self) -> None:
        """No more rows will come: :meth:`run` ends once every doubt and verification is
        done (or the run stops)."""
        self._closing = True
        self._wake.set()

    # --- deciding what to list -----------------------------------------------------------------

    def _due(self, now: float) -> tuple[dict[str, dict[PersonKey, str]], float | None]:
        """Persons to list now, by category (category_id → person key → person_id), and when
        to look again otherwise."""
        due: dict[str, dict[PersonKey, str]] = {}
        wake_at: float | None = None

        def later(at: float) -> None:
            nonlocal wake_at
            wake_at = at if wake_at is None else min(wake_at, at)

        for key, doubts in self.doubts.items():
            # A doubt falls due at its deadline; waiting ``coalesce`` more lets neighbours share.
            ready = min(max(d.deadline + self.coalesce, d.not_before) for d in doubts)
            if ready <= now:
                row = doubts[0].row
                due.setdefault(row.category_id, {})[key] = row.person_id
            else:
                later(ready)
        for key, check in self.verifications.items():
            if key in self.doubts:
                continue
            ready = max(check.due + self.coalesce, check.not_before)
            if ready > now:
                later(ready)
            elif self.hooks.idle(key):
                due.setdefault(check.category_id, {})[key] = check.person_id
        return due, wake_at

    async def _list(self, due: dict[str, dict[PersonKey, str]]) -> None:
        """Make the listings ``due`` needs, side by side, and apply each."""
        jobs: list[Awaitable[None]] = []
        for category_id, persons in due.items():
            size = self.hooks.category_faces(category_id)
            whole = (
                len(persons) >= CATEGORY_LISTING_MIN
                and size is not None
                and size <= MAX_CATEGORY_FACES
            )
            if whole:
                jobs.append(self._listing(category_id, None, tuple(persons)))
            else:
                jobs.extend(
                    self._listing(category_id, person_id, (key,))
                    for key, person_id in persons.items()
                )
        await asyncio.gather(*jobs)

    async def _listing(
        self, category_id: str, person_id: str | None, persons: tuple[PersonKey, ...]
    ) -> None:
        taken_at = self.clock()
        self.listings += 1
        try:
            listing: CustomPersons | None = await self.calls.list(category_id, person_id)
        except NotFoundError:
            listing = None  # no such library or person: a well-formed "nothing"
        except (AuthenticationError, RateLimiterError) as exc:
            self.hooks.fatal(exc)
            return
        except MtsFacesError as exc:
            await self._failed(persons, exc)
            return
        if person_id is None:
            # A whole library answers every person of it the pool holds.
            category = category_id.casefold()
            persons = tuple(
                {*persons, *(k for k in (*self.doubts, *self.verifications) if k[0] == category)}
            )
        for key in persons:
            await self._apply(key, listing, taken_at)

    async def _apply(self, key: PersonKey, listing: CustomPersons | None, taken_at: float) -> None:
        """Decide the person's rows in doubt, then verify the person if it may be."""
        for doubt in list(self.doubts.get(key, ())):
            try:
                verdict = await self.settler.resolve(doubt, listing, taken_at)
            except Fatal as exc:
                self.hooks.fatal(exc.error)
                return
            if isinstance(verdict, RowOutcome):
                await self._done(doubt, verdict)
            elif verdict == "resend":
                self._drop(doubt)
                self.hooks.resend(doubt)
        check = self.verifications.get(key)
        if (
            check is not None
            and key not in self.doubts
            and taken_at >= check.due
            and self.hooks.idle(key)
        ):
            del self.verifications[key]
            self.verified.add(key)
            if listing is not None:
                await self._repair(find_duplicates(listing, self.image_keys, only=key))

    async def _repair(self, duplicates: Iterable[Duplicate]) -> None:
        found = list(duplicates)
        if found:
            for done in await repair(self.calls, found, self.hooks.kept_face, apply=self.repair):
                self.hooks.repaired(done)

    async def _failed(self, persons: tuple[PersonKey, ...], exc: MtsFacesError) -> None:
        """A listing failed: each row it was for counts it against its budget."""
        for key in persons:
            for doubt in list(self.doubts.get(key, ())):
                try:
                    ended = await self.settler.listing_failed(doubt, exc)
                except Fatal as fatal:
                    self.hooks.fatal(fatal.error)
                    return
                if ended is not None:
                    await self._done(doubt, ended)
            check = self.verifications.get(key)
            if check is not None and key not in self.doubts:
                check.tries = check.tries or ListingTries(self.budget)
                if check.tries.spent(exc) or self.stopping():
                    logger.warning(
                        "verify %s/%s: %d listings failed (last: %s); `mts-faces verify` "
                        "checks it later",
                        check.category_id,
                        check.person_id,
                        check.tries.tries,
                        exc,
                    )
                    del self.verifications[key]
                    self.verified.add(key)  # given up: the end-of-run pass does not retry
                else:
                    check.not_before = self.clock() + self.budget.delay(
                        check.tries.tries, exc, self.rng
                    )
        # Rows whose library's circuit opened meanwhile end now.
        for doubts in list(self.doubts.values()):
            for doubt in list(doubts):
                blocked = self.settler.blocked(doubt)
                if blocked is not None:
                    await self._done(
                        doubt, await self.settler.in_doubt(doubt.row, blocked, doubt.last_error)
                    )

    # --- endings -------------------------------------------------------------------------------

    def _drop(self, doubt: Doubt) -> None:
        key = doubt.row.person_key
        doubts = self.doubts.get(key)
        if doubts is not None:
            doubts.remove(doubt)
            if not doubts:
                del self.doubts[key]

    async def _done(self, doubt: Doubt, outcome: RowOutcome) -> None:
        self._drop(doubt)
        await self.hooks.finish(doubt, outcome)

    async def _abandon_all(self) -> None:
        for doubts in list(self.doubts.values()):
            for doubt in list(doubts):
                reason = self.settler.blocked(doubt) or "the run stopped while settling"
                await self._done(
                    doubt, await self.settler.in_doubt(doubt.row, reason, doubt.last_error)
                )
        self.verifications.clear()

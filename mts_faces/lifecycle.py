"""A library's life beyond ``register``: plan a job, export a library, make it match a manifest.

* :func:`plan` gives the decisions a registration would make, row by row, against the live
  library (and a ledger), without registering anything. The decision is the registrar's own
  (:func:`~mts_faces.scheduler.decide_admission`), so a plan's counts are what a following
  registration does.
* :func:`export_library` reads libraries back as manifest rows (registering them again
  registers nothing).
* :func:`plan_sync` and :func:`apply_sync` make a library match a manifest: faces are
  removed (``prune``) before any is registered, so a person at the cap whose manifest
  replaces some faces has room for the new ones; registrations go through the
  :class:`~mts_faces.registrar.Registrar` (and its ledger); persons are renamed with
  TagCustomPerson. Removals are recorded in the same ledger, so a sync stopped half way
  and run again removes and adds nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Literal

import attrs

from ._exceptions import NotFoundError
from ._models import CustomPersons
from .imagekey import DEFAULT_IMAGE_KEYS, ImageKeys
from .ledger import Ledger, LedgerReader, LedgerRow
from .manifest import BadRow, FaceRow, ManifestEntry
from .reconcile import RegistrarClient
from .scheduler import Person, decide_admission
from .shards import Shard

logger = logging.getLogger("mts_faces.lifecycle")

PlanKind = Literal[
    "register", "in_library", "in_ledger", "cap", "duplicate", "bad_row", "image_check"
]
PLAN_KINDS: tuple[PlanKind, ...] = (
    "register",
    "in_library",
    "in_ledger",
    "cap",
    "duplicate",
    "bad_row",
    "image_check",
)
"""Every decision of a plan: send it; already stored; the ledger holds it done (resumed or
reconciled); past the 10-face cap; a repeat of an earlier row; a row that cannot be used;
a row whose image failed its check (``--check-images``)."""

EXPORT_FIELDS = ("category_id", "person_id", "image_url", "person_name", "face_id")
"""The columns of an export, in order."""


@attrs.frozen
class PlannedRow:
    """One row's decision: ``row`` number, ``kind`` (one of :data:`PLAN_KINDS`), the row
    itself (None for a bad row), the FaceId it maps to when known, and why."""

    row: int
    kind: PlanKind
    face: FaceRow | None = None
    face_id: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (one line of ``mts-faces plan --output``)."""
        record: dict[str, Any] = {"row": self.row, "decision": self.kind}
        if self.face is not None:
            record.update(
                category_id=self.face.category_id,
                person_id=self.face.person_id,
                image_url=self.face.image_url,
            )
        if self.face_id is not None:
            record["face_id"] = self.face_id
        if self.reason is not None:
            record["reason"] = self.reason
        return record


@attrs.define
class Plan:
    """What a registration would do: ``counts`` by decision, ``listings`` (ListCustomPersons
    calls the plan made, as the registration makes them), ``first`` (the first ``keep``
    rows of each decision) and the quota (``qps``) the time is reckoned at."""

    qps: float
    keep: int = 5
    counts: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(PLAN_KINDS, 0))
    first: dict[str, list[PlannedRow]] = attrs.field(factory=dict)
    listings: int = 0

    @property
    def api_calls(self) -> int:
        """Calls a registration needs at best: one listing per library, one call per face."""
        return self.listings + self.counts["register"]

    @property
    def seconds_at_quota(self) -> float:
        """The least time those calls take at the quota."""
        return self.api_calls / self.qps

    @property
    def rows(self) -> int:
        """Rows planned."""
        return sum(self.counts.values())

    def add(self, planned: PlannedRow) -> None:
        """Count one row's decision."""
        self.counts[planned.kind] += 1
        kept = self.first.setdefault(planned.kind, [])
        if len(kept) < self.keep:
            kept.append(planned)


class LibraryState:
    """Per-person state of listed libraries, as the registrar keeps it (faces and places
    under the cap), for deciding rows without registering them."""

    def __init__(self, image_keys: ImageKeys = DEFAULT_IMAGE_KEYS) -> None:
        self.people: dict[tuple[str, str], Person] = {}
        self.listed: set[str] = set()
        self.keys = image_keys

    def load(self, listing: CustomPersons) -> None:
        """Take in a listing's faces (keyed by their URLs' image keys)."""
        for category, person, face in listing.iter_faces():
            self.person((category.category_id, person.person_id)).listed(
                self.keys.key(face.image_url), face.face_id
            )

    def person(self, ids: tuple[str, str]) -> Person:
        """The state of the person (category, person), created empty when new."""
        key = (ids[0].casefold(), ids[1].casefold())
        found = self.people.get(key)
        if found is None:
            found = self.people[key] = Person(key)
        return found

    def decide(self, row: FaceRow, prior: LedgerRow | None, check_existing: bool) -> PlannedRow:
        """The registrar's decision for ``row``; a row to register takes its place."""
        person = self.person((row.category_id, row.person_id))
        decision = decide_admission(person, row, prior, None, check_existing, self.keys)
        if decision.kind == "register":
            person.accept(row, self.keys)
            return PlannedRow(row.row, "register", row)
        if decision.kind in ("resumed", "reconciled"):
            assert decision.face_id is not None
            # As the registrar takes a row the ledger holds done.
            person.resume(row, decision.face_id, self.keys)
            return PlannedRow(row.row, "in_ledger", row, decision.face_id, decision.reason)
        kinds: dict[str, PlanKind] = {
            "in_library": "in_library",
            "cap": "cap",
            "duplicate": "duplicate",
        }
        return PlannedRow(row.row, kinds[decision.kind], row, decision.face_id, decision.reason)


async def list_library(client: RegistrarClient, category_id: str) -> CustomPersons:
    """One library's listing (an unknown library is an empty one)."""
    try:
        return await client.list_custom_persons(category_id)
    except NotFoundError:
        return CustomPersons(request_id="", categories=())


async def plan(
    client: RegistrarClient,
    rows: Iterable[ManifestEntry],
    *,
    ledger: str | None = None,
    check_existing: bool = True,
    keep: int = 5,
    on_row: Callable[[PlannedRow], None] | None = None,
    precheck: Callable[[FaceRow], str | None] | None = None,
    image_keys: ImageKeys = DEFAULT_IMAGE_KEYS,
) -> Plan:
    """The decisions ``register`` would make for ``rows``, against the live library (one
    listing per library met, unless ``check_existing=False``) and the ``ledger`` if given
    (read only: a run may hold it meanwhile). Registers and removes nothing. Rows are
    streamed; the state of every person met is kept (memory follows persons, not rows).
    ``on_row`` is called with every row's decision; ``keep``: rows of each decision kept in
    :attr:`Plan.first`; ``precheck``: as the registrar's (a reason skips the row);
    ``image_keys``: as the registrar's (rows and faces are compared by image key).
    Raises the client's errors when a library cannot be listed (the
    plan cannot be made) and :class:`~mts_faces.ledger.LedgerError` for a bad ledger.
    """
    result = Plan(qps=client.qps, keep=keep)
    state = LibraryState(image_keys)
    reader = LedgerReader(ledger, image_keys) if ledger is not None else None
    try:
        for entry in rows:
            skip = None
            if isinstance(entry, FaceRow) and precheck is not None:
                skip = precheck(entry)
            if isinstance(entry, BadRow):
                planned = PlannedRow(entry.row, "bad_row", reason=f"bad row: {entry}")
            elif skip is not None:
                planned = PlannedRow(entry.row, "image_check", entry, reason=skip)
            else:
                category = entry.category_id.casefold()
                if check_existing and category not in state.listed:
                    state.load(await list_library(client, entry.category_id))
                    state.listed.add(category)
                    result.listings += 1
                prior = (
                    reader.find(entry.category_id, entry.person_id, entry.identity(image_keys))
                    if reader is not None
                    else None
                )
                planned = state.decide(entry, prior, check_existing)
            result.add(planned)
            if on_row is not None:
                on_row(planned)
    finally:
        if reader is not None:
            reader.close()
    return result


# --- export -----------------------------------------------------------------------------------


async def export_library(
    client: RegistrarClient, categories: Iterable[str]
) -> AsyncIterator[dict[str, str]]:
    """Every face of the libraries ``categories`` as a manifest record (keys
    :data:`EXPORT_FIELDS`; ``person_name`` empty when the person has none)."""
    for category_id in categories:
        listing = await list_library(client, category_id)
        for category, person, face in listing.iter_faces():
            yield {
                "category_id": category.category_id,
                "person_id": person.person_id,
                "image_url": face.image_url,
                "person_name": person.person_name or "",
                "face_id": face.face_id,
            }


# --- sync -------------------------------------------------------------------------------------


@attrs.frozen
class Removal:
    """A face to unregister (``face_id`` ``ALL``: the whole person, whom the manifest does
    not name), with the image URL it held."""

    category_id: str
    person_id: str
    face_id: str
    image_url: str | None = None

    @property
    def key(self) -> str:
        """Its key in the ledger's removals."""
        return "\x1f".join((self.category_id.casefold(), self.person_id.casefold(), self.face_id))


@attrs.frozen
class Rename:
    """A person whose name the manifest changes."""

    category_id: str
    person_id: str
    old_name: str | None
    new_name: str


@attrs.define
class SyncPlan:
    """What :func:`apply_sync` will do: ``removals`` first, then the manifest's ``rows``
    through the registrar (``plan`` counts their decisions, reckoned after the removals),
    then ``renames``. ``bad`` and ``outside`` (rows of other libraries) are left out;
    ``to_register``: the rows the plan sends (what ``--check-images`` checks)."""

    categories: tuple[str, ...]
    prune: bool
    rows: list[FaceRow]
    removals: list[Removal]
    renames: list[Rename]
    plan: Plan
    bad: list[BadRow] = attrs.field(factory=list)
    outside: int = 0
    to_register: list[FaceRow] = attrs.field(factory=list)


async def plan_sync(
    client: RegistrarClient,
    entries: Iterable[ManifestEntry],
    categories: Iterable[str],
    *,
    prune: bool = False,
    keep: int = 5,
    shard: Shard | None = None,
    image_keys: ImageKeys = DEFAULT_IMAGE_KEYS,
) -> SyncPlan:
    """What making the libraries ``categories`` match ``entries`` takes (reads the manifest
    into memory and lists each library once; changes nothing). With ``shard``, only the
    persons of that shard are considered (``entries`` should hold that shard's rows): the
    other shards' persons are neither pruned nor renamed. Listed faces are matched to
    manifest rows by the image keys of their URLs (``image_keys``): a URL signed anew is
    the same face, neither pruned nor registered again."""
    wanted = tuple(dict.fromkeys(categories))
    folded = {c.casefold() for c in wanted}
    rows: list[FaceRow] = []
    bad: list[BadRow] = []
    outside = 0
    for entry in entries:
        if isinstance(entry, BadRow):
            bad.append(entry)
        elif entry.category_id.casefold() in folded:
            rows.append(entry)
        else:
            outside += 1
    in_manifest = {(r.person_key, image_keys.key(r.image_url)) for r in rows}
    names: dict[tuple[str, str], str] = {}
    for r in rows:
        if r.person_name:
            names.setdefault(r.person_key, r.person_name)
    persons = {r.person_key for r in rows}

    removals: list[Removal] = []
    renames: list[Rename] = []
    state = LibraryState(image_keys)
    listings = []
    for category_id in wanted:
        listing = await list_library(client, category_id)
        listings.append(listing)
        for category in listing.categories:
            for person in category.persons:
                key = (category.category_id.casefold(), person.person_id.casefold())
                if shard is not None and not shard.holds(category.category_id, person.person_id):
                    continue
                if key not in persons:
                    if prune:
                        removals.append(Removal(category.category_id, person.person_id, "ALL"))
                    continue
                if prune:
                    removals.extend(
                        Removal(category.category_id, person.person_id, f.face_id, f.image_url)
                        for f in person.faces
                        if (key, image_keys.key(f.image_url)) not in in_manifest
                    )
                new_name = names.get(key)
                if new_name is not None and new_name != person.person_name:
                    renames.append(
                        Rename(category.category_id, person.person_id, person.person_name, new_name)
                    )
    gone = {(r.category_id.casefold(), r.person_id.casefold(), r.face_id) for r in removals}
    result = Plan(qps=client.qps, keep=keep, listings=len(wanted))
    for listing in listings:
        for category in listing.categories:
            for person in category.persons:
                ids = (category.category_id.casefold(), person.person_id.casefold())
                if (*ids, "ALL") in gone:
                    continue
                for face in person.faces:
                    if (*ids, face.face_id) not in gone:
                        state.person(ids).listed(image_keys.key(face.image_url), face.face_id)
    to_register: list[FaceRow] = []
    for r in rows:
        planned = state.decide(r, None, True)
        result.add(planned)
        if planned.kind == "register":
            to_register.append(r)
    for b in bad:
        result.add(PlannedRow(b.row, "bad_row", reason=f"bad row: {b}"))
    return SyncPlan(wanted, prune, rows, removals, renames, result, bad, outside, to_register)


@attrs.define
class RemovalReport:
    """What the removals of a sync did: ``removed``, ``already_gone`` (the service no
    longer had it: an earlier, interrupted sync removed it), ``failed`` (with reasons)."""

    removed: int = 0
    already_gone: int = 0
    failed: list[str] = attrs.field(factory=list)


async def apply_removals(
    client: RegistrarClient, removals: Iterable[Removal], ledger: Ledger | None
) -> RemovalReport:
    """Unregister each removal, one at a time in the limiter's bulk lane, each recorded in
    ``ledger`` (durable before it is sent, finished after)."""
    report = RemovalReport()
    for removal in removals:
        if ledger is not None:
            await ledger.removal_started(
                removal.key,
                removal.category_id,
                removal.person_id,
                removal.face_id,
                removal.image_url,
            )
        try:
            await client.unregister_custom_face(
                removal.category_id, removal.person_id, removal.face_id, priority="bulk"
            )
        except NotFoundError:
            report.already_gone += 1
        except Exception as exc:
            reason = f"{removal.category_id}/{removal.person_id} {removal.face_id}: {exc}"
            report.failed.append(reason)
            if ledger is not None:
                await ledger.removal_finished(removal.key, False, str(exc))
            continue
        else:
            report.removed += 1
        if ledger is not None:
            await ledger.removal_finished(removal.key, True)
    if ledger is not None:
        await ledger.flush()
    return report


async def apply_renames(
    client: RegistrarClient, renames: Iterable[Rename], tag: Callable[..., Any]
) -> tuple[int, list[str]]:
    """Rename each person with TagCustomPerson (``tag`` is the client's
    ``tag_custom_person``); returns (renamed, failures)."""
    done = 0
    failures: list[str] = []
    for rename in renames:
        try:
            await tag(rename.category_id, rename.person_id, person_name=rename.new_name)
            done += 1
        except Exception as exc:
            failures.append(f"{rename.category_id}/{rename.person_id}: {exc}")
    return done, failures


def describe_plan(result: Plan) -> Iterator[str]:
    """Lines describing a plan: counts, calls, time at the quota, first rows of each kind."""
    c = result.counts
    yield (
        f"rows {result.rows:,}: register {c['register']:,}, already in library "
        f"{c['in_library']:,}, done in ledger {c['in_ledger']:,}, over cap {c['cap']:,}, "
        f"duplicate {c['duplicate']:,}, bad row {c['bad_row']:,}"
        + (f", image check failed {c['image_check']:,}" if c["image_check"] else "")
    )
    yield (
        f"API calls needed: {result.api_calls:,} ({result.listings:,} listings + "
        f"{c['register']:,} registrations), at least {result.seconds_at_quota:.1f} s at "
        f"{result.qps:g} calls/s"
    )
    for kind in PLAN_KINDS:
        for planned in result.first.get(kind, []):
            face = planned.face
            what = f"{face.category_id}/{face.person_id} {face.image_url}" if face else ""
            why = f" ({planned.reason})" if planned.reason else ""
            yield f"  {kind}: row {planned.row} {what}{why}".rstrip()

"""Bulk registration: many (category, person, image URL) rows, each registered exactly once.

``Registrar`` is the front; the work is split along its seams:

* :mod:`mts_faces.scheduler` streams rows, applies the 10-face cap and duplicates, and runs
  one task per active person (one call in flight per person);
* :mod:`mts_faces.reconcile` takes a row through register → ambiguous → settle → list →
  decide, owns the retry budget and the listing circuit, and verifies and repairs;
* :mod:`mts_faces.ledger` is the SQLite ledger that makes a run resumable and lockable.

The guarantee, and what it rests on, is stated in the README ("Reliability").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

from ._outcomes import (
    MAX_FAILURES_KEPT,
    NOT_ATTEMPTED,
    Progress,
    RegistrationReport,
    Repair,
    RowOutcome,
    Status,
)
from .imagekey import DEFAULT_IMAGE_KEYS, ImageKeys
from .ledger import Ledger, LedgerIdentity
from .manifest import FaceRow
from .reconcile import RegistrarClient, RetryBudget, default_settle
from .scheduler import RowInput, Scheduler, SchedulerOptions

logger = logging.getLogger("mts_faces.registrar")

__all__ = [
    "MAX_FAILURES_KEPT",
    "NOT_ATTEMPTED",
    "Progress",
    "Registrar",
    "RegistrarClient",
    "RegistrationReport",
    "Repair",
    "RetryBudget",
    "RowInput",
    "RowOutcome",
    "Status",
    "default_settle",
]


class Registrar:
    """Registers many faces through one client, each row exactly once.

    A Registrar runs once: a second call of :meth:`run` (concurrent or not) raises
    ``RuntimeError``; make a new Registrar for another run. Every parameter:

    ``client``: an :class:`~mts_faces.MtsFaceClient`, or anything with the small
    :class:`~mts_faces.reconcile.RegistrarClient` interface.
    ``ledger``: path of the SQLite ledger (created when missing; None: none, the run cannot
    be resumed). It is locked for the run: a second process (or Registrar) on the same
    ledger refuses at once with :class:`~mts_faces.ledger.LedgerLockedError`.
    ``rebind_ledger``: accept a ledger written for another endpoint or AccessKeyId.
    ``settle``: seconds after an ambiguous registration was sent before it may be sent again
    (default :func:`default_settle` of the client's timeout; shorter than the timeout is
    allowed but logs a warning: duplicates may then remain for ``verify --repair``). Rows an
    earlier run left in flight settle with at least the default, and the end-of-run
    verification lists a person no sooner than ``max(settle, timeout)`` after its last
    ambiguous send.
    ``concurrency``: calls in flight (default: sized from the quota and the observed latency);
    at most the client's ``max_connections`` either way, since a call beyond them could only
    queue for a connection (and the read-ahead buffer, sized from it, would grow for nothing).
    ``check_existing``: list each library first (the cap counts its faces, rows already
    stored are skipped, the ledger's rows are checked against it); False trusts the ledger
    and counts the cap over this input only.
    ``progress`` (called with a :class:`Progress` after each outcome) and ``total`` (rows
    expected, for its ETA). ``collect_faces``: keep FaceIds by person in the report.
    ``buffer_size``: rows admitted and waiting at most (default from the concurrency).
    ``max_attempts``, ``listing_attempts``, ``retry_backoff``, ``circuit_threshold``: the
    row's one retry budget and the listing circuit
    (:class:`~mts_faces.reconcile.RetryBudget`); the client is called with
    ``max_retries=0``. ``drain_timeout``: seconds calls in flight get to finish when the
    consumer leaves :meth:`run` early. ``max_idle_persons``: persons kept in memory when
    idle. ``default_category``: for mapping rows without one. ``verify`` and ``repair``:
    list persons that had an ambiguous outcome once more at the end and unregister duplicate
    FaceIds (``repair=False``: report them only). ``clock``: wall-clock seconds (the
    ledger's time base). ``precheck``: called with each valid row before anything else;
    a reason it returns skips the row unsent (e.g. an image check's failure).
    ``image_keys``: how an image's identity is drawn from its URL when a row has no explicit
    ``image_key`` (default :class:`~mts_faces.imagekey.ImageKeys`: the URL less the signing
    parameters of OSS and CDN URLs); rows, listed faces and the ledger are compared by it.
    """

    def __init__(
        self,
        client: RegistrarClient,
        *,
        ledger: str | os.PathLike[str] | None = None,
        rebind_ledger: bool = False,
        settle: float | None = None,
        concurrency: int | None = None,
        check_existing: bool = True,
        progress: Callable[[Progress], None] | None = None,
        total: int | None = None,
        collect_faces: bool = True,
        buffer_size: int | None = None,
        max_attempts: int = 6,
        listing_attempts: int = 5,
        retry_backoff: float = 0.5,
        circuit_threshold: int = 10,
        drain_timeout: float = 30.0,
        max_idle_persons: int = 10_000,
        default_category: str | None = None,
        verify: bool = True,
        repair: bool = True,
        clock: Callable[[], float] = time.time,
        precheck: Callable[[FaceRow], str | None] | None = None,
        image_keys: ImageKeys | None = None,
    ) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if settle is not None and settle < 0:
            raise ValueError(f"settle must be >= 0, got {settle}")
        self.client = client
        self.ledger_path = Path(ledger) if ledger is not None else None
        self.rebind_ledger = rebind_ledger
        self.settle = default_settle(client.timeout) if settle is None else settle
        if self.settle < client.timeout:
            logger.warning(
                "settle %.3gs is shorter than the request timeout %.3gs: a lost answer may be "
                "sent again before its first request could commit, so duplicates may remain; "
                "`mts-faces verify --repair` removes them",
                self.settle,
                client.timeout,
            )
        self.budget = RetryBudget(
            max_attempts, listing_attempts, retry_backoff, circuit_threshold=circuit_threshold
        )
        self.drain_timeout = drain_timeout
        if concurrency is not None:
            concurrency = min(concurrency, client.max_connections)
        self.concurrency = concurrency
        """The fixed bound on calls in flight, capped by the pool; None: sized from latency."""
        workers = concurrency or client.max_connections
        self._options = SchedulerOptions(
            concurrency=concurrency,
            check_existing=check_existing,
            collect_faces=collect_faces,
            buffer_size=buffer_size or max(1024, 16 * workers),
            settle=self.settle,
            budget=self.budget,
            drain_timeout=drain_timeout,
            max_idle_persons=max_idle_persons,
            default_category=default_category,
            verify=verify,
            repair=repair,
            total=total,
            progress=progress,
            clock=clock,
            precheck=precheck,
            image_keys=image_keys or DEFAULT_IMAGE_KEYS,
        )
        self.image_keys = self._options.image_keys
        """The image-key rule of the run."""
        self._clock = clock
        self.report = RegistrationReport(library_checked=check_existing)
        self._stop = asyncio.Event()
        self._started = False

    def stop(self) -> None:
        """Stop registering at once: nothing more is sent; calls in flight finish; rows
        waiting end ``not attempted`` and rows being settled end in doubt (the ledger keeps
        them for a rerun). :meth:`run` then ends normally, with ``report.stopped`` set."""
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

        Leaving early (``break``, ``contextlib.aclosing``, cancelling the consumer) works
        like :meth:`stop`: registering stops at once, calls in flight get
        ``drain_timeout`` seconds, and ``rows`` is closed (an async generator's ``finally``
        runs). Raises the ledger's errors (locked, other identity, unreadable, disk full),
        :class:`~mts_faces.AuthenticationError` when the service refuses the credentials,
        and an unexpected error of a registration, after the rows read are accounted for.
        """
        if self._started:
            raise RuntimeError("this Registrar has run already; make a new one for another run")
        self._started = True
        started = time.monotonic()
        calls_before = self.client.attempts
        ledger: Ledger | None = None
        if self.ledger_path is not None:
            credentials = await self.client.credentials.get_credentials()
            identity = LedgerIdentity(
                urlsplit(self.client.endpoint).netloc, credentials.access_key_id
            )
            from . import __version__

            ledger = Ledger(
                self.ledger_path,
                identity,
                image_keys=self.image_keys,
                rebind=self.rebind_ledger,
                clock=self._clock,
                version=__version__,
            )
            await asyncio.to_thread(ledger.open)
            ledger.start_heartbeat()
            self.report.ledger = str(self.ledger_path)
        scheduler = Scheduler(self.client, ledger, self._options, self.report, self._stop)
        supervisor = asyncio.create_task(scheduler.supervise(rows))
        try:
            async for outcome in scheduler.outcomes_until_done():
                yield outcome
            await supervisor  # re-raises a fatal error
        finally:
            if not supervisor.done():
                # The consumer went away (break, aclose, cancel): stop and drain.
                self.stop()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(scheduler.drain(supervisor), self.drain_timeout)
                if not supervisor.done():
                    supervisor.cancel()
                    with contextlib.suppress(BaseException):
                        await supervisor
            if ledger is not None:
                await ledger.aclose()
            self.report.elapsed = time.monotonic() - started
            self.report.calls = self.client.attempts - calls_before
            self.report.stopped = self._stop.is_set()

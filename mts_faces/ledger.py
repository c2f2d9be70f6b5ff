"""The ledger: a SQLite file (WAL) that makes a bulk registration resumable and safe to rerun.

What it holds (``sqlite3 ledger.db`` reads it; the README documents the tables):

* ``identity``: the endpoint host and AccessKeyId (never the secret) the ledger belongs to,
  and its schema version. A run against another endpoint or account refuses unless told.
* ``lock``: the process that holds the ledger (host, PID, since, last heartbeat). A second
  process refuses at once with a message naming it; the lock of a dead process, or of one
  whose heartbeat is older than ``STALE_HEARTBEAT`` (its PID may have been reused), is taken
  over.
* ``runs``: one line per run (start, end, host, PID, version).
* ``categories``: the libraries the ledger has rows for.
* ``rows``: one line per face (category, person, image URL), indexed by its key and by
  person: its state (``started``, ``ambiguous``, ``registered``, ``failed``), FaceId,
  RequestId, when its last registration was sent (``started_at``), attempts and reason.

Writes are queued and committed by one background thread, one transaction (one fsync) per
batch: every write made during one turn of the event loop shares a commit, and the event
loop never waits on the disk. :meth:`Ledger.start` returns once the row's start is durable;
the outcome writes (registered, ambiguous, failed) are committed with the next batch without
being waited for: a crash before that commit leaves the row ``started``, which a rerun
settles against the library, so nothing is lost or sent twice. A failed commit fails every
later write.
Reads are by key or by person on a second connection (WAL lets them run beside the writer),
so resuming a run of any size reads no more than the rows it meets.

An old JSON Lines journal (mts-faces 0.1) is refused with a clear message, not imported:
its registered rows are found in the library by the listing every run makes, and the rows
it left in flight are what ``mts-faces verify --repair`` exists for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import attrs

from ._exceptions import MtsFacesError
from .imagekey import DEFAULT_IMAGE_KEYS, ImageKeys

SCHEMA_VERSION = 2
"""Version 2 keys rows by image key (:mod:`mts_faces.imagekey`), not raw URL; a version 1
ledger is migrated in place when opened for a run."""
HEARTBEAT_EVERY = 10.0
"""Seconds between refreshes of the lock's heartbeat while a run holds the ledger."""
STALE_HEARTBEAT = 12 * HEARTBEAT_EVERY
"""Seconds without a heartbeat (12 × ``HEARTBEAT_EVERY``) after which a lock counts as
abandoned: always for another host's holder, and on this host even when a process with the
holder's PID is alive (the PID may have been reused by an unrelated process)."""
SQLITE_MAGIC = b"SQLite format 3\x00"

RowState = Literal["started", "ambiguous", "registered", "failed"]

_ROWS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    key TEXT PRIMARY KEY,
    person TEXT NOT NULL,
    category_id TEXT NOT NULL,
    person_id TEXT NOT NULL,
    image_url TEXT NOT NULL,
    row INTEGER NOT NULL,
    state TEXT NOT NULL,
    face_id TEXT,
    request_id TEXT,
    started_at REAL,
    updated_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    was_ambiguous INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    run_id INTEGER
) WITHOUT ROWID;
"""
_ROWS_INDEXES = """
CREATE INDEX IF NOT EXISTS rows_by_person ON rows (person);
CREATE INDEX IF NOT EXISTS rows_ambiguous ON rows (run_id) WHERE was_ambiguous = 1;
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identity (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS lock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    since REAL NOT NULL,
    heartbeat REAL NOT NULL,
    token TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS categories (
    category TEXT PRIMARY KEY,
    category_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS removals (
    key TEXT PRIMARY KEY,
    category_id TEXT NOT NULL,
    person_id TEXT NOT NULL,
    face_id TEXT NOT NULL,
    image_url TEXT,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL,
    reason TEXT,
    run_id INTEGER
) WITHOUT ROWID;
"""


class LedgerError(MtsFacesError):
    """The ledger cannot be opened, read or written (unreadable file, disk full, ...)."""


class LedgerLockedError(LedgerError):
    """Another live process holds the ledger."""

    def __init__(self, path: str, host: str, pid: int, since: float) -> None:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
        super().__init__(
            f"ledger {path} is in use by PID {pid} on {host} since {when}; wait for that run "
            "to end (or stop it) before starting another on the same ledger"
        )
        self.host = host
        self.pid = pid
        self.since = since


class LedgerIdentityError(LedgerError):
    """The ledger was written for another endpoint or AccessKeyId."""


@attrs.frozen
class LedgerIdentity:
    """Which service and account a ledger's rows belong to (no secret, ever)."""

    endpoint_host: str
    access_key_id: str


@attrs.frozen
class LedgerRow:
    """One face as the ledger records it."""

    key: str
    category_id: str
    person_id: str
    image_url: str
    row: int
    state: RowState
    face_id: str | None
    request_id: str | None
    started_at: float | None
    attempts: int
    was_ambiguous: bool
    reason: str | None

    def identity(self, keys: ImageKeys = DEFAULT_IMAGE_KEYS) -> str:
        """The image's identity (see :meth:`~mts_faces.manifest.FaceRow.identity`): the
        explicit key the row was recorded under, else the key of the URL last sent."""
        image = self.key.split("\x1f", 2)[-1]
        return image if image.startswith("key:") else keys.key(self.image_url)


_ROW_COLUMNS = (
    "key, category_id, person_id, image_url, row, state, face_id, request_id, started_at, "
    "attempts, was_ambiguous, reason"
)


def _to_row(values: tuple[Any, ...]) -> LedgerRow:
    (key, category_id, person_id, image_url, row, state, face_id, request_id) = values[:8]
    started_at, attempts, was_ambiguous, reason = values[8:]
    return LedgerRow(
        key=key,
        category_id=category_id,
        person_id=person_id,
        image_url=image_url,
        row=row,
        state=state,
        face_id=face_id,
        request_id=request_id,
        started_at=started_at,
        attempts=attempts,
        was_ambiguous=bool(was_ambiguous),
        reason=reason,
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _check_not_journal(path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc.strerror or exc}") from None
    if not head or head == SQLITE_MAGIC:
        return
    if head.lstrip().startswith(b"{"):
        raise LedgerError(
            f"{path} is a JSON Lines journal of mts-faces 0.1, not a ledger; it is not "
            "imported. Start a new ledger (another --ledger path): rows already registered "
            "are found in the library and skipped, and `mts-faces verify --repair` removes "
            "any duplicate the old run's lost answers left"
        )
    raise LedgerError(f"{path} is not an mts-faces ledger (not a SQLite database)")


# Ledgers this process holds (resolved paths): a second Ledger on one of them refuses.
_HELD: set[str] = set()

# A write: SQL and its parameters; they are applied in order, a batch per transaction.
_Write = tuple[str, tuple[Any, ...]]


class Ledger:
    """An open, locked ledger. Open with :meth:`open`; close with :meth:`aclose`.

    ``path``: the SQLite file (created when missing). ``identity``: the endpoint and account
    the run registers with; a ledger written for another refuses unless ``rebind=True``
    (which records the new identity). ``clock``: wall-clock seconds (row start times must
    mean the same across processes). ``synchronous``: SQLite's ``synchronous`` pragma;
    ``FULL`` (default) makes every commit survive a power cut, ``NORMAL`` a process crash.
    ``image_keys``: how rows are keyed by image (:class:`~mts_faces.imagekey.ImageKeys`); a
    ledger written under another rule (or by a version keying raw URLs) is re-keyed in place
    when opened, rows that turn out to be one face merged (the one in flight kept first, then
    the registered one).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        identity: LedgerIdentity,
        *,
        image_keys: ImageKeys = DEFAULT_IMAGE_KEYS,
        rebind: bool = False,
        clock: Callable[[], float] = time.time,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        version: str = "",
    ) -> None:
        self.path = Path(path)
        self.identity = identity
        self.image_keys = image_keys
        self.clock = clock
        self._rebind = rebind
        self._synchronous = synchronous
        self._version = version
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._token = os.urandom(8).hex()
        self.run_id = 0
        self.host = socket.gethostname()
        self.pid = os.getpid()
        # Group commit: writes of one event-loop turn go to the writer thread as one batch.
        self._pending: list[_Write] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flush_scheduled = False
        self._queue: list[tuple[list[_Write], list[asyncio.Future[None]]]] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failed: LedgerError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_heartbeat = 0.0
        self._key = str(self.path.resolve())
        self._holding = False
        self.previous_seen: float | None = None
        """When the process that held the ledger before this one was last known alive (its
        last heartbeat plus ``HEARTBEAT_EVERY`` when its lock was taken over, else when its
        run finished); None for a new ledger. A row it left ``started`` (no answer recorded)
        may have been sent up to then, so its settle period counts from then at the earliest."""
        self._heartbeat: asyncio.Task[None] | None = None

    # --- opening and closing -------------------------------------------------------------------

    def open(self) -> Ledger:
        """Create or open the file, check its identity, take the lock and record the run.

        Raises :class:`LedgerLockedError`, :class:`LedgerIdentityError` or
        :class:`LedgerError`; runs synchronously (call it before the event loop is busy).
        """
        _check_not_journal(self.path)
        try:
            self._writer = self._connect()
            self._writer.executescript(_SCHEMA + _ROWS_TABLE.format(name="rows") + _ROWS_INDEXES)
            self._take_lock()
            self._reader = self._connect()
        except sqlite3.Error as exc:
            self._close_connections()
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from None
        except LedgerError:
            self._close_connections()
            raise
        self._thread = threading.Thread(target=self._write_loop, name="mts-faces-ledger")
        self._thread.daemon = True
        self._thread.start()
        return self

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={self._synchronous}")
        return connection

    def _take_lock(self) -> None:
        db = self._writer
        assert db is not None
        now = self.clock()
        db.execute("BEGIN IMMEDIATE")
        try:
            held = db.execute(
                "SELECT host, pid, since, heartbeat FROM lock WHERE id = 1"
            ).fetchone()
            if held is not None:
                host, pid, since, heartbeat = held
                if host == self.host and pid == self.pid:
                    alive = self._key in _HELD  # another Ledger of this process holds it
                elif host == self.host:
                    # A live PID with a stale heartbeat is not the holder: PIDs are reused.
                    alive = _pid_alive(pid) and now - heartbeat < STALE_HEARTBEAT
                else:
                    alive = now - heartbeat < STALE_HEARTBEAT
                if alive:
                    raise LedgerLockedError(str(self.path), host, pid, since)
            self._check_identity(db)
            finished = db.execute("SELECT MAX(finished_at) FROM runs").fetchone()
            seen = [float(finished[0])] if finished and finished[0] is not None else []
            if held is not None:
                seen.append(min(now, float(held[3]) + HEARTBEAT_EVERY))
            self.previous_seen = max(seen) if seen else None
            db.execute(
                "INSERT OR REPLACE INTO lock (id, host, pid, since, heartbeat, token) "
                "VALUES (1, ?, ?, ?, ?, ?)",
                (self.host, self.pid, now, now, self._token),
            )
            cursor = db.execute(
                "INSERT INTO runs (started_at, host, pid, version) VALUES (?, ?, ?, ?)",
                (now, self.host, self.pid, self._version),
            )
            self.run_id = int(cursor.lastrowid or 0)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        _HELD.add(self._key)
        self._holding = True
        self._last_heartbeat = now

    def _check_identity(self, db: sqlite3.Connection) -> None:
        stored = dict(db.execute("SELECT name, value FROM identity").fetchall())
        wanted = {
            "schema_version": str(SCHEMA_VERSION),
            "endpoint_host": self.identity.endpoint_host,
            "access_key_id": self.identity.access_key_id,
            "image_key_rule": self.image_keys.rule,
        }
        version = stored.get("schema_version", wanted["schema_version"])
        if version not in ("1", wanted["schema_version"]):
            raise LedgerError(
                f"ledger {self.path} has schema version {version}; this version of mts-faces "
                f"reads versions 1 to {SCHEMA_VERSION}"
            )
        for name in ("endpoint_host", "access_key_id"):
            if name in stored and stored[name] != wanted[name] and not self._rebind:
                label = "endpoint" if name == "endpoint_host" else "AccessKeyId"
                raise LedgerIdentityError(
                    f"ledger {self.path} belongs to {label} {stored[name]!r}, not "
                    f"{wanted[name]!r}; use another ledger, or rebind it explicitly "
                    "(its rows are then checked against this account's library)"
                )
        if stored and stored.get("image_key_rule") != wanted["image_key_rule"]:
            # Version 1 keyed raw URLs; a later one may have had another rule.
            _rekey(db, self.image_keys)
        db.executemany(
            "INSERT OR REPLACE INTO identity (name, value) VALUES (?, ?)", wanted.items()
        )

    def start_heartbeat(self) -> None:
        """Refresh the lock's heartbeat every ``HEARTBEAT_EVERY`` seconds while the run
        lives, also when it writes nothing (a long settle): another host then never takes a
        live run's lock for an abandoned one. Call from the event loop; ``aclose`` stops it."""
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            if self._failed is not None or self._thread is None:
                return
            now = self.clock()
            self._last_heartbeat = now
            self._queue_write(
                "UPDATE lock SET heartbeat = ? WHERE id = 1 AND token = ?", (now, self._token)
            )

    async def aclose(self) -> None:
        """Commit what is queued, mark the run finished, release the lock and close."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self._thread is None:
            return
        if self._pending:
            self._submit()
        end = (
            "UPDATE runs SET finished_at = ? WHERE id = ?",
            (self.clock(), self.run_id),
        )
        unlock = ("DELETE FROM lock WHERE id = 1 AND token = ?", (self._token,))
        with self._cv:
            self._queue.append(([end, unlock], []))
            self._closed = True
            self._cv.notify()
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        self._close_connections()

    def close_sync(self) -> None:
        """Like :meth:`aclose`, for code without an event loop (tests, the CLI's error path)."""
        if self._thread is not None:
            with self._cv:
                self._closed = True
                self._cv.notify()
            self._thread.join()
            self._thread = None
        if self._writer is not None:
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("DELETE FROM lock WHERE id = 1 AND token = ?", (self._token,))
        self._close_connections()

    def _close_connections(self) -> None:
        if self._holding:
            _HELD.discard(self._key)
            self._holding = False
        for connection in (self._reader, self._writer):
            if connection is not None:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()
        self._reader = self._writer = None

    # --- reads (by key or person, on the reader connection) ------------------------------------

    def get(self, key: str) -> LedgerRow | None:
        """The row recorded under ``key``, or None."""
        found = self._read(f"SELECT {_ROW_COLUMNS} FROM rows WHERE key = ?", (key,))
        return _to_row(found[0]) if found else None

    def person_rows(self, category_id: str, person_id: str, limit: int = 1000) -> list[LedgerRow]:
        """Rows of one person (at most ``limit``; the service allows 10 faces a person)."""
        person = _person_key(category_id, person_id)
        found = self._read(
            f"SELECT {_ROW_COLUMNS} FROM rows WHERE person = ? LIMIT ?", (person, limit)
        )
        return [_to_row(values) for values in found]

    def ambiguous_persons(self, run_id: int | None = None) -> Iterator[tuple[str, str, float]]:
        """(category, person, latest start) of persons with an ambiguous row in this run,
        streamed from the index."""
        assert self._reader is not None
        try:
            cursor = self._reader.execute(
                "SELECT category_id, person_id, MAX(started_at) FROM rows "
                "WHERE run_id = ? AND was_ambiguous = 1 GROUP BY person",
                (self.run_id if run_id is None else run_id,),
            )
            for category_id, person_id, started_at in cursor:
                yield category_id, person_id, float(started_at or 0.0)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read ledger {self.path}: {exc}") from None

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self._failed is not None:
            raise self._failed
        assert self._reader is not None, "the ledger is not open"
        try:
            return self._reader.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read ledger {self.path}: {exc}") from None

    # --- writes (group commit) -----------------------------------------------------------------

    async def start(self, key: str, row: int, category_id: str, person_id: str, url: str) -> float:
        """Record that ``key`` is about to be sent; returns its start time once durable."""
        now = self.clock()
        self._queue_write(
            "INSERT INTO rows (key, person, category_id, person_id, image_url, row, state, "
            "started_at, updated_at, attempts, run_id) VALUES (?, ?, ?, ?, ?, ?, 'started', ?, "
            "?, 1, ?) ON CONFLICT (key) DO UPDATE SET state = 'started', started_at = "
            "excluded.started_at, updated_at = excluded.updated_at, attempts = attempts + 1, "
            "row = excluded.row, run_id = excluded.run_id, reason = NULL, "
            "image_url = excluded.image_url",
            (
                key,
                _person_key(category_id, person_id),
                category_id,
                person_id,
                url,
                row,
                now,
                now,
                self.run_id,
            ),
        )
        self._queue_write(
            "INSERT OR IGNORE INTO categories (category, category_id) VALUES (?, ?)",
            (category_id.casefold(), category_id),
        )
        await self._durable()
        return now

    async def flush(self) -> None:
        """Wait until every write made so far is committed."""
        self._queue_write("SELECT 1", ())
        await self._durable()

    async def ambiguous(self, key: str, reason: str, sent_by: float | None = None) -> None:
        """The row was sent and no usable answer came: it settles before any resend.

        ``sent_by``: a time at or after the request actually left (it may have waited for the
        rate limiter after its start was recorded); ``started_at`` moves up to it, so a rerun
        counts the settle period from it.
        """
        self._queue_write(
            "UPDATE rows SET state = 'ambiguous', was_ambiguous = 1, reason = ?, "
            "updated_at = ?, run_id = ?, started_at = MAX(COALESCE(started_at, 0), ?) "
            "WHERE key = ?",
            (reason, self.clock(), self.run_id, sent_by or 0.0, key),
        )

    async def registered(
        self,
        key: str,
        row: int,
        category_id: str,
        person_id: str,
        url: str,
        face_id: str,
        request_id: str | None,
        reason: str | None = None,
    ) -> None:
        """The row's face is stored as ``face_id``."""
        now = self.clock()
        self._queue_write(
            "INSERT INTO rows (key, person, category_id, person_id, image_url, row, state, "
            "face_id, request_id, updated_at, reason, run_id) VALUES (?, ?, ?, ?, ?, ?, "
            "'registered', ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET state = 'registered', "
            "face_id = excluded.face_id, request_id = excluded.request_id, updated_at = "
            "excluded.updated_at, reason = excluded.reason, row = excluded.row, "
            "image_url = excluded.image_url",
            (
                key,
                _person_key(category_id, person_id),
                category_id,
                person_id,
                url,
                row,
                face_id,
                request_id,
                now,
                reason,
                self.run_id,
            ),
        )

    async def failed(self, key: str, reason: str) -> None:
        """The row failed for certain (nothing stored); a rerun tries it again."""
        self._queue_write(
            "UPDATE rows SET state = 'failed', reason = ?, updated_at = ? WHERE key = ?",
            (reason, self.clock(), key),
        )

    async def forget_face(self, key: str, reason: str) -> None:
        """A registered row whose face is gone from the library: it is registered again."""
        self._queue_write(
            "UPDATE rows SET state = 'failed', face_id = NULL, reason = ?, updated_at = ? "
            "WHERE key = ? AND state = 'registered'",
            (reason, self.clock(), key),
        )

    # --- removals (mts-faces sync --prune) ------------------------------------------------------

    def removal(self, key: str) -> str | None:
        """The state (``started``, ``removed``, ``failed``) of the removal ``key``, or None."""
        found = self._read("SELECT state FROM removals WHERE key = ?", (key,))
        return str(found[0][0]) if found else None

    async def removal_started(
        self, key: str, category_id: str, person_id: str, face_id: str, image_url: str | None
    ) -> None:
        """Record that the removal ``key`` is about to be sent; returns once durable."""
        self._queue_write(
            "INSERT INTO removals (key, category_id, person_id, face_id, image_url, state, "
            "updated_at, run_id) VALUES (?, ?, ?, ?, ?, 'started', ?, ?) ON CONFLICT (key) DO "
            "UPDATE SET state = 'started', updated_at = excluded.updated_at, "
            "run_id = excluded.run_id, reason = NULL",
            (key, category_id, person_id, face_id, image_url, self.clock(), self.run_id),
        )
        await self._durable()

    async def removal_finished(self, key: str, removed: bool, reason: str | None = None) -> None:
        """The removal ``key`` is done (``removed``) or failed for certain (with ``reason``)."""
        self._queue_write(
            "UPDATE removals SET state = ?, reason = ?, updated_at = ? WHERE key = ?",
            ("removed" if removed else "failed", reason, self.clock(), key),
        )

    def _queue_write(self, sql: str, params: tuple[Any, ...]) -> None:
        if self._failed is not None:
            raise self._failed
        if self._thread is None:
            raise LedgerError(f"ledger {self.path} is closed")
        self._pending.append((sql, params))
        now = self.clock()
        if now - self._last_heartbeat >= HEARTBEAT_EVERY:
            self._last_heartbeat = now
            self._pending.append(
                ("UPDATE lock SET heartbeat = ? WHERE id = 1 AND token = ?", (now, self._token))
            )
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._submit)

    async def _durable(self) -> None:
        assert self._loop is not None
        future = self._loop.create_future()
        self._waiters.append(future)
        await future

    def _submit(self) -> None:
        self._flush_scheduled = False
        batch, waiters = self._pending, self._waiters
        self._pending, self._waiters = [], []
        if not batch:
            return
        with self._cv:
            self._queue.append((batch, waiters))
            self._cv.notify()

    def _write_loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                # Everything queued while the last commit ran shares this one.
                batches, self._queue = self._queue, []
            error: LedgerError | None = self._failed
            if error is None:
                error = self._commit([w for batch, _ in batches for w in batch])
                if error is not None:
                    self._failed = error
            for _, waiters in batches:
                for future in waiters:
                    loop = future.get_loop()
                    with contextlib.suppress(RuntimeError):  # the loop is closed
                        loop.call_soon_threadsafe(_resolve, future, error)

    def _commit(self, writes: list[_Write]) -> LedgerError | None:
        db = self._writer
        assert db is not None
        try:
            db.execute("BEGIN IMMEDIATE")
            for sql, params in writes:
                db.execute(sql, params)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            return LedgerError(f"cannot write ledger {self.path}: {exc}")
        return None


def _resolve(future: asyncio.Future[None], error: LedgerError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


_STATE_RANK = (
    "CASE state WHEN 'started' THEN 3 WHEN 'ambiguous' THEN 3 WHEN 'registered' THEN 2 ELSE 1 END"
)


def _rekey(db: sqlite3.Connection, keys: ImageKeys) -> None:
    """Key every row by ``keys`` (inside the caller's transaction): rows whose images turn
    out to be one face keep one line, the one in flight first (a rerun settles it against
    the library), then the registered one, then the latest; an explicit key stays as it is.
    """
    db.create_function("mts_image_key", 1, keys.key, deterministic=True)
    _run_script(db, _ROWS_TABLE.format(name="rows_rekeyed"))
    columns = (
        "person, category_id, person_id, image_url, row, state, face_id, request_id, "
        "started_at, updated_at, attempts, was_ambiguous, reason, run_id"
    )
    # The image part of a key follows the person's (its own \x1f-separated pair).
    identity = "substr(key, length(person) + 2)"
    db.execute(
        f"INSERT OR IGNORE INTO rows_rekeyed (key, {columns}) "
        f"SELECT CASE WHEN {identity} LIKE 'key:%' THEN key "
        f"ELSE person || char(31) || mts_image_key(image_url) END, {columns} FROM rows "
        f"ORDER BY {_STATE_RANK} DESC, updated_at DESC"
    )
    db.execute("DROP TABLE rows")
    db.execute("ALTER TABLE rows_rekeyed RENAME TO rows")
    _run_script(db, _ROWS_INDEXES)


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # One statement at a time: ``executescript`` would commit the caller's transaction.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _person_key(category_id: str, person_id: str) -> str:
    return f"{category_id.casefold()}\x1f{person_id.casefold()}"


def open_ledger(
    path: str | os.PathLike[str],
    identity: LedgerIdentity,
    *,
    rebind: bool = False,
    version: str = "",
) -> Ledger:
    """Open and lock the ledger at ``path`` (see :class:`Ledger`)."""
    return Ledger(path, identity, rebind=rebind, version=version).open()


class LedgerReader:
    """A read-only view of a ledger (no lock, no run recorded, no migration): what
    ``mts-faces plan`` and ``verify --ledger`` consult. Rows are found by person and image
    key (:meth:`find`), whatever rule or schema version wrote them; :meth:`close` when done.
    """

    def __init__(
        self, path: str | os.PathLike[str], image_keys: ImageKeys = DEFAULT_IMAGE_KEYS
    ) -> None:
        _check_not_journal(Path(path))
        if not Path(path).exists():
            raise LedgerError(f"ledger {path} does not exist")
        self.path = Path(path)
        self.image_keys = image_keys
        try:
            self._db = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc}") from None

    def person_rows(self, category_id: str, person_id: str) -> list[LedgerRow]:
        """Every row of the person, registered ones first."""
        try:
            found = self._db.execute(
                f"SELECT {_ROW_COLUMNS} FROM rows WHERE person = ? "
                "ORDER BY state = 'registered' DESC",
                (_person_key(category_id, person_id),),
            ).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read ledger {self.path}: {exc}") from None
        return [_to_row(values) for values in found]

    def find(self, category_id: str, person_id: str, identity: str) -> LedgerRow | None:
        """The row of the person's face with image key ``identity``
        (:meth:`~mts_faces.manifest.FaceRow.identity`), or None."""
        for row in self.person_rows(category_id, person_id):
            if row.identity(self.image_keys) == identity:
                return row
        return None

    def close(self) -> None:
        """Close the file."""
        self._db.close()


def read_face_ids(
    path: str | os.PathLike[str], image_keys: ImageKeys = DEFAULT_IMAGE_KEYS
) -> Callable[[Any], str | None]:
    """A lookup (read-only, no lock) of the FaceId to keep of a duplicate (its
    ``category_id``, ``person_id`` and ``face_ids``): the one a ledger row of the person
    holds registered. What ``mts-faces verify --ledger`` keeps."""
    reader = LedgerReader(path, image_keys)

    def lookup(dup: Any) -> str | None:
        for row in reader.person_rows(dup.category_id, dup.person_id):
            if row.state == "registered" and row.face_id in dup.face_ids:
                return row.face_id
        return None

    return lookup

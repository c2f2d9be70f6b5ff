"""An append-only JSON Lines journal that makes a bulk registration resumable.

Two kinds of line: ``start`` before a registration is sent, ``done`` with its outcome. Each
is flushed and fsynced before the registrar goes on, so after a crash (even ``kill -9``) a
rerun knows which rows finished and which were in flight (``start`` with no ``done``) and must
be reconciled with the library before anything is sent again.

fsync costs milliseconds, so one background thread writes and syncs: entries that arrive
while it syncs share the next fsync (group commit) and the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

import attrs

JOURNAL_VERSION = 1


@attrs.frozen
class JournalState:
    """What an existing journal says: registered rows and rows that were in flight."""

    registered: dict[str, tuple[str, str | None]] = attrs.field(factory=dict)
    """row key → (face id, request id) of rows already registered."""
    in_flight: set[str] = attrs.field(factory=set)
    """row keys whose registration was sent but whose outcome was never written."""
    corrupt_lines: int = 0
    """lines that could not be read (a torn last write after a crash, usually)."""


def load_journal(path: str | os.PathLike[str]) -> JournalState:
    """Read a journal; a missing file is an empty journal."""
    state = JournalState()
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; a missing file is fine
    except FileNotFoundError:
        return state
    corrupt = 0
    with handle:
        for raw in handle:
            try:
                entry = json.loads(raw)
                key = entry["key"]
                kind = entry["event"]
            except (ValueError, KeyError, TypeError):
                corrupt += 1
                continue
            if kind == "start":
                state.in_flight.add(key)
            elif kind == "done":
                state.in_flight.discard(key)
                if entry.get("status") == "registered" and entry.get("face_id"):
                    state.registered[key] = (entry["face_id"], entry.get("request_id"))
                else:
                    state.registered.pop(key, None)
    return attrs.evolve(state, corrupt_lines=corrupt)


class Journal:
    """Appends entries to ``path``; :meth:`write` returns once the entry is on disk."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._file = open(self.path, "ab")  # noqa: SIM115 - owned by this object until close()
        self._queue: deque[tuple[bytes, asyncio.Future[None], asyncio.AbstractEventLoop]] = deque()
        self._wakeup = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mts-faces-journal", daemon=True)
        self._thread.start()

    async def write(self, entry: dict[str, Any]) -> None:
        """Append ``entry`` as one line and wait until it is flushed and fsynced."""
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._wakeup:
            if self._closed:
                raise RuntimeError("journal is closed")
            self._queue.append((line, future, loop))
            self._wakeup.notify()
        await asyncio.shield(future)

    async def start(self, key: str, row: int, fields: dict[str, Any]) -> None:
        """Record that the registration of ``key`` is about to be sent."""
        await self.write({"v": JOURNAL_VERSION, "event": "start", "key": key, "row": row, **fields})

    async def done(self, key: str, row: int, status: str, **fields: Any) -> None:
        """Record the final outcome of ``key``."""
        entry = {"v": JOURNAL_VERSION, "event": "done", "key": key, "row": row, "status": status}
        entry.update({k: v for k, v in fields.items() if v is not None})
        await self.write(entry)

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue and not self._closed:
                    self._wakeup.wait()
                if not self._queue and self._closed:
                    return
                batch = list(self._queue)
                self._queue.clear()
            error: BaseException | None = None
            try:
                self._file.write(b"".join(line for line, _, _ in batch))
                self._file.flush()
                if self._fsync:
                    os.fsync(self._file.fileno())
            except BaseException as exc:  # reported to every waiter of the batch
                error = exc
            for _, future, loop in batch:
                loop.call_soon_threadsafe(_settle, future, error)

    async def aclose(self) -> None:
        """Write what is queued, stop the writer thread and close the file."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        await asyncio.to_thread(self._thread.join)
        self._file.close()


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)

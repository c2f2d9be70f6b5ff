"""Reading manifests: CSV with a header, or JSON Lines, streamed one row at a time.

Every data row comes out as a :class:`FaceRow` or, when it cannot be used, a :class:`BadRow`
naming the row number and the field, so that nothing a user handed us is dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import IO, Any, cast

import attrs

from ._exceptions import ValidationError
from ._operations import validate_id, validate_text, validate_url

# Longest line accepted; a longer one is reported as bad instead of being held in memory.
MAX_LINE_BYTES = 64 * 1024

# Column (CSV) or key (JSONL) spellings accepted for each field: ours, then the service's.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "category_id": ("category_id", "categoryid", "category"),
    "person_id": ("person_id", "personid", "person"),
    "image_url": ("image_url", "imageurl", "url"),
    "person_name": ("person_name", "personname", "name"),
}
_WIRE_NAMES = {
    "category_id": "CategoryId",
    "person_id": "PersonId",
    "image_url": "ImageUrl",
    "person_name": "PersonName",
}


@attrs.frozen
class FaceRow:
    """One face to register. ``row`` is its 1-based data row number in the manifest."""

    category_id: str
    person_id: str
    image_url: str
    person_name: str | None = None
    row: int = 0

    @property
    def person_key(self) -> tuple[str, str]:
        """(category, person) compared case-insensitively, as the service compares IDs."""
        return (self.category_id.casefold(), self.person_id.casefold())

    @property
    def row_key(self) -> str:
        """Identity of the face: person (case-insensitive) and exact image URL."""
        return "\x1f".join((*self.person_key, self.image_url))

    def validated(self) -> FaceRow:
        """Check the fields against the service's limits; raise :class:`ValidationError`."""
        validate_id("CategoryId", self.category_id)
        validate_id("PersonId", self.person_id)
        validate_url("ImageUrl", self.image_url)
        if self.person_name is not None:
            validate_text("PersonName", self.person_name)
        return self


@attrs.frozen
class BadRow:
    """A manifest row that cannot be registered, and why (row number and field named)."""

    row: int
    reason: str
    field: str | None = None

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", field {self.field}" if self.field else "")
        return f"{where}: {self.reason}"


ManifestEntry = FaceRow | BadRow


def build_row(
    values: dict[str, Any], row: int, default_category: str | None = None
) -> ManifestEntry:
    """Turn one record (any accepted spellings) into a validated row or a :class:`BadRow`."""
    fields: dict[str, str | None] = {}
    lowered = {str(k).strip().casefold(): v for k, v in values.items() if k is not None}
    for field, aliases in FIELD_ALIASES.items():
        value = next((lowered[a] for a in aliases if a in lowered), None)
        if value is not None and not isinstance(value, str):
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)
            else:
                kind = type(value).__name__
                return BadRow(row, f"must be a string, got {kind}", _WIRE_NAMES[field])
        fields[field] = value.strip() if isinstance(value, str) else None
    if not fields["category_id"]:
        fields["category_id"] = default_category
    for required in ("category_id", "person_id", "image_url"):
        if not fields[required]:
            hint = " (or pass a default category)" if required == "category_id" else ""
            return BadRow(row, f"missing or empty{hint}", _WIRE_NAMES[required])
    face = FaceRow(
        category_id=fields["category_id"] or "",
        person_id=fields["person_id"] or "",
        image_url=fields["image_url"] or "",
        person_name=fields["person_name"] or None,
        row=row,
    )
    try:
        return face.validated()
    except ValidationError as exc:
        return BadRow(row, str(exc).split(": ", 1)[-1], exc.field)


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, decoded line or None, problem) for each physical line of ``stream``."""
    number = 0
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # drop the rest of the oversized line
                raw = stream.readline(MAX_LINE_BYTES)
            yield number, None, f"line longer than {MAX_LINE_BYTES} bytes"
            continue
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark, as spreadsheet programs write
        try:
            yield number, raw.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            bad = raw[exc.start : exc.start + 1]
            yield number, None, f"not valid UTF-8 (byte {exc.start + 1} is {bad!r})"


def read_jsonl(stream: IO[bytes], default_category: str | None = None) -> Iterator[ManifestEntry]:
    """Rows of a JSON Lines manifest; blank lines are ignored."""
    row = 0
    for _, text, problem in _lines(stream):
        if text is not None and not text.strip():
            continue
        row += 1
        if problem:
            yield BadRow(row, problem)
            continue
        try:
            record = json.loads(text or "")
        except json.JSONDecodeError as exc:
            yield BadRow(row, f"not valid JSON ({exc.msg} at column {exc.colno})")
        except ValueError as exc:
            yield BadRow(row, f"not valid JSON ({exc})")
            continue
        if not isinstance(record, dict):
            yield BadRow(row, f"expected a JSON object, got {type(record).__name__}")
            continue
        yield build_row(record, row, default_category)


def read_csv(stream: IO[bytes], default_category: str | None = None) -> Iterator[ManifestEntry]:
    """Rows of a CSV manifest whose first line is a header naming the columns."""
    pending_problem: list[tuple[int, str]] = []

    def text_lines() -> Iterator[str]:
        for number, text, problem in _lines(stream):
            if problem:
                pending_problem.append((number, problem))
                yield "\n"  # keeps the csv reader's line count; reported below
            else:
                yield text or ""

    reader = csv.reader(text_lines(), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield BadRow(0, f"unreadable header: {exc}")
        return
    if pending_problem:
        yield BadRow(0, f"header {pending_problem.pop()[1]}")
        return
    columns = [h.strip() for h in header]
    known = {a for aliases in FIELD_ALIASES.values() for a in aliases}
    if not any(c.casefold() in known for c in columns):
        expected = "category_id, person_id, image_url"
        yield BadRow(0, f"header names none of the columns {expected}: {header!r}")
        return
    row = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            row += 1
            yield BadRow(row, f"malformed CSV: {exc}")
            continue
        if pending_problem:
            row += 1
            yield BadRow(row, pending_problem.pop()[1])
            continue
        if not record or all(not cell.strip() for cell in record):
            continue
        row += 1
        if len(record) > len(columns):
            yield BadRow(row, f"{len(record)} cells but the header names {len(columns)} columns")
            continue
        yield build_row(dict(zip(columns, record, strict=False)), row, default_category)


def read_manifest(
    stream: IO[bytes], *, fmt: str | None = None, default_category: str | None = None
) -> Iterator[ManifestEntry]:
    """Rows of a manifest; ``fmt`` is ``"csv"`` or ``"jsonl"`` (guessed from content if None)."""
    if fmt is None:
        first = stream.read(64)
        head = first.lstrip(b"\xef\xbb\xbf \t\r\n")
        fmt = "jsonl" if head.startswith(b"{") else "csv"
        stream = cast(IO[bytes], _Prefixed(first, stream))
    if fmt == "jsonl":
        return read_jsonl(stream, default_category)
    if fmt == "csv":
        return read_csv(stream, default_category)
    raise ValueError(f"unknown manifest format {fmt!r}; use csv or jsonl")


class _Prefixed(io.RawIOBase):
    """``stream`` with ``prefix`` (bytes already read from it to sniff the format) put back."""

    def __init__(self, prefix: bytes, stream: IO[bytes]) -> None:
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1) -> bytes:
        if self._prefix:
            newline = self._prefix.find(b"\n")
            if newline >= 0:
                line, self._prefix = self._prefix[: newline + 1], self._prefix[newline + 1 :]
                return line
            line, self._prefix = self._prefix, b""
            limit = -1 if size is None or size < 0 else max(0, size - len(line))
            return line + (self._stream.readline(limit) if limit != 0 else b"")
        return self._stream.readline(-1 if size is None else size)


def only_rows(entries: Iterable[ManifestEntry]) -> Iterator[FaceRow]:
    """The good rows of ``entries`` (for callers that handle bad rows themselves)."""
    return (e for e in entries if isinstance(e, FaceRow))

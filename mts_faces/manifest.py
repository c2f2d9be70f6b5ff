"""Reading manifests: CSV with a header, or JSON Lines, streamed one row at a time.

Every data row comes out as a :class:`FaceRow` or, when it cannot be used, a :class:`BadRow`
naming the row number, the line and the field, so that nothing a user handed us is dropped
silently. The readers never raise for what a file contains (bad bytes, bad quoting, huge
lines, deep JSON): such problems are :class:`BadRow` entries. Only an error of the stream
itself (:class:`OSError`) or an unknown ``fmt`` (:class:`ValueError`) is raised.
"""

from __future__ import annotations

import csv
import json
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import attrs

from ._exceptions import ValidationError
from ._operations import validate_id, validate_text, validate_url
from .imagekey import DEFAULT_IMAGE_KEYS, ImageKeys

# Longest line accepted; a longer one is reported as bad instead of being held in memory.
MAX_LINE_BYTES = 64 * 1024
# A quoted CSV field may span lines (a name with a line break), but only this many: an
# unclosed quote must not swallow the valid rows after it.
MAX_RECORD_LINES = 8

# Column (CSV) or key (JSONL) spellings accepted for each field: ours, then the service's.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "category_id": ("category_id", "categoryid", "category"),
    "person_id": ("person_id", "personid", "person"),
    "image_url": ("image_url", "imageurl", "url"),
    "person_name": ("person_name", "personname", "name"),
    "image_key": ("image_key", "imagekey"),
}
# Each accepted spelling (casefolded) → our field name, for resolving a header once.
_ALIAS_TO_FIELD = {alias: field for field, aliases in FIELD_ALIASES.items() for alias in aliases}
_WIRE_NAMES = {
    "category_id": "CategoryId",
    "person_id": "PersonId",
    "image_url": "ImageUrl",
    "person_name": "PersonName",
    "image_key": "image_key",
}
MAX_IMAGE_KEY_LENGTH = 1024
"""Longest explicit ``image_key`` accepted (a digest or photo ID is far shorter)."""
_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class Readable(Protocol):
    """What the readers need of a stream: ``readline`` (a binary file, ``sys.stdin.buffer``)."""

    def readline(self, size: int = -1, /) -> bytes:
        """One line of at most ``size`` bytes (all of it when ``size`` is negative)."""
        ...


@attrs.frozen
class FaceRow:
    """One face to register. ``row`` is its 1-based data row number in the manifest.

    ``image_key``: the image's identity when the caller has a stable one (a content digest,
    a photo ID); None keys the image by its URL less the signing parameters
    (:class:`~mts_faces.imagekey.ImageKeys`), so a re-signed URL is the same face.
    """

    category_id: str
    person_id: str
    image_url: str
    person_name: str | None = None
    row: int = 0
    image_key: str | None = None

    @property
    def person_key(self) -> tuple[str, str]:
        """(category, person) compared case-insensitively, as the service compares IDs."""
        return (self.category_id.casefold(), self.person_id.casefold())

    def identity(self, keys: ImageKeys = DEFAULT_IMAGE_KEYS) -> str:
        """The image's identity: the explicit ``image_key``, else the URL's key."""
        return f"key:{self.image_key}" if self.image_key else keys.key(self.image_url)

    def key(self, keys: ImageKeys = DEFAULT_IMAGE_KEYS) -> str:
        """The face's identity (its ledger key): person, case-insensitive, and image."""
        return "\x1f".join((*self.person_key, self.identity(keys)))

    @property
    def row_key(self) -> str:
        """:meth:`key` under the default rule."""
        return self.key()

    def validated(self) -> FaceRow:
        """Check the fields against the service's limits; raise :class:`ValidationError`."""
        validate_id("CategoryId", self.category_id)
        validate_id("PersonId", self.person_id)
        validate_url("ImageUrl", self.image_url)
        if self.person_name is not None:
            validate_text("PersonName", self.person_name)
        if self.image_key is not None:
            validate_image_key(self.image_key)
        return self


def validate_image_key(value: str) -> str:
    """An explicit image key: not empty, at most :data:`MAX_IMAGE_KEY_LENGTH` characters,
    no control character."""
    if not value.strip():
        raise ValidationError("image_key", "must not be empty (leave the column out instead)")
    if len(value) > MAX_IMAGE_KEY_LENGTH:
        raise ValidationError(
            "image_key", f"is {len(value)} characters long; the limit is {MAX_IMAGE_KEY_LENGTH}"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValidationError("image_key", "must not hold control characters")
    return value


@attrs.frozen
class BadRow:
    """A manifest row that cannot be registered, and why (row number, field and line).

    ``row`` 0 stands for the header or the file as a whole; ``line`` is the 1-based physical
    line where the row starts, when known.
    """

    row: int
    reason: str
    field: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row else "header" if self.line else "manifest"
        if self.line is not None:
            where += f" (line {self.line})"
        if self.field:
            where += f", field {self.field}"
        return f"{where}: {self.reason}"


ManifestEntry = FaceRow | BadRow


def build_row(
    values: dict[str, Any], row: int, default_category: str | None = None, line: int | None = None
) -> ManifestEntry:
    """Turn one record (any accepted spellings) into a validated row or a :class:`BadRow`."""
    lowered = {str(k).strip().casefold(): v for k, v in values.items() if k is not None}
    found = {
        field: next((lowered[a] for a in aliases if a in lowered), None)
        for field, aliases in FIELD_ALIASES.items()
    }
    return _row_from_fields(found, row, default_category, line)


def _row_from_fields(
    found: dict[str, Any], row: int, default_category: str | None, line: int | None
) -> ManifestEntry:
    """:func:`build_row` once the spellings are resolved: ``found`` maps our field names."""
    fields: dict[str, str | None] = {}
    for field in FIELD_ALIASES:
        value = found.get(field)
        if value is not None and not isinstance(value, str):
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)
            else:
                kind = type(value).__name__
                return BadRow(row, f"must be a string, got {kind}", _WIRE_NAMES[field], line)
        fields[field] = value.strip() if isinstance(value, str) else None
    if not fields["category_id"]:
        fields["category_id"] = default_category
    for required in ("category_id", "person_id", "image_url"):
        if not fields[required]:
            hint = " (or pass a default category)" if required == "category_id" else ""
            return BadRow(row, f"missing or empty{hint}", _WIRE_NAMES[required], line)
    face = FaceRow(
        category_id=fields["category_id"] or "",
        person_id=fields["person_id"] or "",
        image_url=fields["image_url"] or "",
        person_name=fields["person_name"] or None,
        row=row,
        image_key=fields["image_key"] or None,
    )
    try:
        return face.validated()
    except ValidationError as exc:
        return BadRow(row, exc.reason, exc.field, line)


# --- physical lines -----------------------------------------------------------------------------

# (line number, decoded text or None, problem or None) of one physical line. A line that is
# not valid UTF-8 comes with its problem and a lossy decoding, to find the field at fault.
_Line = tuple[int, str | None, str | None]
_REPLACEMENT = "\ufffd"


class _FileProblem(str):
    """A problem of the file as a whole (binary, UTF-16), found on its first line: no row of
    it can be read, whatever its format."""


def _lines(stream: Readable) -> Iterator[_Line]:
    """Each physical line of ``stream``, decoded, or the reason it cannot be."""
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
        if number == 1:
            kind = sniff_binary(raw)
            if kind is not None:
                # Not text: say what it is, and read no further (its "lines" mean nothing).
                yield (
                    number,
                    None,
                    _FileProblem(f"the file is {kind}, not CSV or JSON Lines; {_SAVE_AS}"),
                )
                return
            if raw.startswith(_UTF16_BOMS):
                yield number, None, _FileProblem("the file is UTF-16 encoded; save it as UTF-8")
                continue
            if raw.startswith(_BOM):
                raw = raw[len(_BOM) :]  # a UTF-8 byte-order mark, as spreadsheet programs write
        try:
            yield number, raw.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            bad = raw[exc.start : exc.start + 1]
            problem = f"not valid UTF-8 (byte {exc.start + 1} is {bad!r}); save the file as UTF-8"
            yield number, raw.decode("utf-8", "replace"), problem


def _field_named(key: str) -> str | None:
    """The wire name of the field a column or key stands for, if any."""
    field = _ALIAS_TO_FIELD.get(key.strip().casefold())
    return None if field is None else _WIRE_NAMES[field]


def _field_with_bad_bytes(record: Iterable[tuple[str, Any]]) -> str | None:
    """The field whose (lossily decoded) value holds the bytes that were not UTF-8."""
    for key, value in record:
        if isinstance(value, str) and _REPLACEMENT in value:
            return _field_named(key)
    return None


# --- JSON Lines ---------------------------------------------------------------------------------


def _json_record(text: str) -> tuple[Any, str | None]:
    """The decoded JSON value of one line, or why it is not valid JSON."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        hint = ""
        if text.startswith(("[", "]")):
            hint = "; JSON Lines is one object per line, not an array"
        return None, f"not valid JSON ({exc.msg} at column {exc.colno}{hint})"
    except ValueError as exc:  # an integer of more digits than Python converts
        return None, f"not valid JSON ({str(exc).split(':')[0]})"
    except RecursionError:
        return None, "not valid JSON (nested too deeply)"


def read_jsonl(stream: Readable, default_category: str | None = None) -> Iterator[ManifestEntry]:
    """Rows of a JSON Lines manifest (one JSON object per line); blank lines are ignored."""
    row = 0
    for number, text, problem in _lines(stream):
        if text is not None and not text.strip():
            continue
        if isinstance(problem, _FileProblem):
            yield BadRow(0, problem, line=number)  # the file as a whole, as for CSV
            return
        row += 1
        if problem is not None or text is None:
            lossy, _ = _json_record(text.strip()) if text is not None else (None, None)
            field = _field_with_bad_bytes(lossy.items()) if isinstance(lossy, dict) else None
            yield BadRow(row, problem or "unreadable line", field, number)
            continue
        record, problem = _json_record(text.strip())
        if problem is not None:
            yield BadRow(row, problem, line=number)
        elif not isinstance(record, dict):
            hint = ""
            if isinstance(record, list):
                hint = " (JSON Lines is one object per line, not an array)"
            yield BadRow(
                row, f"expected a JSON object, got {type(record).__name__}{hint}", line=number
            )
        else:
            yield build_row(record, row, default_category, number)


# --- CSV ----------------------------------------------------------------------------------------

# (first line number, cells or None, problem or None) of one CSV record; with a problem, the
# cells (when present) are a lossy reading of the record.
_Record = tuple[int, list[str] | None, str | None]


def _parse_csv(lines: list[str], delimiter: str) -> tuple[list[str] | None, str | None, bool]:
    """(cells, problem, quote still open) of ``lines`` read as exactly one CSV record."""
    if len(lines) == 1:
        # Fast path, most lines: no quote and no carriage return but the line end, so the
        # cells are exactly what lies between the delimiters.
        body = lines[0].removesuffix("\n").removesuffix("\r")
        if '"' not in body and "\r" not in body and "\n" not in body:
            return body.split(delimiter), None, False
    try:
        records = list(csv.reader(lines, delimiter=delimiter, strict=True))
    except csv.Error as exc:
        message = str(exc)
        if message.startswith("new-line character seen in unquoted field"):
            # Python's own wording points at how to open files, which is not the user's concern.
            message = "a carriage return inside an unquoted field (lines must end in \\n)"
        return None, f"malformed CSV: {message}", "unexpected end of data" in message
    if len(records) != 1:  # a line break outside quotes ended the record early
        return None, "malformed CSV: line break inside an unquoted field", False
    return records[0], None, False


class _CsvRecords:
    """CSV records from physical lines. A record whose quote is still open at the end of a
    line takes in following lines (at most ``MAX_RECORD_LINES``); when that does not yield one
    sensible record, only the first line is reported bad and the others are read afresh."""

    def __init__(self, lines: Iterator[_Line]) -> None:
        self._source = lines
        self._pushed_back: deque[_Line] = deque()
        self.delimiter: str | None = None  # decided by the first (header) line
        self.max_cells: int | None = None  # the header's width, once known

    def _next_line(self) -> _Line | None:
        if self._pushed_back:
            return self._pushed_back.popleft()
        return next(self._source, None)

    def __iter__(self) -> Iterator[_Record]:
        while (first := self._next_line()) is not None:
            number, text, problem = first
            if problem is not None or text is None:
                # With the lossy decoding, when it parses, the caller can name the field.
                lossy = _parse_csv([text], self.delimiter or ",")[0] if text is not None else None
                yield number, lossy, problem or "unreadable line"
                continue
            if not text.strip():
                continue
            if self.delimiter is None:
                self.delimiter = _delimiter(text)
            cells, problem, still_open = _parse_csv([text], self.delimiter)
            if still_open:
                cells, problem = self._continue(text)
            yield number, cells, problem

    def _continue(self, text: str) -> tuple[list[str] | None, str | None]:
        taken: list[_Line] = []
        parts, size = [text], len(text)
        while len(parts) < MAX_RECORD_LINES and size <= MAX_LINE_BYTES:
            following = self._next_line()
            if following is None:
                break
            taken.append(following)
            if following[1] is None or following[2] is not None:  # unreadable: not part of it
                break
            parts.append(following[1])
            size += len(following[1])
            cells, _, still_open = _parse_csv(parts, self.delimiter or ",")
            if cells is not None and (self.max_cells is None or len(cells) <= self.max_cells):
                return cells, None
            if not still_open:
                break
        self._pushed_back.extendleft(reversed(taken))
        return None, "malformed CSV: a quoted field is not closed on this line"


def _header_problem(columns: list[str], default_category: str | None) -> str | None:
    """Why a header cannot be used: no known column, a missing or repeated column."""
    expected = "category_id, person_id, image_url (optional: person_name, image_key)"
    found: dict[str, str] = {}
    for column in columns:
        field = _ALIAS_TO_FIELD.get(column.casefold())
        if field is None:
            continue
        if field in found:
            return f"columns {found[field]!r} and {column!r} both name {_WIRE_NAMES[field]}"
        found[field] = column
    if not found:
        return f"the first line must be a header naming the columns {expected}; got {columns!r}"
    required = ["person_id", "image_url"] + ([] if default_category else ["category_id"])
    for field in required:
        if field not in found:
            names = ", ".join(FIELD_ALIASES[field])
            return f"no column for {_WIRE_NAMES[field]} (accepted names: {names})"
    return None


def _delimiter(header: str) -> str:
    """Comma, unless the header has none but is clearly separated by ``;`` or tabs."""
    if "," in header:
        return ","
    return max(";\t", key=header.count) if any(c in header for c in ";\t") else ","


def read_csv(stream: Readable, default_category: str | None = None) -> Iterator[ManifestEntry]:
    """Rows of a CSV manifest whose first line is a header naming the columns."""
    records = _CsvRecords(_lines(stream))
    entries = iter(records)
    first = next(entries, None)
    if first is None:
        yield BadRow(0, "empty file (expected a header line naming the columns)")
        return
    number, header, problem = first
    if header is None or problem is not None:
        yield BadRow(0, problem or "unreadable header", line=number)
        return
    columns = [h.strip() for h in header]
    problem = _header_problem(columns, default_category)
    if problem is not None:
        yield BadRow(0, problem, line=number)
        return
    records.max_cells = len(columns)
    # Resolve the column spellings once, not per row.
    positions = {
        _ALIAS_TO_FIELD[column.casefold()]: index
        for index, column in enumerate(columns)
        if column.casefold() in _ALIAS_TO_FIELD
    }
    row = 0
    for number, cells, problem in entries:
        if problem is None and cells is not None and all(not cell.strip() for cell in cells):
            continue  # a row of empty cells, as spreadsheets export
        row += 1
        if problem is not None or cells is None:
            field = _field_with_bad_bytes(zip(columns, cells or (), strict=False))
            yield BadRow(row, problem or "unreadable line", field, number)
        elif len(cells) > len(columns):
            yield BadRow(
                row,
                f"{len(cells)} cells but the header names {len(columns)} columns",
                line=number,
            )
        else:
            found = {field: cells[i] for field, i in positions.items() if i < len(cells)}
            yield _row_from_fields(found, row, default_category, number)


# --- either format ------------------------------------------------------------------------------


# What a file given as a manifest may really be, by its first bytes (its "magic number").
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "an XLSX workbook or another ZIP archive"),
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "an XLS workbook (old Excel format) or another OLE2 file",
    ),
    (b"%PDF-", "a PDF document"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"BZh", "a bzip2-compressed file"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"PAR1", "a Parquet file"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
)
_SAVE_AS = "export it as CSV (UTF-8) or JSON Lines"


def sniff_binary(head: bytes) -> str | None:
    """What ``head`` (a file's first bytes) shows the file to be when it is not text: e.g.
    ``"an XLSX workbook or another ZIP archive"``; None for anything that may be text.

    A NUL byte without a UTF-16 byte-order mark counts as binary (UTF-16 with a mark has its
    own message)."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            if magic == b"PK\x03\x04" and b"xl/" in head:
                return "an XLSX workbook"
            return kind
    if b"\x00" in head and not head.startswith(_UTF16_BOMS):
        return "a binary file (or UTF-16 text without a byte-order mark)"
    return None


def sniff_format(head: bytes) -> str:
    """``"jsonl"`` when the first non-blank character of ``head`` is ``{`` or ``[``, else
    ``"csv"`` (a UTF-8 byte-order mark is skipped)."""
    return "jsonl" if head.removeprefix(_BOM).lstrip().startswith((b"{", b"[")) else "csv"


def read_manifest(
    stream: Readable, *, fmt: str | None = None, default_category: str | None = None
) -> Iterator[ManifestEntry]:
    """Rows of a manifest; ``fmt`` is ``"csv"`` or ``"jsonl"`` (guessed from content if None).

    Content is guessed to be JSON Lines when its first non-blank character is ``{`` or ``[``.
    Raises :class:`ValueError` for an unknown ``fmt``; everything wrong inside the file comes
    out as :class:`BadRow` entries.
    """
    if fmt not in (None, "csv", "jsonl"):
        raise ValueError(f"unknown manifest format {fmt!r}; use csv or jsonl")
    if fmt is None:
        first = b""
        while len(first) < 64 and not first.removeprefix(_BOM).strip():
            more = stream.readline(64)
            if not more:
                break
            first += more
        fmt = sniff_format(first)
        stream = _Prefixed(first, stream)
    if fmt == "jsonl":
        return read_jsonl(stream, default_category)
    return read_csv(stream, default_category)


class _Prefixed:
    """``stream`` with ``prefix`` (bytes already read from it to sniff the format) put back.

    Only ``readline`` is offered: it is all the readers use.
    """

    def __init__(self, prefix: bytes, stream: Readable) -> None:
        self._prefix = prefix
        self._stream = stream

    def readline(self, size: int = -1, /) -> bytes:
        limit = max(-1, size)
        if not self._prefix:
            return self._stream.readline(limit)
        newline = self._prefix.find(b"\n")
        end = len(self._prefix) if newline < 0 else newline + 1
        if limit >= 0:
            end = min(end, limit)
        line, self._prefix = self._prefix[:end], self._prefix[end:]
        if line.endswith(b"\n") or self._prefix or limit == len(line):
            return line
        rest = -1 if limit < 0 else limit - len(line)
        return line + self._stream.readline(rest)


def only_rows(entries: Iterable[ManifestEntry]) -> Iterator[FaceRow]:
    """The good rows of ``entries`` (for callers that handle bad rows themselves)."""
    return (e for e in entries if isinstance(e, FaceRow))

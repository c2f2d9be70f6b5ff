"""The manifest reader against a corpus of bad manifests: each problem is a clear BadRow naming
the row, line and field, the valid rows around it still come through, and nothing raises."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mts_faces.manifest import (
    MAX_LINE_BYTES,
    BadRow,
    FaceRow,
    ManifestEntry,
    build_row,
    only_rows,
    read_manifest,
)

CORPUS = Path(__file__).parent / "data" / "bad_manifests"
URL = "https://img.example.com"

# file → (number of good rows, [(row, field, fragment of the reason), ...] of the bad ones).
# Row 0 stands for the header or the whole file: nothing after it can be read.
EXPECTED: dict[str, tuple[int, list[tuple[int, str | None, str]]]] = {
    "empty_person_id.csv": (1, [(1, "PersonId", "missing or empty")]),
    "blank_person_id.csv": (1, [(1, "PersonId", "missing or empty")]),
    "empty_category_cell.csv": (1, [(1, "CategoryId", "default category")]),
    "long_category_id.csv": (1, [(1, "CategoryId", "121 characters long; the limit is 120")]),
    "long_person_id.csv": (1, [(1, "PersonId", "121 characters long; the limit is 120")]),
    "non_http_url.csv": (
        1,
        [
            (1, "ImageUrl", "must be an http or https URL, got 'ftp://"),
            (2, "ImageUrl", "must be an http or https URL, got 'file://"),
            (3, "ImageUrl", "must be an http or https URL, got 's3://"),
        ],
    ),
    "hostless_url.csv": (1, [(1, "ImageUrl", "has no host"), (2, "ImageUrl", "has no host")]),
    "relative_url.csv": (1, [(1, "ImageUrl", "http or https"), (2, "ImageUrl", "http or https")]),
    "invalid_url.csv": (1, [(1, "ImageUrl", "not a valid URL")]),
    "person_with_11_rows.csv": (11, []),  # the registrar, not the reader, applies the cap
    "missing_image_column.csv": (0, [(0, None, "no column for ImageUrl")]),
    "missing_category_column.csv": (0, [(0, None, "no column for CategoryId")]),
    "no_header.csv": (0, [(0, None, "the first line must be a header")]),
    "duplicate_column.csv": (0, [(0, None, "both name PersonId")]),
    "short_row.csv": (1, [(1, "ImageUrl", "missing or empty")]),
    "extra_cells.csv": (1, [(1, None, "5 cells but the header names 4 columns")]),
    "unclosed_quote.csv": (2, [(1, None, "quoted field is not closed")]),
    "stray_quote.csv": (1, [(1, None, "malformed CSV")]),
    "non_utf8_row.csv": (1, [(1, "ImageUrl", "not valid UTF-8 (byte 35")]),
    "non_utf8_header.csv": (0, [(0, None, "not valid UTF-8")]),
    "utf16.csv": (0, [(0, None, "UTF-16")]),
    "excel_workbook.xlsx": (0, [(0, None, "the file is an XLSX workbook")]),
    "nul_bytes.csv": (0, [(0, None, "the file is a binary file")]),
    "utf8_bom.csv": (2, []),
    "utf8_bom.jsonl": (1, []),
    "duplicate_rows.csv": (4, []),  # duplicates are the registrar's to skip
    "empty.csv": (0, [(0, None, "empty file")]),
    "blank_lines_only.csv": (0, [(0, None, "empty file")]),
    "header_only.csv": (0, []),
    "control_character_id.csv": (
        1,
        [(1, "PersonId", "control character U+0000"), (2, "PersonId", "U+0007")],
    ),
    "semicolon_separated.csv": (1, []),
    "crlf_line_endings.csv": (2, []),
    "cr_line_endings.csv": (0, [(0, None, "carriage return inside an unquoted field")]),
    "not_objects.jsonl": (
        1,
        [
            (1, None, "expected a JSON object, got list (JSON Lines is one object per line"),
            (2, None, "got str"),
            (3, None, "got int"),
            (4, None, "got NoneType"),
            (5, None, "got bool"),
        ],
    ),
    "malformed_json.jsonl": (
        1,
        [
            (1, None, "not valid JSON (Expecting ',' delimiter at column 41"),
            (2, None, "not valid JSON"),
            (3, None, "not valid JSON"),
        ],
    ),
    "wrong_types.jsonl": (
        1,  # a number is accepted as an ID, as spreadsheets write numeric IDs
        [
            (1, "PersonId", "must be a string, got dict"),
            (2, "ImageUrl", "must be a string, got list"),
            (3, "PersonName", "must be a string, got bool"),
        ],
    ),
    "missing_keys.jsonl": (
        1,
        [
            (1, "CategoryId", "missing or empty"),
            (2, "CategoryId", "missing or empty"),
            (3, "ImageUrl", "missing or empty"),
        ],
    ),
    "deep_nesting.jsonl": (1, [(1, None, "nested too deeply")]),
    "huge_integer.jsonl": (1, [(1, None, "4300 digits")]),
    "json_array.jsonl": (
        1,
        [(1, None, "not an array"), (2, None, "not valid JSON"), (4, None, "not an array")],
    ),
    "non_utf8.jsonl": (1, [(1, "PersonId", "not valid UTF-8")]),
    "lone_surrogate.jsonl": (
        1,  # a surrogate cannot be encoded, so it could never be signed and sent
        [(1, "PersonId", "U+D800, an unpaired surrogate"), (2, "PersonName", "U+DFFF")],
    ),
}


def huge_line_manifests() -> dict[str, bytes]:
    """A line over the limit between valid rows, in both formats (built here: too big to keep)."""
    huge = "x" * (MAX_LINE_BYTES + 10)
    csv_text = f"category_id,person_id,image_url\nlib,ok-1,{URL}/1.jpg\nlib,p2,{URL}/{huge}\n"
    csv_text += f"lib,ok-2,{URL}/3.jpg\n"
    jsonl_text = f'{{"category_id":"lib","person_id":"p1","image_url":"{URL}/{huge}"}}\n'
    jsonl_text += f'{{"category_id":"lib","person_id":"ok-1","image_url":"{URL}/2.jpg"}}\n'
    return {"huge_line.csv": csv_text.encode(), "huge_line.jsonl": jsonl_text.encode()}


HUGE_EXPECTED: dict[str, tuple[int, list[tuple[int, str | None, str]]]] = {
    "huge_line.csv": (2, [(2, None, f"line longer than {MAX_LINE_BYTES} bytes")]),
    "huge_line.jsonl": (1, [(1, None, f"line longer than {MAX_LINE_BYTES} bytes")]),
}


def corpus() -> dict[str, bytes]:
    """Every bad-input case: the files under data/bad_manifests and the generated ones."""
    files = {path.name: path.read_bytes() for path in sorted(CORPUS.iterdir())}
    return files | huge_line_manifests()


def read(data: bytes, **kw: str) -> list[ManifestEntry]:
    return list(read_manifest(io.BytesIO(data), **kw))  # type: ignore[arg-type]


def test_corpus_is_complete_and_large_enough() -> None:
    names = set(corpus())
    assert names == set(EXPECTED) | set(HUGE_EXPECTED)
    assert len(names) >= 30


@pytest.mark.parametrize("name", sorted(EXPECTED | HUGE_EXPECTED))
def test_each_bad_manifest_gets_a_clear_message(name: str) -> None:
    good, bad = (EXPECTED | HUGE_EXPECTED)[name]
    entries = read(corpus()[name])
    bad_rows = [e for e in entries if isinstance(e, BadRow)]
    assert len(list(only_rows(entries))) == good, entries
    assert [(b.row, b.field) for b in bad_rows] == [(row, field) for row, field, _ in bad], bad_rows
    for entry, (row, field, fragment) in zip(bad_rows, bad, strict=True):
        message = str(entry)
        assert fragment in message, message
        # The message says where: the row (or the header/file) and the field when there is one.
        assert message.startswith(f"row {row} (line " if row else ("header", "manifest"))
        if field is not None:
            assert f"field {field}:" in message
    # Row numbers run 1, 2, 3, ... over good and bad rows alike: every row is accounted for.
    numbers = [e.row for e in entries if e.row]
    assert numbers == list(range(1, len(numbers) + 1))


def test_bom_is_not_part_of_the_first_column_name() -> None:
    for name in ("utf8_bom.csv", "utf8_bom.jsonl"):
        (first, *_) = read(corpus()[name])
        assert isinstance(first, FaceRow)
        assert (first.category_id, first.person_id) == ("lib", "ok-1")
    # A BOM before a header whose first column is required, with the format given.
    data = b"\xef\xbb\xbfperson_id,image_url\np,https://x/a.jpg\n"
    assert read(data, fmt="csv", default_category="lib") == [
        FaceRow("lib", "p", "https://x/a.jpg", row=1)
    ]


def test_good_rows_keep_their_values() -> None:
    entries = read(corpus()["long_person_id.csv"])
    assert entries[1] == FaceRow("lib", "张" * 120, f"{URL}/2.jpg", None, 2)
    crlf = read(corpus()["crlf_line_endings.csv"])
    assert crlf[0] == FaceRow("lib", "ok-1", f"{URL}/1.jpg", "Ann", 1)  # no stray "\r"


def test_quoted_field_may_span_lines_but_not_swallow_rows() -> None:
    data = (
        "category_id,person_id,image_url,person_name\n"
        f'lib,p1,{URL}/1.jpg,"Ann\nSmith"\n'
        f'lib,p2,"{URL}/2.jpg,Bob\n'  # never closed
        + "".join(f"lib,q{i},{URL}/q{i}.jpg,Q\n" for i in range(12))
    ).encode()
    entries = read(data)
    assert entries[0] == FaceRow("lib", "p1", f"{URL}/1.jpg", "Ann\nSmith", 1)
    assert isinstance(entries[1], BadRow) and entries[1].line == 4
    assert [e.person_id for e in only_rows(entries[2:])] == [f"q{i}" for i in range(12)]


def test_default_category_fills_a_missing_column() -> None:
    data = corpus()["missing_category_column.csv"]
    rows = read(data, default_category="lib")
    assert [r.category_id for r in only_rows(rows)] == ["lib", "lib"]


def test_format_guess_and_explicit_format() -> None:
    jsonl = b'\n\n  {"category_id":"c","person_id":"p","image_url":"https://x/a.jpg"}\n'
    assert read(jsonl) == [FaceRow("c", "p", "https://x/a.jpg", row=1)]
    assert read(jsonl, fmt="jsonl") == read(jsonl)
    with pytest.raises(ValueError, match="unknown manifest format"):
        read(jsonl, fmt="xml")


def test_build_row_accepts_the_service_spellings() -> None:
    row = build_row({"CategoryId": " c ", "PersonId": "p", "ImageUrl": "https://x/a"}, 7)
    assert row == FaceRow("c", "p", "https://x/a", None, 7)
    bad = build_row({"CategoryId": "c", "PersonId": "p", "ImageUrl": "x"}, 3, line=9)
    assert str(bad) == "row 3 (line 9), field ImageUrl: must be an http or https URL, got 'x'"


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"PK\x03\x04\x14\x00rest", "an XLSX workbook or another ZIP archive"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00\x00", "an XLS workbook (old Excel format)"),
        (b"%PDF-1.7\n", "a PDF document"),
        (b"\x1f\x8b\x08\x00", "a gzip-compressed file"),
        (b"\x89PNG\r\n\x1a\n", "a PNG image"),
        (b"PAR1\x15\x04", "a Parquet file"),
        (b"c\x00a\x00t\x00", "a binary file (or UTF-16 text without a byte-order mark)"),
    ],
)
def test_binary_files_are_named_for_what_they_are(head: bytes, kind: str) -> None:
    for fmt in (None, "csv", "jsonl"):
        [entry] = read(
            head + b"\nlib,p1,https://img.example.com/1.jpg\n", **({"fmt": fmt} if fmt else {})
        )
        assert isinstance(entry, BadRow)
        assert entry.reason.startswith(f"the file is {kind}"), entry.reason
        assert "export it as CSV (UTF-8) or JSON Lines" in entry.reason


@pytest.mark.parametrize(
    "text", [b"category_id,person_id,image_url\n", b'{"a": 1}\n', b"\xef\xbb\xbfa,b\n"]
)
def test_text_is_not_taken_for_binary(text: bytes) -> None:
    from mts_faces.manifest import sniff_binary

    assert sniff_binary(text) is None
    assert sniff_binary(b"\xff\xfec\x00a\x00") is None  # UTF-16 with a mark: its own message

"""Property tests of the manifest reader: generated rows survive a CSV or JSON Lines round trip,
and no input, however broken, makes the reader raise or yield a row that cannot be sent."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mts_faces._operations import REGISTER_CUSTOM_FACE
from mts_faces._signing import canonical_query
from mts_faces.manifest import MAX_RECORD_LINES, BadRow, FaceRow, ManifestEntry, read_manifest

# Values are stripped on reading, so generated ones carry no surrounding whitespace.
_no_controls = st.characters(blacklist_categories=("Cc", "Cs"))
ids = st.text(_no_controls, min_size=1, max_size=120).filter(lambda v: v == v.strip() and v)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True)
urls = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}/{path}".strip(),
    st.sampled_from(["http", "https", "HTTPS"]),
    hosts,
    st.text(_no_controls, max_size=40),
)
# A name may hold line breaks (a quoted CSV field then spans lines), within the reader's limit.
names = (
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
    .map(str.strip)
    .filter(lambda v: v.count("\n") < MAX_RECORD_LINES - 1)
)
face_rows = st.builds(FaceRow, ids, ids, urls, st.one_of(st.none(), names.map(lambda n: n or None)))


def read(data: bytes, **kw: str | None) -> list[ManifestEntry]:
    return list(read_manifest(io.BytesIO(data), **kw))  # type: ignore[arg-type]


def numbered(rows: list[FaceRow]) -> list[FaceRow]:
    return [
        FaceRow(r.category_id, r.person_id, r.image_url, r.person_name, i)
        for i, r in enumerate(rows, 1)
    ]


def to_csv(rows: list[FaceRow], bom: bool, crlf: bool) -> bytes:
    out = io.StringIO()
    # With "\n" line ends, csv.writer leaves a lone "\r" unquoted, which no reader (Python's
    # own included) can read back; real exports quote it, as QUOTE_ALL does here.
    quoting = csv.QUOTE_MINIMAL if crlf else csv.QUOTE_ALL
    writer = csv.writer(out, lineterminator="\r\n" if crlf else "\n", quoting=quoting)
    writer.writerow(["category_id", "person_id", "image_url", "person_name"])
    for r in rows:
        writer.writerow([r.category_id, r.person_id, r.image_url, r.person_name or ""])
    return (b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode()


TRICKY = [
    FaceRow('lib "a", b', "张三,李四", 'https://x.example/a,"b".jpg?q=1&r=~', 'Ann "Nan"\nSmith'),
    FaceRow("lib;1", "p 1", "http://x.example/\u00e9", "D\u00e9\r\nFoo"),
]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(face_rows, max_size=8), st.booleans(), st.booleans())
@example(TRICKY, True, True)
@example(TRICKY, False, False)
def test_csv_round_trip(rows: list[FaceRow], bom: bool, crlf: bool) -> None:
    data = to_csv(rows, bom, crlf)
    assert read(data) == numbered(rows)
    assert read(data, fmt="csv") == numbered(rows)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(face_rows, max_size=8), st.booleans(), st.booleans())
def test_jsonl_round_trip(rows: list[FaceRow], ascii_only: bool, service_names: bool) -> None:
    keys = (
        ("CategoryId", "PersonId", "ImageUrl", "PersonName")
        if service_names
        else (
            "category_id",
            "person_id",
            "image_url",
            "person_name",
        )
    )
    lines = []
    for r in rows:
        record = dict(
            zip(keys, (r.category_id, r.person_id, r.image_url, r.person_name), strict=True)
        )
        lines.append(json.dumps(record, ensure_ascii=ascii_only))
    data = ("\n".join(lines) + "\n").encode() if lines else b""
    assert read(data, fmt="jsonl") == numbered(rows)
    if rows:
        assert read(data) == numbered(rows)  # guessed from the leading "{"


def check_entries(entries: list[ManifestEntry]) -> None:
    """Only rows and bad rows; rows are valid and can be signed; every row is numbered."""
    numbers = []
    for entry in entries:
        assert isinstance(entry, FaceRow | BadRow)
        if isinstance(entry, FaceRow):
            entry.validated()
            params = REGISTER_CUSTOM_FACE.build_params(
                {
                    "category_id": entry.category_id,
                    "person_id": entry.person_id,
                    "image_url": entry.image_url,
                    "person_name": entry.person_name,
                }
            )
            canonical_query(params)  # encodes every value as UTF-8: must not raise
        else:
            assert str(entry) and entry.reason
        if entry.row:
            numbers.append(entry.row)
    assert numbers == list(range(1, len(numbers) + 1))
    header_errors = [e for e in entries if isinstance(e, BadRow) and e.row == 0]
    assert len(header_errors) <= 1 and (not header_errors or len(entries) == 1)


@settings(max_examples=300)
@given(st.binary(max_size=600), st.sampled_from([None, "csv", "jsonl"]))
def test_arbitrary_bytes_never_raise(data: bytes, fmt: str | None) -> None:
    check_entries(read(data, fmt=fmt))


# Pieces that make CSV and JSON interesting: quotes, separators, line ends, bad bytes, BOMs.
_TOKENS = [
    b",",
    b'"',
    b"\n",
    b"\r\n",
    b"\r",
    b";",
    b"\t",
    b" ",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"\\",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"lib",
    b"p1",
    b"P1",
    b"https://x.example/a.jpg",
    b"ftp://x/a",
    b"http://",
    b"\\ud800",
    b'"person_id"',
    b'"image_url":',
    b"1e999",
    b"null",
    b"true",
    "张".encode(),
]
_HEADERS = [
    b"category_id,person_id,image_url,person_name\n",
    b"person_id,image_url\n",
    b"\xef\xbb\xbfCategoryId,PersonId,ImageUrl\n",
    b'{"category_id":"lib","person_id":"p","image_url":"https://x/a.jpg"}\n',
    b"",
]


@settings(max_examples=400)
@given(
    st.sampled_from(_HEADERS),
    st.lists(st.sampled_from(_TOKENS), max_size=60),
    st.sampled_from([None, "csv", "jsonl"]),
    st.sampled_from([None, "lib"]),
)
def test_structured_garbage_never_raises(
    header: bytes, tokens: list[bytes], fmt: str | None, default: str | None
) -> None:
    check_entries(read(header + b"".join(tokens), fmt=fmt, default_category=default))


def test_unknown_format_is_the_one_documented_error() -> None:
    with pytest.raises(ValueError, match="unknown manifest format"):
        read(b"", fmt="tsv")

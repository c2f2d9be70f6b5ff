"""The emulator's HTTP/1.1 request parser and response bytes, without sockets."""

from __future__ import annotations

import pytest

from mts_faces.emulator._http11 import HttpError, RequestParser, response_bytes

GET = b"GET /?A=1 HTTP/1.1\r\nHost: h\r\n\r\n"
BOTH = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"


def _parse_all(data: bytes, *, step: int | None = None) -> list[tuple[str, bytes, bool]]:
    parser = RequestParser(max_header=1024, max_body=64)
    out = []
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        parser.feed(chunk)
        while (request := parser.next()) is not None:
            out.append((request.target, request.body, request.keep_alive))
    assert parser.buffered == 0
    return out


@pytest.mark.parametrize("step", [None, 1, 7], ids=["whole", "byte-by-byte", "7-bytes"])
def test_pipelined_requests_with_each_framing(step: int | None) -> None:
    data = (
        GET
        + b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        + b"POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n"
        + b"GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    assert _parse_all(data, step=step) == [
        ("/?A=1", b"", True),
        ("/a", b"hello", True),
        ("/b", b"abcde", True),
        ("/c", b"", False),
    ]


def test_http10_closes_unless_asked_to_keep_alive() -> None:
    assert _parse_all(b"GET / HTTP/1.0\r\n\r\n") == [("/", b"", False)]
    assert _parse_all(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n") == [("/", b"", True)]


def test_headers_are_lower_cased_and_trimmed() -> None:
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: h\r\nX-Acs-Date:  2026 \r\nX-Acs-Date: b\r\n\r\n")
    request = parser.next()
    assert request is not None
    assert request.headers == [("host", "h"), ("x-acs-date", "2026"), ("x-acs-date", "b")]


def test_expect_continue_is_offered_once() -> None:
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert parser.next() is None
    assert parser.take_continue() and not parser.take_continue()
    parser.feed(b"ok")
    request = parser.next()
    assert request is not None and request.body == b"ok"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 65\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (BOTH, 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n", 413),
        (b"GET / HTTP/1.1\r\nHost: " + b"h" * 2000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: " + b"h" * 2000, 431),
    ],
)
def test_malformed_requests_are_refused(data: bytes, status: int) -> None:
    parser = RequestParser(max_header=1024, max_body=64)
    parser.feed(data)
    with pytest.raises(HttpError) as excinfo:
        parser.next()
    assert excinfo.value.status == status


def test_response_bytes() -> None:
    raw = response_bytes(200, b"{}", [("content-type", "application/json")], keep_alive=True)
    assert (
        raw == b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    )
    closing = response_bytes(400, b"", [], keep_alive=False)
    assert b"connection: close\r\n" in closing
    assert b"connection: keep-alive" in response_bytes(200, b"", [], keep_alive=True, http10=True)
    assert response_bytes(405, b"xx", [], keep_alive=True, head_only=True).endswith(b"\r\n\r\n")

"""The emulator's HTTP/1.1 server over raw sockets: pipelining, 100-continue, bad requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from mts_faces import MtsFaceClient, MtsFacesError, TransportError
from mts_faces.emulator import Emulator, EmulatorConfig


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(qps=None)) as emu:
        yield emu


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    pairs = (line.split(": ", 1) for line in lines[1:] if line)
    headers = {name.lower(): value for name, value in pairs}  # names are case-insensitive
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), headers, body


async def test_pipelined_requests_are_answered_in_order(emulator: Emulator) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
    writer.write(
        b"POST /?Action=ListCustomPersons HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /nowhere HTTP/1.1\r\nHost: h\r\n\r\n"
        b"PUT / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    answers = [await _read_response(reader) for _ in range(3)]
    assert [status for status, _, _ in answers] == [400, 404, 405]
    assert [json.loads(body)["Code"] for _, _, body in answers] == [
        "MissingParameter",
        "InvalidAction.NotFound",
        "UnsupportedHTTPMethod",
    ]
    assert answers[2][1]["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed as asked
    writer.close()


async def test_expect_continue_then_the_answer(emulator: Emulator) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
    writer.write(
        b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
    )
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    writer.write(b"A=1")
    status, headers, body = await _read_response(reader)
    assert status == 400 and json.loads(body)["RequestId"] == headers["x-acs-request-id"]
    writer.close()


@pytest.mark.parametrize(
    "data",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",  # space before the colon
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_a_malformed_request_gets_400_and_the_connection_closes(
    emulator: Emulator, data: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
    writer.write(data)
    status, _, _ = await _read_response(reader)
    assert status == 400
    assert await asyncio.wait_for(reader.read(), 10) == b""  # and nothing more is read
    writer.close()
    assert emulator.stats.requests == 0  # never reached the service


async def test_a_body_over_max_body_gets_413() -> None:
    async with Emulator(EmulatorConfig(qps=None, max_body=64)) as emu:
        reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 65\r\n\r\n" + b"x" * 65)
        status, _, _ = await _read_response(reader)
        assert status == 413
        writer.close()
        assert emu.stats.requests == 0


@pytest.mark.parametrize("step", [None, 1, 7], ids=["whole", "byte-by-byte", "7-bytes"])
async def test_pipelined_requests_with_each_framing(emulator: Emulator, step: int | None) -> None:
    data = (
        b"POST /?Action=ListCustomPersons HTTP/1.1\r\nHost: h\r\n\r\n"
        + b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        + b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        + b"GET /_emulator/stats HTTP/1.0\r\n\r\n"  # HTTP/1.0: closes after its answer
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
    answers = [await _read_response(reader) for _ in range(4)]
    assert [status for status, _, _ in answers] == [400, 404, 400, 200]
    assert json.loads(answers[3][2])["requests"] == 3  # every framing reached the service
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_a_client_that_half_closes_gets_the_connection_closed(emulator: Emulator) -> None:
    # aiohttp closes a connection whose client shut its sending side, without an answer (the
    # old hand-written server answered first). HTTP clients keep their side open until they
    # have the answer; this pins the difference, and that the server carries on.
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
    writer.write(b"POST /?Action=ListCustomPersons HTTP/1.1\r\nHost: h\r\n\r\n")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    async with MtsFaceClient(**emulator.client_kwargs()) as client:
        assert (await client.list_custom_persons()).categories == ()


async def test_stop_ends_idle_and_waiting_connections() -> None:
    emu = Emulator(EmulatorConfig(qps=None, latency=60.0))
    await emu.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
    async with MtsFaceClient(**emu.client_kwargs(), max_retries=0) as client:
        waiting = asyncio.ensure_future(client.list_custom_persons())
        for _ in range(500):  # until the request has arrived; its answer is held a minute
            if emu.stats.accepted:
                break
            await asyncio.sleep(0.01)
        await emu.aclose()
        with pytest.raises(TransportError):
            await asyncio.wait_for(waiting, 10)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_work_of_a_late_answer_completes_when_the_client_leaves() -> None:
    async with Emulator(EmulatorConfig(qps=None, latency=0.3, seed=1)) as emu:
        async with MtsFaceClient(**emu.client_kwargs(), timeout=0.05, max_retries=0) as client:
            with pytest.raises(MtsFacesError):  # no answer in time: ambiguous
                await client.register_custom_face("lib", "p1", "https://img.example.com/1.jpg")
        for _ in range(500):  # the client is gone; the service still stores the face
            if emu.stats.faces_stored:
                break
            await asyncio.sleep(0.01)
        assert emu.stats.faces_stored == 1


async def test_stop_ends_a_hang_at_once() -> None:
    emu = Emulator(EmulatorConfig(qps=None, commit_timeout_rate=1.0, hang=600.0))
    await emu.start()
    async with MtsFaceClient(**emu.client_kwargs(), max_retries=0) as client:
        waiting = asyncio.ensure_future(
            client.register_custom_face("lib", "p1", "https://img.example.com/1.jpg")
        )
        for _ in range(500):
            if emu.stats.faulted["commit_timeout"]:
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(emu.aclose(), 10)  # not the 600 s of the hang
        with pytest.raises(MtsFacesError):
            await asyncio.wait_for(waiting, 10)
    assert emu.stats.faces_stored == 1  # committed, then never answered

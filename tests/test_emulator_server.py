"""The emulator's HTTP/1.1 server over raw sockets: pipelining, 100-continue, bad requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from mts_faces import MtsFaceClient, TransportError
from mts_faces.emulator import Emulator, EmulatorConfig


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(qps=None)) as emu:
        yield emu


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
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


async def test_a_malformed_request_gets_400_and_the_connection_closes(emulator: Emulator) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    status, headers, body = await _read_response(reader)
    assert status == 505 or status == 400
    assert headers["connection"] == "close"
    assert set(json.loads(body)) == {"RequestId", "HostId", "Code", "Message", "Recommend"}
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_half_closed_client_still_gets_its_answer(emulator: Emulator) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: h\r\n\r\n")
    writer.write_eof()
    status, _, _ = await _read_response(reader)
    assert status == 400
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


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

"""What both ways of serving the emulator share: late answers, reply headers, clients that
share one in-process transport, and the socket server's extra."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httpx
import pytest

from mts_faces import MissingExtraError, MtsFaceClient
from mts_faces.emulator import Emulator, EmulatorConfig
from mts_faces.emulator._inprocess import InProcessTransport
from mts_faces.emulator._server import HttpServer
from mts_faces.emulator._service import Deferred, Outcome, Reply, Request

HINT = (("x-acs-retry-after", "1500"),)


class ChainedService:
    """Answers after two chained delays (network, then service) with a header of its own."""

    def __init__(self) -> None:
        self.finished: list[str] = []

    def handle(self, request: Request) -> Outcome | Deferred:
        def service() -> Outcome:
            self.finished.append("service")
            return Reply(429, b'{"Code":"Throttling"}', "R1", headers=HINT)

        def network() -> Outcome | Deferred:
            self.finished.append("network")
            return Deferred(0.0, service)

        return Deferred(0.0, network)


def _check(response: httpx.Response, service: ChainedService) -> None:
    assert response.status_code == 429
    assert response.headers["x-acs-retry-after"] == "1500"
    assert response.headers["x-acs-request-id"] == "R1"
    assert service.finished == ["network", "service"]


async def test_in_process_answers_follow_chained_delays_and_carry_reply_headers() -> None:
    service = ChainedService()
    transport = InProcessTransport(service)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport) as http:
        _check(await http.post("http://emulator.invalid/"), service)


async def test_socket_answers_follow_chained_delays_and_carry_reply_headers() -> None:
    service = ChainedService()
    server = HttpServer(service, max_body=1024)  # type: ignore[arg-type]
    port = await server.start("127.0.0.1", 0, None)
    try:
        async with httpx.AsyncClient() as http:
            _check(await http.post(f"http://127.0.0.1:{port}/"), service)
    finally:
        await server.stop()


async def test_closing_one_of_two_clients_from_one_kwargs_spares_the_others_calls() -> None:
    emulator = Emulator(EmulatorConfig(qps=None, latency=0.3))
    kwargs: dict[str, Any] = emulator.client_kwargs(in_process=True, max_retries=0)
    first, second = MtsFaceClient(**kwargs), MtsFaceClient(**kwargs)
    call = asyncio.ensure_future(first.list_custom_persons())
    await asyncio.sleep(0.05)
    assert not call.done()
    await second.aclose()
    listing = await call  # still answered: only the last client's close ends pending calls
    assert listing.categories == ()
    pending = asyncio.ensure_future(first.list_custom_persons())
    await asyncio.sleep(0.05)
    await first.aclose()  # the last one: as a server stopping, pending calls end
    with pytest.raises(Exception, match="closed before answering"):
        await pending


async def test_serving_on_a_socket_without_aiohttp_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m == "aiohttp" or m.startswith("aiohttp.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    emulator = Emulator(EmulatorConfig(host="127.0.0.1", port=0))
    with pytest.raises(MissingExtraError, match="aiohttp") as info:
        await emulator.start()
    assert info.value.extra == "aiohttp"

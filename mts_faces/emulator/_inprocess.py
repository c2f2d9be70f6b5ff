"""The emulator without sockets: an httpx transport that hands requests to the service core.

As moto's mock mode does for boto3: ``MtsFaceClient(transport=emulator.transport())`` sends
every request straight to the emulator's :class:`Service` (signature, nonce, quota and fault
checks included) on the caller's event loop. Nothing listens, nothing is parsed twice, and a
test runs at the speed of the checks themselves.
"""

from __future__ import annotations

import asyncio

import httpx

from ._service import JSON_CONTENT_TYPE, Deferred, Drop, Hang, Outcome, Reply, Request, Service


class InProcessTransport(httpx.AsyncBaseTransport):
    """Answers each request from ``service``, as the socket server would.

    Latency is slept on the caller's loop. A delayed call completes even if the caller gives
    up waiting (as it does behind a socket: the service got it); a dropped connection raises
    ``httpx.RemoteProtocolError``, a hang sleeps its seconds and then raises
    ``httpx.ReadError``, so the client sees what it would see on the wire. :meth:`aclose`
    ends calls still waiting out their latency with ``httpx.ReadError``.
    """

    def __init__(self, service: Service) -> None:
        self._service = service
        self._pending: set[asyncio.Task[Outcome]] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Run ``request`` through the service and answer it."""
        body = await request.aread()
        headers = [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in request.headers.raw
        ]
        target = request.url.raw_path.decode("ascii")
        outcome = self._service.handle(Request(request.method, target, headers, body))
        if isinstance(outcome, Deferred):
            task = asyncio.get_running_loop().create_task(_later(outcome))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            try:
                outcome = await asyncio.shield(task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if task.cancelled() and current is not None and not current.cancelling():
                    # Closed under us (aclose), not cancelled by our caller: as a server
                    # shutting down, the connection ends without an answer.
                    raise httpx.ReadError(
                        "the emulator was closed before answering", request=request
                    ) from None
                raise
        return await _answer(outcome, request)

    async def aclose(self) -> None:
        """Cancel calls still waiting out their latency (as stopping the server does)."""
        for task in list(self._pending):
            task.cancel()
        self._pending.clear()


async def _later(deferred: Deferred) -> Outcome:
    outcome: Outcome | Deferred = deferred
    while isinstance(outcome, Deferred):  # a delay may lead to another (network, then service)
        if outcome.delay > 0:
            await asyncio.sleep(outcome.delay)
        outcome = outcome.finish()
    return outcome


async def _answer(outcome: Outcome, request: httpx.Request) -> httpx.Response:
    if isinstance(outcome, Reply):
        return httpx.Response(
            outcome.status,
            headers=[
                ("content-type", JSON_CONTENT_TYPE),
                ("x-acs-request-id", outcome.request_id),
                # Any headers the service adds to its reply, as the socket server sends them.
                *getattr(outcome, "headers", ()),
            ],
            content=outcome.body,
            request=request,
        )
    if isinstance(outcome, Hang):
        await asyncio.sleep(outcome.seconds)
        raise httpx.ReadError(
            "the emulator closed the connection without answering", request=request
        )
    assert isinstance(outcome, Drop)
    raise httpx.RemoteProtocolError(
        "Server disconnected without sending a response.", request=request
    )

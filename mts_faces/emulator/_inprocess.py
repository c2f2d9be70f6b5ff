"""The emulator without sockets: an httpx transport that hands requests to the service core.

As moto's mock mode does for boto3: ``MtsFaceClient(transport=emulator.transport())`` sends
every request straight to the emulator's :class:`Service` (signature, nonce, quota and fault
checks included) on the caller's event loop. Nothing listens, nothing is parsed twice, and a
test runs at the speed of the checks themselves.
"""

from __future__ import annotations

import asyncio

import httpx

from ._service import (
    Deferred,
    Drop,
    Hang,
    Outcome,
    Reply,
    Request,
    Service,
    finish_later,
    reply_headers,
)


class InProcessTransport(httpx.AsyncBaseTransport):
    """Answers each request from ``service``, as the socket server would.

    Latency is slept on the caller's loop. A delayed call completes even if the caller gives
    up waiting (as it does behind a socket: the service got it); a dropped connection raises
    ``httpx.RemoteProtocolError``, a hang sleeps its seconds and then raises
    ``httpx.ReadError``, so the client sees what it would see on the wire. :meth:`aclose`
    ends calls still waiting out their latency with ``httpx.ReadError``.

    Several ``MtsFaceClient`` may be built on one transport (from one
    ``client_kwargs(in_process=True)``): each tells it so (:meth:`share`), and only the last
    one's close ends the pending calls.
    """

    def __init__(self, service: Service) -> None:
        self._service = service
        self._pending: set[asyncio.Task[Outcome]] = set()
        self._users = 0

    def share(self) -> None:
        """One more client will send through this transport and close it when done."""
        self._users += 1

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
            task = asyncio.get_running_loop().create_task(finish_later(outcome))
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
        """Cancel calls still waiting out their latency (as stopping the server does), once
        the last client that :meth:`share`-d this transport closes it."""
        self._users -= 1
        if self._users > 0:
            return
        self._users = 0
        for task in list(self._pending):
            task.cancel()
        self._pending.clear()


async def _answer(outcome: Outcome, request: httpx.Request) -> httpx.Response:
    if isinstance(outcome, Reply):
        return httpx.Response(
            outcome.status,
            headers=reply_headers(outcome),
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

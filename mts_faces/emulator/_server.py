"""The emulator's HTTP side on ``aiohttp.web``: each request goes to the emulated service,
and its outcome becomes an answer, a late answer, a cut connection or a stalled one.

aiohttp parses HTTP/1.1 (keep-alive, pipelining, chunked bodies, ``Expect: 100-continue``,
HEAD, HTTP/1.0) and refuses malformed requests with its own 4xx; this module adds only what
the emulator needs on top:

* latency: the service's work is finished after the delay even when the client has gone
  (the service got the call), as a real server would;
* drop: the connection is closed without an answer;
* hang (commit-then-timeout): nothing is said for ``seconds``, then the connection closes;
  a client that leaves first ends the wait;
* ``/_emulator/...``: the emulator's own endpoints (``GET /_emulator/stats``).

``stop()`` ends every connection at once, pending answers included.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

from ._admin import admin_reply, is_admin
from ._service import JSON_CONTENT_TYPE, Deferred, Drop, Hang, Outcome, Reply, Request, Service

if TYPE_CHECKING:
    from aiohttp import web

# How long stop() lets a request in progress finish before cancelling it: at once, in effect
# (aiohttp reads 0 as "no limit").
_STOP_GRACE = 0.001


class HttpServer:
    """Listens on ``host:port`` and hands every request to ``service``."""

    def __init__(self, service: Service, *, max_body: int) -> None:
        self.service = service
        self.max_body = max_body
        self._runner: web.AppRunner | None = None
        # Late answers whose work must complete though their client left; cancelled by stop().
        self._pending: set[asyncio.Task[Outcome]] = set()

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        """Start listening; returns the port (useful when ``port`` is 0)."""
        from aiohttp import web  # here: importing the emulator costs nothing until it serves

        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", "/{path:.*}", self._handle)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            # A client that leaves cancels its handler: a hang then ends with it. The work of
            # a late answer runs in its own task (see _handle), so it completes regardless.
            handler_cancellation=True,
            shutdown_timeout=_STOP_GRACE,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound: int = runner.addresses[0][1]
        return bound

    async def stop(self) -> None:
        """Stop listening, end every connection and pending answer."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for task in list(self._pending):
            task.cancel()
        await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method, target = request.method, request.raw_path
        if is_admin(target):
            return _response(admin_reply(self.service, method, target))
        headers = [(name.lower(), value) for name, value in request.headers.items()]
        outcome: Outcome | Deferred = self.service.handle(
            Request(method, target, headers, await request.read())
        )
        if isinstance(outcome, Deferred):
            task = asyncio.ensure_future(_finish_later(outcome))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            # Shielded: a client that leaves during the latency does not undo the work.
            outcome = await asyncio.shield(task)
        if isinstance(outcome, Hang):
            await asyncio.sleep(outcome.seconds)  # cancelled if the client leaves first
            outcome = Drop()
        if isinstance(outcome, Drop):
            return _cut(request)
        return _response(outcome)


async def _finish_later(deferred: Deferred) -> Outcome:
    outcome: Outcome | Deferred = deferred
    while isinstance(outcome, Deferred):  # the network's delay, then the service's
        if outcome.delay > 0:
            await asyncio.sleep(outcome.delay)
        outcome = outcome.finish()
    return outcome


def _response(reply: Reply) -> web.Response:
    from aiohttp import web

    return web.Response(
        status=reply.status,
        body=reply.body,
        headers={
            "content-type": JSON_CONTENT_TYPE,
            "x-acs-request-id": reply.request_id,
            **dict(reply.headers),
        },
    )


def _cut(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer. aiohttp then finds the connection closing and
    writes nothing (a write to a closing connection is a ConnectionError, which it takes as
    "the client went away")."""
    from aiohttp import web

    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=500)

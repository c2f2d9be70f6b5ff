"""The HTTP/1.1 server: an asyncio.Protocol per connection, keep-alive, pipelining, faults.

Each connection answers its requests in order. While an answer is delayed (latency, a hang)
reading pauses, so a client cannot make the server buffer without bound.
"""

from __future__ import annotations

import asyncio
import ssl

from . import _errors as errors
from ._http11 import CONTINUE, HttpError, ParsedRequest, RequestParser, response_bytes
from ._service import JSON_CONTENT_TYPE, Deferred, Hang, Outcome, Reply, Request, Service


class HttpServer:
    """Listens on ``host:port`` and hands every request to ``service``."""

    def __init__(self, service: Service, *, max_body: int) -> None:
        self.service = service
        self.max_body = max_body
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        """Start listening; returns the port (useful when ``port`` is 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, ssl=ssl_context, reuse_address=True
        )
        port_bound: int = self._server.sockets[0].getsockname()[1]
        return port_bound

    async def stop(self) -> None:
        """Stop listening, end every connection and pending answer."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            connection.abort()
        await self._server.wait_closed()
        self._server = None


class _Connection(asyncio.Protocol):
    """One client connection: parse, answer in order, apply drops and hangs."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._parser = RequestParser(max_body=server.max_body)
        self._transport: asyncio.Transport | None = None
        # Set while an answer is pending (latency, hang): later requests wait their turn.
        self._task: asyncio.Task[None] | None = None
        self._hanging = False
        self._closed = False
        self._eof = False
        self._tls = False
        self._writing_paused = False

    # --- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._tls = transport.get_extra_info("sslcontext") is not None
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)
        # A delayed call still completes (the service got it); a hang has nobody to wait for.
        if self._task is not None and self._hanging:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        self._process()

    def eof_received(self) -> bool:
        self._eof = True
        self._process()
        if self._task is None:
            self._close()
        # Keep our side open while an answer is pending; it closes once sent. (TLS cannot
        # half-close: asyncio warns when asked to.)
        return not self._tls

    def pause_writing(self) -> None:
        # A client that sends but does not read: stop reading until it catches up.
        self._writing_paused = True
        self._pause()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._task is None:
            self._resume()
            self._process()  # requests already buffered

    def abort(self) -> None:
        """Close at once (server shutdown), cancelling any pending answer."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.abort()

    # --- request loop --------------------------------------------------------------------------

    def _process(self) -> None:
        while self._task is None and not self._closed and not self._writing_paused:
            try:
                request = self._parser.next()
            except HttpError as exc:
                self._refuse(exc)
                return
            if request is None:
                if self._parser.take_continue() and self._transport is not None:
                    self._transport.write(CONTINUE)
                return
            self._dispatch(request)

    def _dispatch(self, request: ParsedRequest) -> None:
        outcome = self._server.service.handle(
            Request(request.method, request.target, request.headers, request.body)
        )
        if isinstance(outcome, Deferred):
            self._pause()
            self._task = asyncio.get_running_loop().create_task(self._later(outcome, request))
        else:
            self._apply(outcome, request)

    async def _later(self, deferred: Deferred, request: ParsedRequest) -> None:
        outcome: Outcome | Deferred = deferred
        while isinstance(outcome, Deferred):  # the network's delay, then the service's
            if outcome.delay > 0:
                await asyncio.sleep(outcome.delay)
            outcome = outcome.finish()
        if isinstance(outcome, Hang):
            self._hanging = True
            if not self._closed:
                await asyncio.sleep(outcome.seconds)
            self._close()
            return
        self._task = None
        if self._closed:
            return
        self._apply(outcome, request)
        if not self._writing_paused:
            self._resume()
        self._process()
        if self._eof and self._task is None:
            self._close()

    def _apply(self, outcome: Outcome, request: ParsedRequest) -> None:
        if not isinstance(outcome, Reply):
            self._close()  # Drop (and a Hang, which only comes deferred): no answer at all
            return
        self._write(
            outcome,
            keep_alive=request.keep_alive,
            http10=request.http10,
            head_only=request.method == "HEAD",
        )

    # --- writing -------------------------------------------------------------------------------

    def _write(
        self, reply: Reply, *, keep_alive: bool, http10: bool = False, head_only: bool = False
    ) -> None:
        if self._transport is None or self._closed:
            return
        headers = [("content-type", JSON_CONTENT_TYPE), ("x-acs-request-id", reply.request_id)]
        headers += reply.headers
        self._transport.write(
            response_bytes(
                reply.status,
                reply.body,
                headers,
                keep_alive=keep_alive,
                http10=http10,
                head_only=head_only,
            )
        )
        if not keep_alive:
            self._close()

    def _refuse(self, error: HttpError) -> None:
        code = "InvalidParameter" if error.status < 500 else "NotImplemented"
        reply = self._server.service.error_reply(
            errors.ServiceError(error.status, code, f"Malformed HTTP request: {error.message}.")
        )
        self._write(reply, keep_alive=False)
        self._close()

    def _close(self) -> None:
        if not self._closed and self._transport is not None:
            self._closed = True
            self._transport.close()

    def _pause(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()

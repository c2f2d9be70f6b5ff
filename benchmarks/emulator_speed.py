"""Requests per second the emulator sustains: its own server, or the same service on others.

The server runs in a child process (one core), the load in this one (the other core). The
load is RegisterCustomFace calls, each signed (version 3) with its own nonce before the clock
starts, sent over ``--connections`` keep-alive connections, one request in flight on each;
a raw asyncio client reads the answers, so the client's cost stays small. Quota off, no
latency, no faults. Every stack serves the same emulated service (the same checks and
store); only the HTTP layer differs:

* ``emulator``: the shipped server (``aiohttp.web``: an ``Application``, one catch-all route,
  and the fault handling; ``mts_faces/emulator/_server.py``);
* ``aiohttp-web``: the same ``aiohttp.web`` set-up without the emulator's fault handling;
* ``aiohttp-lowlevel``: ``aiohttp.web.Server``, aiohttp's low-level server (no router);
* ``h11``: an asyncio.Protocol on h11 (which comes with httpx), the first version built;

Before the switch to ``aiohttp.web`` the emulator had its own asyncio.Protocol server and
HTTP/1.1 parser (449 lines). Measured side by side, alternating, on the 2 shared cores
(``--repeat 2``, twice each): hand-written 4,641-7,517 req/s at 88-90 us of server CPU per
request; ``aiohttp-web`` 5,835-6,453 req/s at 119-155 us; ``aiohttp-lowlevel`` 4,771-6,592
req/s at 107-117 us. Most of the server's CPU is the service itself (signature checks), so
aiohttp's parser costs about 30 us a request more, and it serves three times the 2,000 req/s
the emulator needs.
* ``uvicorn-h11`` / ``uvicorn-httptools``: uvicorn + starlette (``pip install uvicorn
  starlette httptools``).

    python benchmarks/emulator_speed.py                        # the shipped server
    python benchmarks/emulator_speed.py --stack h11
    python benchmarks/emulator_speed.py --stack aiohttp-web
    python benchmarks/emulator_speed.py --stack uvicorn-httptools
    python benchmarks/emulator_speed.py --client mts           # through MtsFaceClient
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from mts_faces._client import utc_timestamp
from mts_faces._signing import EMPTY_BODY_SHA256, canonical_query, v3_authorization
from mts_faces.emulator import AccessKey, Emulator, EmulatorConfig

STACKS = ("emulator", "h11", "aiohttp-web", "aiohttp-lowlevel", "uvicorn-h11", "uvicorn-httptools")


# --- the server side (child process) ------------------------------------------------------------


def _config() -> EmulatorConfig:
    return EmulatorConfig(qps=None, access_key=AccessKey("LTAIbenchmark", "bench-secret"))


async def _serve_ours() -> None:
    async with Emulator(_config()) as emulator:
        print(emulator.url, flush=True)
        await asyncio.Event().wait()


def _adapt(service: Any, method: str, target: str, headers: Any, body: bytes) -> Any:
    """Hand one request to the emulated service; the benchmark has no faults or latency."""
    from mts_faces.emulator._service import Reply, Request

    outcome = service.handle(Request(method, target, headers, body))
    assert isinstance(outcome, Reply), "faults and latency are off in this benchmark"
    return outcome


async def _serve_h11() -> None:
    import h11

    service = Emulator(_config())._service

    class Connection(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=65536)
            self.body = bytearray()

        def data_received(self, data: bytes) -> None:
            conn = self.conn
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                if isinstance(event, h11.Request):
                    self.request, self.body = event, bytearray()
                elif isinstance(event, h11.Data):
                    self.body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    req = self.request
                    reply = _adapt(
                        service,
                        req.method.decode(),
                        req.target.decode(),
                        [(n.decode(), v.decode()) for n, v in req.headers],
                        bytes(self.body),
                    )
                    headers = [
                        ("content-type", "application/json;charset=utf-8"),
                        ("content-length", str(len(reply.body))),
                        ("x-acs-request-id", reply.request_id),
                    ]
                    out = conn.send(h11.Response(status_code=reply.status, headers=headers))
                    out += conn.send(h11.Data(data=reply.body)) + conn.send(h11.EndOfMessage())
                    self.transport.write(out)
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    self.transport.close()
                    return

    server = await asyncio.get_running_loop().create_server(Connection, "127.0.0.1", 0)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


async def _serve_aiohttp(lowlevel: bool) -> None:
    from aiohttp import web

    service = Emulator(_config())._service

    async def handle(request: web.BaseRequest) -> web.Response:
        outcome = _adapt(
            service,
            request.method,
            request.raw_path,
            [(n.decode("latin-1").lower(), v.decode()) for n, v in request.raw_headers],
            await request.read(),
        )
        return web.Response(
            body=outcome.body,
            status=outcome.status,
            headers={
                "content-type": "application/json;charset=utf-8",
                "x-acs-request-id": outcome.request_id,
            },
        )

    if lowlevel:
        server = web.Server(handle, access_log=None)
        listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
    else:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
    print(f"http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def _serve_uvicorn(http: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request as StarletteRequest
    from starlette.responses import Response
    from starlette.routing import Route

    service = Emulator(_config())._service

    async def endpoint(request: StarletteRequest) -> Response:
        scope = request.scope
        query = scope["query_string"].decode("ascii")
        outcome = _adapt(
            service,
            request.method,
            scope["path"] + ("?" + query if query else ""),
            [(n.decode("latin-1"), v.decode()) for n, v in scope["headers"]],
            await request.body(),
        )
        return Response(
            outcome.body,
            status_code=outcome.status,
            media_type="application/json;charset=utf-8",
            headers={"x-acs-request-id": outcome.request_id},
        )

    app = Starlette(routes=[Route("/", endpoint, methods=["POST", "GET"])])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, http=http, log_level="warning", access_log=False)


# --- the load side ------------------------------------------------------------------------------


def _signed_requests(url: str, count: int) -> list[bytes]:
    """``count`` distinct, ready-to-send RegisterCustomFace requests (10 faces per person)."""
    host = urlsplit(url).netloc
    key = _config().access_key
    assert key is not None
    out = []
    stamp = utc_timestamp()
    category = f"bench-{uuid.uuid4().hex[:8]}"  # a fresh library per batch: no cap errors
    for i in range(count):
        params = {
            "CategoryId": category,
            "PersonId": f"person-{i // 10}",
            "ImageUrl": f"https://img.example.com/{i}.jpg",
        }
        headers = {
            "host": host,
            "x-acs-action": "RegisterCustomFace",
            "x-acs-version": "2014-06-18",
            "x-acs-date": stamp,
            "x-acs-signature-nonce": uuid.uuid4().hex,
            "x-acs-content-sha256": EMPTY_BODY_SHA256,
        }
        headers["authorization"] = v3_authorization(
            "POST", params, headers, key.access_key_id, key.access_key_secret
        )
        lines = [f"POST /?{canonical_query(params)} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append("content-length: 0")
        out.append(("\r\n".join(lines) + "\r\n\r\n").encode())
    return out


async def _raw_worker(url: str, requests: list[bytes], statuses: dict[int, int]) -> None:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        for request in requests:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            statuses[status] = statuses.get(status, 0) + 1
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
    finally:
        writer.close()


async def _raw_load(url: str, total: int, connections: int) -> tuple[float, dict[int, int]]:
    requests = _signed_requests(url, total)
    warmup = _signed_requests(url, connections * 20)
    statuses: dict[int, int] = {}
    await asyncio.gather(
        *(_raw_worker(url, warmup[i::connections], {}) for i in range(connections))
    )
    started = time.perf_counter()
    await asyncio.gather(
        *(_raw_worker(url, requests[i::connections], statuses) for i in range(connections))
    )
    return time.perf_counter() - started, statuses


async def _client_load(url: str, total: int, connections: int) -> tuple[float, dict[int, int]]:
    from mts_faces import MtsFaceClient, MtsFacesError

    key = _config().access_key
    assert key is not None
    statuses: dict[int, int] = {}
    async with MtsFaceClient(
        endpoint=url,
        access_key_id=key.access_key_id,
        access_key_secret=key.access_key_secret,
        qps=1_000_000,
        max_connections=connections,
        max_retries=0,
    ) as client:
        queue = iter(range(total))
        category = f"bench-{uuid.uuid4().hex[:8]}"

        async def worker(offset: int) -> None:
            for i in queue:
                try:
                    await client.register_custom_face(
                        category, f"p{offset}-{i // 10}", f"https://img.example.com/{i}.jpg"
                    )
                    statuses[200] = statuses.get(200, 0) + 1
                except MtsFacesError:
                    statuses[0] = statuses.get(0, 0) + 1

        await client.list_custom_persons("warm-up")
        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(connections)))
        return time.perf_counter() - started, statuses


def _run_server(stack: str) -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", stack], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    url = child.stdout.readline().strip()
    if not url:
        child.kill()
        raise SystemExit(f"the {stack} server did not start (missing packages?)")
    return child, url


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU of process ``pid`` (Linux ``/proc``; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _wait_ready(url: str) -> None:
    parts = urlsplit(url)
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit(f"nothing listens on {url}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--serve``, be its server)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", choices=STACKS, default="emulator")
    parser.add_argument("--client", choices=("raw", "mts"), default="raw")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="end with a JSON summary line")
    parser.add_argument("--serve", choices=STACKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve == "emulator":
        asyncio.run(_serve_ours())
        return 0
    if args.serve == "h11":
        asyncio.run(_serve_h11())
        return 0
    if args.serve in ("aiohttp-web", "aiohttp-lowlevel"):
        asyncio.run(_serve_aiohttp(args.serve == "aiohttp-lowlevel"))
        return 0
    if args.serve:
        _serve_uvicorn(args.serve.split("-")[1])
        return 0
    load: Any = _raw_load if args.client == "raw" else _client_load
    child, url = _run_server(args.stack)
    runs: list[dict[str, Any]] = []
    try:
        asyncio.run(_wait_ready(url))
        for run in range(1, args.repeat + 1):
            cpu_before = _cpu_seconds(child.pid)
            elapsed, statuses = asyncio.run(load(url, args.requests, args.connections))
            cpu_after = _cpu_seconds(child.pid)
            done = sum(statuses.values())
            cpu = ""
            cpu_us = None
            if cpu_before is not None and cpu_after is not None:
                # Includes the warm-up requests and request signing is not in it.
                cpu_us = (cpu_after - cpu_before) / done * 1e6
                cpu = f", server CPU {cpu_us:.0f} us/request"
            runs.append(
                {"requests": done, "seconds": elapsed, "ok": statuses.get(200, 0), "cpu_us": cpu_us}
            )
            print(
                f"{args.stack:<17} client={args.client} run {run}: {done:,} requests over "
                f"{args.connections} keep-alive connections in {elapsed:.2f} s = "
                f"{done / elapsed:,.0f} req/s; statuses {dict(sorted(statuses.items()))}{cpu}",
                flush=True,
            )
    finally:
        child.terminate()
        child.wait(10)
    if args.json:
        rates = sorted(r["requests"] / r["seconds"] for r in runs)
        cpus = sorted(r["cpu_us"] for r in runs if r["cpu_us"] is not None)
        summary = {
            "stack": args.stack,
            "client": args.client,
            "connections": args.connections,
            "runs": runs,
            "median_rps": rates[len(rates) // 2],
            "best_rps": rates[-1],
            "median_cpu_us": cpus[len(cpus) // 2] if cpus else None,
            "all_ok": all(r["ok"] == r["requests"] for r in runs),
        }
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

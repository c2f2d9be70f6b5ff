"""A real ``redis-server`` on an ephemeral loopback port, for the tests that share a quota
through Redis (skipped where the binary is missing)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

REDIS_SERVER = shutil.which("redis-server")
SKIP_REASON = "no redis-server binary on PATH (apt-get install redis-server)"


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
    return False


def start_redis(port: int) -> subprocess.Popen[bytes]:
    """Start redis-server on ``port`` (no persistence) and return once it answers PING."""
    assert REDIS_SERVER is not None
    process = subprocess.Popen(
        [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not _answers_ping(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not start on 127.0.0.1:{port}")
        time.sleep(0.02)  # waiting for a child process to listen, not checking a rate
    return process


def stop_redis(process: subprocess.Popen[bytes]) -> None:
    """Stop a server :func:`start_redis` started."""
    process.terminate()
    process.wait(timeout=10)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A fresh server for the ``with`` block; yields its ``redis://`` URL."""
    port = free_port()
    process = start_redis(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_redis(process)

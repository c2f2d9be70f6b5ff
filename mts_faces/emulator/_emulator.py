"""Start and stop the emulator from async code (``Emulator``) or any thread (``in_thread``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ._config import AccessKey, EmulatorConfig
from ._server import HttpServer
from ._service import Service
from ._stats import EmulatorStats
from ._tls import TlsMaterial, client_context, server_tls

if TYPE_CHECKING:
    from ._inprocess import InProcessTransport

T = TypeVar("T")

IN_PROCESS_ENDPOINT = "http://localhost"
"""The endpoint of an in-process emulator: a loopback name no request is ever sent to."""
# The client's own limiter must never be what a test waits on when the emulator has no quota.
_UNLIMITED_QPS = 1_000_000.0
# How long the rival program may take to import its client (Alibaba's SDK: about a second).
RIVAL_START_TIMEOUT = 60.0


class Emulator:
    """The local MTS service: ``async with Emulator(config) as emulator: ...``.

    ``clock`` (monotonic seconds: quota windows, nonce expiry) and ``wall_clock`` (epoch
    seconds: timestamp checks) can be replaced, e.g. frozen, in tests.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config = config if config is not None else EmulatorConfig()
        self.key: AccessKey = config.access_key or AccessKey.generate()
        """The key pair the emulator accepts (besides ``config.extra_keys``)."""
        keys = {**config.extra_keys, self.key.access_key_id: self.key.access_key_secret}
        self._service = Service(
            config, keys, clock=clock, wall_clock=wall_clock, main_key_id=self.key.access_key_id
        )
        self._server = HttpServer(self._service, max_body=config.max_body)
        self._tls: TlsMaterial | None = None
        self._port: int | None = None
        self._rival: asyncio.subprocess.Process | None = None
        self.rival_report: dict[str, Any] | None = None
        """The process rival's own summary (``rival_client`` "plain" or "official"), once it
        has finished: calls sent, accepted, throttled, failed, and accepted per second."""

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"Emulator({where}, key={self.key!r})"

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Listen on ``config.host:config.port`` (0: an ephemeral port)."""
        if self._port is not None:
            raise RuntimeError("the emulator is already running")
        if self.config.tls and self._tls is None:
            self._tls = server_tls(self.config)
        context = self._tls.server_context if self._tls else None
        self._port = await self._server.start(self.config.host, self.config.port, context)
        config = self.config
        if config.rival_qps > 0 and config.rival_client != "arrivals":
            try:
                await self._start_rival()
            except BaseException:
                await self.aclose()
                raise

    async def _start_rival(self) -> None:
        """Start the rival program's process; it begins at the first request's arrival."""
        config = self.config
        args = ["--url", self.url, "--qps", repr(config.rival_qps)]
        args += ["--start", repr(config.rival_start), "--client", config.rival_client]
        if config.rival_duration is not None:
            args += ["--duration", repr(config.rival_duration)]
        if config.rival_bursty:
            args.append("--bursty")
        env = {
            **os.environ,
            "ALIBABA_CLOUD_ACCESS_KEY_ID": self.key.access_key_id,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": self.key.access_key_secret,
        }
        rival = self._rival = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mts_faces.emulator._rival_client", *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        assert rival.stdout is not None and rival.stdin is not None
        ready = await asyncio.wait_for(rival.stdout.readline(), RIVAL_START_TIMEOUT)
        if ready.strip() != b"ready":
            raise RuntimeError("the rival program did not start (is its client installed?)")
        stdin = rival.stdin

        def begin() -> None:
            stdin.write(f"{time.time()!r}\n".encode())

        self._service.on_first_arrival = begin

    async def aclose(self) -> None:
        """Stop listening and drop every connection (pending answers are never sent); a
        rival program still running is stopped."""
        rival, self._rival = self._rival, None
        if rival is not None:
            assert rival.stdin is not None and rival.stdout is not None
            rival.stdin.close()  # a rival never begun ends at once
            if rival.returncode is None and self._service.on_first_arrival is None:
                with contextlib.suppress(ProcessLookupError):
                    rival.terminate()
            out = await rival.stdout.read()
            await rival.wait()
            with contextlib.suppress(ValueError, IndexError):
                self.rival_report = json.loads(out.splitlines()[-1])
        await self._server.stop()
        self._port = None

    # --- where it is ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on."""
        if self._port is None:
            raise RuntimeError("the emulator is not running")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https`` with TLS): the endpoint to give a client."""
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.config.tls else 'http'}://{host}:{self.port}"

    @property
    def ca_pem(self) -> bytes | None:
        """The PEM of the CA that signed a certificate made on the spot, else None."""
        return self._tls.ca_pem if self._tls else None

    def write_ca(self, path: str | Path) -> None:
        """Write :attr:`ca_pem` to ``path`` for clients that take a CA file."""
        if self.ca_pem is None:
            raise RuntimeError("no generated CA: the emulator runs without TLS or with certfile")
        Path(path).write_bytes(self.ca_pem)

    def client_ssl_context(self) -> ssl.SSLContext | None:
        """An SSL context trusting :attr:`ca_pem`, or None when there is none."""
        return client_context(self.ca_pem) if self.ca_pem else None

    def client_kwargs(self, *, in_process: bool = False, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``MtsFaceClient``: endpoint, key pair, quota, TLS trust.

        ``qps`` is the emulator's quota (so a client built from them is not throttled; a very
        high rate when the emulator has none). ``in_process=True``: no sockets, the client
        sends through :meth:`transport` (the emulator need not be started); otherwise it
        talks to :attr:`url`, trusting the generated CA when there is one. ``overrides``
        replace or add keyword arguments (``client_kwargs(qps=50, max_retries=0)``).
        """
        qps = self.config.qps
        kwargs: dict[str, Any] = {
            "access_key_id": self.key.access_key_id,
            "access_key_secret": self.key.access_key_secret,
            "qps": float(qps) if qps is not None else _UNLIMITED_QPS,
        }
        if in_process:
            kwargs["endpoint"] = IN_PROCESS_ENDPOINT
            kwargs["transport"] = self.transport()
        else:
            kwargs["endpoint"] = self.url
            context = self.client_ssl_context()
            if context is not None:
                kwargs["verify"] = context
        return {**kwargs, **overrides}

    def transport(self) -> InProcessTransport:
        """An httpx transport that hands requests to this emulator without sockets.

        For ``MtsFaceClient(transport=...)`` or ``httpx.AsyncClient(transport=...)``; use it
        on one event loop at a time (the emulator's state is not locked). Faults, latency,
        quota and signature checks apply as over the network.
        """
        from ._inprocess import InProcessTransport

        return InProcessTransport(self._service)

    # --- state ---------------------------------------------------------------------------------

    @property
    def stats(self) -> EmulatorStats:
        """A snapshot of the counters (see :class:`EmulatorStats`)."""
        return self._service.stats

    def reset_stats(self) -> None:
        """Zero the counters and the window peaks; the library stays."""
        self._service.reset_stats()

    def library(self) -> dict[str, Any]:
        """Every stored library, shaped as a ListCustomPersons answer's ``Categories``."""
        return self._service.library.listing()

    def library_json(self, indent: int | None = 2) -> str:
        """:meth:`library` as JSON text."""
        return json.dumps(self.library(), ensure_ascii=False, indent=indent)

    def clear(self) -> None:
        """Forget every library and every nonce seen."""
        self._service.library.clear()
        self._service.nonces.clear()

    def empty_library(self, category_id: str | None = None) -> int:
        """Remove every face and person of library ``category_id`` (None: of every library),
        as someone else emptying it would; returns how many faces went. Nonces stay."""
        return self._service.library.empty(category_id)

    # --- in a thread ---------------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def in_thread(
        cls, config: EmulatorConfig | None = None, **kwargs: Any
    ) -> Iterator[EmulatorThread]:
        """Run an emulator on its own event loop in a background thread, for any caller.

        ``kwargs`` go to :class:`Emulator` (``clock``, ``wall_clock``).
        """
        runner = EmulatorThread(cls(config, **kwargs))
        runner.start()
        try:
            yield runner
        finally:
            runner.stop()


class EmulatorThread:
    """An emulator served by a background thread; its methods are safe to call from others."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mts-faces-emulator", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        """Start the thread and wait until the emulator listens."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the emulator thread did not start in time")
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the emulator and join the thread."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.emulator:
            self._ready.set()
            await self._stop.wait()

    def _call(self, function: Callable[[], T]) -> T:
        # Counters and the library live on the emulator's loop: read them there.
        assert self._loop is not None

        async def run() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    @property
    def key(self) -> AccessKey:
        """The key pair the emulator accepts."""
        return self.emulator.key

    @property
    def url(self) -> str:
        """The endpoint to give a client."""
        return self.emulator.url

    @property
    def ca_pem(self) -> bytes | None:
        """The generated CA's PEM, when TLS made one."""
        return self.emulator.ca_pem

    def client_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``MtsFaceClient``: endpoint, key pair, quota, TLS trust.

        ``overrides`` replace or add keyword arguments, as in :meth:`Emulator.client_kwargs`.
        """
        return self.emulator.client_kwargs(**overrides)

    @property
    def stats(self) -> EmulatorStats:
        """A snapshot of the counters, taken on the emulator's loop."""
        return self._call(lambda: self.emulator.stats)

    def reset_stats(self) -> None:
        """Zero the counters and window peaks."""
        self._call(self.emulator.reset_stats)

    def library(self) -> dict[str, Any]:
        """Every stored library (see :meth:`Emulator.library`)."""
        return self._call(self.emulator.library)

    def clear(self) -> None:
        """Forget every library and nonce."""
        self._call(self.emulator.clear)

    def empty_library(self, category_id: str | None = None) -> int:
        """Empty one library, or all (see :meth:`Emulator.empty_library`)."""
        return self._call(lambda: self.emulator.empty_library(category_id))

"""The emulator in its own process (``mts-faces emulate``), so it never shares the client's CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from mts_faces.emulator import AccessKey

ENV_ID = "ALIBABA_CLOUD_ACCESS_KEY_ID"
ENV_SECRET = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"


class EmulatorProcess:
    """``with EmulatorProcess(qps=100) as emu:`` ``emu.url``, ``emu.key``; ``emu.stats`` after.

    The key pair is drawn here and handed to the child through the environment; with ``tls``
    the child writes its CA to :attr:`ca_file` for clients to trust.
    """

    def __init__(
        self,
        *,
        qps: float | None,
        latency: float = 0.0,
        jitter: float = 0.0,
        tls: bool = False,
        start_timeout: float = 30.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.key = AccessKey.generate()
        self._dir = tempfile.TemporaryDirectory(prefix="mts-bench-")
        self.ca_file: str | None = str(Path(self._dir.name) / "ca.pem") if tls else None
        self._args = ["--qps", str(qps or 0), "--latency", str(latency), "--jitter", str(jitter)]
        if tls:
            self._args += ["--tls", "--ca-out", str(self.ca_file)]
        self._args += extra_args  # e.g. --network-jitter, --rival-qps
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.stats: dict[str, Any] = {}
        """The emulator's statistics, read from its exit report."""

    def env(self) -> dict[str, str]:
        """This process's environment plus the key pair (for client child processes)."""
        return {
            **os.environ,
            ENV_ID: self.key.access_key_id,
            ENV_SECRET: self.key.access_key_secret,
        }

    def __enter__(self) -> EmulatorProcess:
        # A file, not a pipe: nobody reads the child's stderr until it has exited.
        stderr = self._stderr = open(Path(self._dir.name) / "stderr.txt", "w")
        command = ["emulate", "--host", "127.0.0.1", "--port", "0", *self._args]
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "mts_faces.cli", *command],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=self.env(),
        )
        assert self._proc.stdout is not None
        self.url = self._proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the emulator did not start: {self._read_stderr()[-2000:]}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._stderr.close()
        for line in reversed(self._read_stderr().splitlines()):
            if line.startswith("{"):
                self.stats = json.loads(line)
                break
        self._dir.cleanup()

    def _read_stderr(self) -> str:
        return (Path(self._dir.name) / "stderr.txt").read_text("utf-8", errors="replace")

"""Pytest fixtures serving the local MTS emulator: ``pytest_plugins = ["mts_faces.testing"]``.

Two ways to serve it, as moto offers for boto3:

- ``mts_emulator`` / ``mts_client_kwargs``: a running emulator (an
  :class:`~mts_faces.emulator.EmulatorThread`) on an ephemeral 127.0.0.1 port, served by a
  background thread with its own event loop, so sync tests, subprocesses and the CLI can use it.
- ``mts_emulator_in_process`` / ``mts_client_kwargs_in_process``: no sockets; the client's
  httpx transport hands each request to the emulator's service core on the test's own loop.
  The fastest, for async tests of code that takes an ``MtsFaceClient``.

``MtsFaceClient(**kwargs)`` with either set of kwargs talks to its emulator with the right
endpoint, key pair, quota (``qps``) and TLS trust. Override ``mts_emulator_config`` to change
the quota, faults or TLS::

    @pytest.fixture
    def mts_emulator_config():
        return EmulatorConfig(qps=5, drop_rate=0.1, seed=1)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .emulator import Emulator, EmulatorConfig, EmulatorThread

__all__ = [
    "mts_client_kwargs",
    "mts_client_kwargs_in_process",
    "mts_emulator",
    "mts_emulator_config",
    "mts_emulator_in_process",
]


@pytest.fixture
def mts_emulator_config() -> EmulatorConfig:
    """The emulator's settings: by default the service's own (100 calls/s, 10 faces)."""
    return EmulatorConfig(host="127.0.0.1", port=0)


@pytest.fixture
def mts_emulator(mts_emulator_config: EmulatorConfig) -> Iterator[EmulatorThread]:
    """A running emulator for one test; its library and counters start empty."""
    with Emulator.in_thread(mts_emulator_config) as emulator:
        yield emulator


@pytest.fixture
def mts_client_kwargs(mts_emulator: EmulatorThread) -> dict[str, Any]:
    """``MtsFaceClient(**mts_client_kwargs)`` talks to ``mts_emulator``."""
    return mts_emulator.client_kwargs()


@pytest.fixture
def mts_emulator_in_process(mts_emulator_config: EmulatorConfig) -> Emulator:
    """An emulator that is never started: reached through its in-process transport only.

    Read ``stats`` and ``library()`` from the test's own thread (it is not locked).
    """
    return Emulator(mts_emulator_config)


@pytest.fixture
def mts_client_kwargs_in_process(mts_emulator_in_process: Emulator) -> dict[str, Any]:
    """``MtsFaceClient(**mts_client_kwargs_in_process)`` reaches the emulator without sockets."""
    return mts_emulator_in_process.client_kwargs(in_process=True)

"""Pytest fixtures serving the local MTS emulator: ``pytest_plugins = ["mts_faces.testing"]``.

``mts_emulator`` yields a running emulator (an :class:`~mts_faces.emulator.EmulatorThread`)
on an ephemeral 127.0.0.1 port, served by a background thread with its own event loop, so
sync tests and tests on any event loop can use it. ``mts_client_kwargs`` are the keyword
arguments for ``MtsFaceClient`` (endpoint, key pair, TLS trust). Override
``mts_emulator_config`` to change the quota, faults or TLS::

    @pytest.fixture
    def mts_emulator_config():
        return EmulatorConfig(qps=5, drop_rate=0.1, seed=1)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .emulator import Emulator, EmulatorConfig, EmulatorThread

__all__ = ["mts_client_kwargs", "mts_emulator", "mts_emulator_config"]


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

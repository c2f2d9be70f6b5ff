"""A local emulator of the MTS custom-face API, for demos, integration tests and benchmarks.

It serves RegisterCustomFace, UnregisterCustomFace, ListCustomPersons and TagCustomPerson over
HTTP/1.1 on loopback, verifies version-3 and version-1 signatures independently of the
client, enforces the per-key quota over any sliding second and the 10-faces-per-person cap,
and injects faults on request. ``async with Emulator(config) as emulator`` in async code;
``with Emulator.in_thread(config) as emulator`` from anywhere else. ``GET /_emulator/stats``
answers its counters as JSON, for a process that only has its URL.
"""

from ._config import ACTIONS, AccessKey, EmulatorConfig
from ._emulator import Emulator, EmulatorThread
from ._errors import FACE_LIMIT_EXCEEDED
from ._stats import FAULT_KINDS, EmulatorStats

__all__ = [
    "ACTIONS",
    "FACE_LIMIT_EXCEEDED",
    "FAULT_KINDS",
    "AccessKey",
    "Emulator",
    "EmulatorConfig",
    "EmulatorStats",
    "EmulatorThread",
]

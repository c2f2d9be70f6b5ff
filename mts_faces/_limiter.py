"""Rate limiting: every attempt the client makes first takes a slot here.

(Provisional: a plain aiolimiter bucket. The exact window limiter replaces it.)
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from aiolimiter import AsyncLimiter


@runtime_checkable
class Limiter(Protocol):
    """What the client needs of a rate limiter: a slot per attempt, and feedback."""

    async def acquire(self) -> None:
        """Wait until one more call may start now."""

    def on_success(self) -> None:
        """The call that took the last slot was answered without throttling."""

    def on_throttled(self) -> None:
        """The service throttled a call: the account quota is busier than we thought."""


class BucketLimiter:
    """A plain aiolimiter token bucket of ``qps`` calls per second."""

    def __init__(self, qps: float = 100.0) -> None:
        self._bucket = AsyncLimiter(qps, 1.0)

    async def acquire(self) -> None:
        await self._bucket.acquire()

    def on_success(self) -> None:
        pass

    def on_throttled(self) -> None:
        pass

"""When to try a call again and how long to wait first: exponential backoff, full jitter."""

from __future__ import annotations

import random

import attrs

# A server-given wait is obeyed up to this many seconds (the official SDK caps it likewise).
MAX_RETRY_AFTER = 60.0


@attrs.frozen
class RetryPolicy:
    """``max_retries`` more attempts after the first, waiting ``uniform(0, base * 2**n)``.

    Full jitter (each wait drawn from zero to the exponential ceiling) spreads the retries of
    many concurrent callers instead of having them collide again in lock-step.
    """

    max_retries: int = 3
    backoff_base: float = 0.2
    backoff_max: float = 8.0

    def __attrs_post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    def delay(
        self, retry: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``retry`` (1-based); a server-given wait wins."""
        if retry_after is not None and retry_after > 0:
            return min(retry_after, MAX_RETRY_AFTER)
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (retry - 1))
        return (rng or random).uniform(0, ceiling)


def parse_retry_after(value: str | None) -> float | None:
    """The ``x-acs-retry-after`` header in seconds, or None when absent or not a positive int.

    The header holds a whole number of milliseconds: the official SDK hands it unchanged to
    a sleep that divides by 1000.
    """
    if not value:
        return None
    try:
        wait_ms = int(value.strip())
    except ValueError:
        return None
    return wait_ms / 1000 if wait_ms > 0 else None

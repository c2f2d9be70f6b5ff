"""Shards: one job spread over several processes or machines.

``--shard K/N`` takes the rows whose (category, person), casefolded as the registrar compares
them, hashes to shard K of N (1-based). All of a person's rows land in one shard, so the
per-person guarantees (the cap, one call in flight, exactly once) hold across shards; each
shard keeps its own ledger. The hash is stable (BLAKE2b of the UTF-8 key), the same on every
machine and Python version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import attrs

from .manifest import BadRow, ManifestEntry


@attrs.frozen
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __attrs_post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise ValueError(f"shard must be K/N with 1 <= K <= N, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` (e.g. ``"2/4"``); raises ``ValueError`` naming the problem."""
        index, sep, count = text.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"shard must be K/N (e.g. 2/4), got {text!r}")
        return cls(int(index), int(count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, category_id: str, person_id: str) -> bool:
        """Whether the person (category, person) belongs to this shard."""
        return shard_of(category_id, person_id, self.count) == self.index

    def rows(self, entries: Iterable[ManifestEntry]) -> Iterator[ManifestEntry]:
        """The entries of this shard; bad rows (no person to hash) go to shard 1 only, so
        that the shards' reports add up to the manifest."""
        for entry in entries:
            if isinstance(entry, BadRow):
                if self.index == 1:
                    yield entry
            elif self.holds(entry.category_id, entry.person_id):
                yield entry


def shard_of(category_id: str, person_id: str, count: int) -> int:
    """The shard (1-based, of ``count``) of the person (category, person)."""
    key = f"{category_id.casefold()}\x1f{person_id.casefold()}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") % count + 1

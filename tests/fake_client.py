"""An in-memory stand-in for MtsFaceClient, for registrar unit tests without HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from mts_faces import (
    AmbiguousOutcomeError,
    Category,
    CustomPersons,
    Face,
    InvalidParameterError,
    Person,
    RateLimiterError,
    RegisteredFace,
    TransportError,
)
from mts_faces._models import Acknowledgement


class FakeClient:
    """Stores faces per (category, person), case-insensitively, and counts calls.

    ``fault(action, n)`` may return "lost" (store, then the answer is lost), "drop" (not
    stored, answer lost), "refused" (not sent), "limiter-down" (the shared limiter gave up:
    not sent) or None, for the n-th call of that action. ``priorities`` holds the priority
    lane of every call.
    """

    endpoint = "https://fake.example.com"
    timeout = 1.0

    class credentials:  # the attribute the registrar reads (AccessKeyId only)
        access_key_id = "fake-key"

        @classmethod
        async def get_credentials(cls) -> Any:
            return cls

    def __init__(self, fault: Callable[[str, int], str | None] | None = None) -> None:
        self.store: dict[tuple[str, str], list[Face]] = {}
        self.names: dict[tuple[str, str], str] = {}
        self.calls: dict[str, int] = {}
        self.attempts = 0
        self.qps = 1000.0
        self.current_rate: float | None = None
        self.max_connections = 16
        self.fault = fault
        self.max_in_flight_per_person = 0
        self.priorities: list[str] = []
        self._in_flight: dict[tuple[str, str], int] = {}

    def _count(self, action: str, priority: str = "interactive") -> str | None:
        self.priorities.append(priority)
        n = self.calls[action] = self.calls.get(action, 0) + 1
        fault = self.fault(action, n) if self.fault else None
        if fault == "limiter-down":
            raise RateLimiterError("the shared limiter's Redis stayed unreachable")
        self.attempts += 1
        return fault

    async def register_custom_face(
        self,
        category_id: str,
        person_id: str,
        image_url: str,
        person_name: str | None = None,
        *,
        max_retries: int | None = None,
        priority: str = "interactive",
    ) -> RegisteredFace:
        key = (category_id.casefold(), person_id.casefold())
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        self.max_in_flight_per_person = max(self.max_in_flight_per_person, self._in_flight[key])
        try:
            fault = self._count("RegisterCustomFace", priority)
            await asyncio.sleep(0)
            if fault == "refused":
                raise TransportError("refused", request_sent=False)
            if fault == "drop":
                raise AmbiguousOutcomeError(
                    "RegisterCustomFace", TransportError("dropped", request_sent=True)
                )
            faces = self.store.setdefault(key, [])
            if len(faces) >= 10:
                raise InvalidParameterError(
                    "InvalidParameter.FaceLimitExceeded", "10 faces max", http_status=400
                )
            face = Face(uuid.uuid4().hex, image_url)
            faces.append(face)
            self.names.setdefault(key, person_id)
            if fault == "lost":
                raise AmbiguousOutcomeError(
                    "RegisterCustomFace", TransportError("timeout", request_sent=True)
                )
            return RegisteredFace(face.face_id, f"req-{face.face_id[:6]}")
        finally:
            self._in_flight[key] -= 1

    async def list_custom_persons(
        self,
        category_id: str | None = None,
        person_id: str | None = None,
        *,
        max_retries: int | None = None,
        priority: str = "interactive",
    ) -> CustomPersons:
        fault = self._count("ListCustomPersons", priority)
        if fault == "list-fails":
            raise TransportError("listing refused", request_sent=False)
        await asyncio.sleep(0)
        by_category: dict[str, list[Person]] = {}
        for (cat, person), faces in self.store.items():
            if category_id is not None and cat != category_id.casefold():
                continue
            if person_id is not None and person != person_id.casefold():
                continue
            by_category.setdefault(cat, []).append(
                Person(self.names.get((cat, person), person), faces=tuple(faces))
            )
        return CustomPersons(
            "list",
            tuple(Category(cat, persons=tuple(persons)) for cat, persons in by_category.items()),
        )

    async def unregister_custom_face(
        self,
        category_id: str,
        person_id: str,
        face_id: str,
        *,
        max_retries: int | None = None,
        priority: str = "interactive",
    ) -> Acknowledgement:
        self._count("UnregisterCustomFace", priority)
        key = (category_id.casefold(), person_id.casefold())
        self.store[key] = [f for f in self.store.get(key, []) if f.face_id != face_id]
        return Acknowledgement("x")

    def all_face_ids(self) -> list[str]:
        return [f.face_id for faces in self.store.values() for f in faces]

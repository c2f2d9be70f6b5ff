"""The four operations: their parameters, the service's limits on them, and what each does.

Checking (``validate``) happens when a request arrives; the work (``execute``) may run later,
after the emulated latency. Unknown parameters are ignored, as the service ignores them
(``OwnerId`` and friends included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from . import _errors as errors
from ._config import (
    LIST_CUSTOM_PERSONS,
    REGISTER_CUSTOM_FACE,
    TAG_CUSTOM_PERSON,
    UNREGISTER_CUSTOM_FACE,
)
from ._library import Library

MAX_ID_LENGTH = 120


@attrs.frozen
class ActionSpec:
    """Which parameters an action requires, and which are caller-chosen IDs."""

    required: tuple[str, ...]
    ids: tuple[str, ...]
    urls: tuple[str, ...] = ()


SPECS: Mapping[str, ActionSpec] = {
    REGISTER_CUSTOM_FACE: ActionSpec(
        ("CategoryId", "PersonId", "ImageUrl"), ("CategoryId", "PersonId"), ("ImageUrl",)
    ),
    UNREGISTER_CUSTOM_FACE: ActionSpec(
        ("CategoryId", "PersonId", "FaceId"), ("CategoryId", "PersonId")
    ),
    LIST_CUSTOM_PERSONS: ActionSpec((), ("CategoryId", "PersonId")),
    TAG_CUSTOM_PERSON: ActionSpec(("CategoryId", "PersonId"), ("CategoryId", "PersonId")),
}


def validate(action: str, params: Mapping[str, str]) -> None:
    """Raise MissingParameter or InvalidParameter as the service would; ``action`` is known."""
    spec = SPECS[action]
    for name in spec.required:
        if not params.get(name):
            raise errors.missing_parameter(name)
    for name in spec.ids:
        value = params.get(name)
        if not value:
            continue
        if not value.strip():
            raise errors.invalid_parameter(name, "is blank")
        if len(value) > MAX_ID_LENGTH:
            raise errors.invalid_parameter(
                name, f"is {len(value)} characters long, more than {MAX_ID_LENGTH}"
            )
    for name in spec.urls:
        _check_url(name, params[name])


def _check_url(name: str, value: str) -> None:
    try:
        parts = urlsplit(value.strip())
        host = parts.hostname
    except ValueError:
        raise errors.invalid_parameter(name, "is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise errors.invalid_parameter(name, "must be an http or https URL")
    if not host:
        raise errors.invalid_parameter(name, "must name a host")


def execute(
    action: str, params: Mapping[str, str], library: Library, new_face_id: Callable[[], str]
) -> dict[str, Any]:
    """Carry out a validated call on ``library``; the answer's fields, RequestId aside."""
    category_id = params.get("CategoryId") or None
    person_id = params.get("PersonId") or None
    if action == LIST_CUSTOM_PERSONS:
        return {"Categories": library.listing(category_id, person_id)}
    assert category_id is not None and person_id is not None  # validate() saw to it
    if action == REGISTER_CUSTOM_FACE:
        face = library.register(
            category_id, person_id, params["ImageUrl"], new_face_id(), params.get("PersonName")
        )
        return {"FaceId": face.face_id}
    if action == UNREGISTER_CUSTOM_FACE:
        library.unregister(category_id, person_id, params["FaceId"])
        return {}
    library.tag(
        category_id,
        person_id,
        person_name=params.get("PersonName"),
        person_description=params.get("PersonDescription"),
        category_name=params.get("CategoryName"),
        category_description=params.get("CategoryDescription"),
    )
    return {}

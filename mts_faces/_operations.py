"""One table drives the wire format: each operation's action, parameters and answer parser.

Input is validated here, before any network call, against the limits the service documents:
IDs are non-empty and at most 120 characters, an image URL is http(s) with a host; no text
may hold a lone surrogate (it cannot be signed), and IDs and URLs no control character.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from ._exceptions import ValidationError
from ._models import (
    Acknowledgement,
    CustomPersons,
    RegisteredFace,
    parse_acknowledgement,
    parse_custom_persons,
    parse_registered_face,
)

API_VERSION = "2014-06-18"
MAX_ID_LENGTH = 120
MAX_FACES_PER_PERSON = 10


# Unicode's categories Cs (surrogates) and Cc (control characters), as regular expressions.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_OR_CONTROL = re.compile("[\ud800-\udfff\x00-\x1f\x7f-\x9f]")


def _check_text(field: str, value: object, *, allow_controls: bool = False) -> str:
    """A str that can be signed and sent.

    An unpaired surrogate (JSON ``"\\ud800"``) cannot be encoded as UTF-8, so it cannot be
    signed; a NUL or a line break in an ID or URL is a broken export, never a real name.
    """
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    found = (_SURROGATE if allow_controls else _SURROGATE_OR_CONTROL).search(value)
    if found is not None:
        code = ord(found.group())
        if 0xD800 <= code <= 0xDFFF:
            raise ValidationError(field, f"contains U+{code:04X}, an unpaired surrogate")
        raise ValidationError(field, f"contains the control character U+{code:04X}")
    return value


def validate_id(field: str, value: str) -> str:
    """A caller-chosen ID: a non-empty string of at most 120 characters, no control
    character."""
    _check_text(field, value)
    if not value.strip():
        raise ValidationError(field, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValidationError(
            field, f"is {len(value)} characters long; the limit is {MAX_ID_LENGTH}"
        )
    return value


def validate_url(field: str, value: str) -> str:
    """An image URL the service can fetch: http or https, with a host."""
    _check_text(field, value)
    try:
        parts = urlsplit(value.strip())
    except ValueError as exc:
        raise ValidationError(field, f"is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationError(field, f"must be an http or https URL, got {value[:80]!r}")
    if not parts.hostname:
        raise ValidationError(field, f"has no host: {value[:80]!r}")
    return value


def validate_text(field: str, value: str) -> str:
    """A free-text parameter (names, descriptions): any string UTF-8 can encode."""
    return _check_text(field, value, allow_controls=True)


@attrs.frozen
class Param:
    """One parameter: its wire name, whether it is required, and its validator."""

    wire_name: str
    validate: Callable[[str, str], str]
    required: bool = False


@attrs.frozen
class Operation:
    """An RPC action: its parameters (by Python name), answer parser and retry safety."""

    action: str
    params: Mapping[str, Param]
    parse: Callable[[dict[str, Any]], Any]
    # False where a retry after a lost answer could do the work twice.
    idempotent: bool = True

    def build_params(self, values: Mapping[str, str | None]) -> dict[str, str]:
        """Validate ``values`` (Python names) and return the wire parameters; None is omitted."""
        wire: dict[str, str] = {}
        for name, param in self.params.items():
            value = values.get(name)
            if value is None:
                if param.required:
                    raise ValidationError(param.wire_name, "is required")
                continue
            wire[param.wire_name] = param.validate(param.wire_name, value)
        return wire


def _id(wire_name: str, required: bool = True) -> Param:
    return Param(wire_name, validate_id, required)


def _text(wire_name: str) -> Param:
    return Param(wire_name, validate_text)


REGISTER_CUSTOM_FACE = Operation(
    "RegisterCustomFace",
    {
        "category_id": _id("CategoryId"),
        "person_id": _id("PersonId"),
        "image_url": Param("ImageUrl", validate_url, required=True),
        "person_name": _text("PersonName"),
    },
    parse_registered_face,
    idempotent=False,
)
UNREGISTER_CUSTOM_FACE = Operation(
    "UnregisterCustomFace",
    {"category_id": _id("CategoryId"), "person_id": _id("PersonId"), "face_id": _id("FaceId")},
    parse_acknowledgement,
)
LIST_CUSTOM_PERSONS = Operation(
    "ListCustomPersons",
    {"category_id": _id("CategoryId", False), "person_id": _id("PersonId", False)},
    parse_custom_persons,
)
TAG_CUSTOM_PERSON = Operation(
    "TagCustomPerson",
    {
        "category_id": _id("CategoryId"),
        "person_id": _id("PersonId"),
        "person_name": _text("PersonName"),
        "person_description": _text("PersonDescription"),
        "category_name": _text("CategoryName"),
        "category_description": _text("CategoryDescription"),
    },
    parse_acknowledgement,
)

__all__ = [
    "LIST_CUSTOM_PERSONS",
    "REGISTER_CUSTOM_FACE",
    "TAG_CUSTOM_PERSON",
    "UNREGISTER_CUSTOM_FACE",
    "Acknowledgement",
    "CustomPersons",
    "Operation",
    "RegisteredFace",
]

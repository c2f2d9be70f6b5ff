"""The values the operations return: frozen attrs classes, parsed from the service's JSON."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from ._exceptions import ResponseFormatError


@attrs.frozen
class RegisteredFace:
    """The answer to ``RegisterCustomFace``: the new face's ID and the call's RequestId."""

    face_id: str
    request_id: str


@attrs.frozen
class Acknowledgement:
    """The answer to a call that returns nothing but its RequestId."""

    request_id: str


@attrs.frozen
class Face:
    """One registered face image of a person."""

    face_id: str
    image_url: str


@attrs.frozen
class Person:
    """A custom person (PersonId) and its faces."""

    person_id: str
    person_name: str | None = None
    person_description: str | None = None
    faces: tuple[Face, ...] = ()


@attrs.frozen
class Category:
    """A custom figure library (CategoryId) and its persons."""

    category_id: str
    category_name: str | None = None
    category_description: str | None = None
    persons: tuple[Person, ...] = ()


@attrs.frozen
class CustomPersons:
    """The answer to ``ListCustomPersons``: categories, then persons, then faces."""

    request_id: str
    categories: tuple[Category, ...] = ()

    def iter_faces(self) -> Iterator[tuple[Category, Person, Face]]:
        """Every face with the person and category it belongs to."""
        for category in self.categories:
            for person in category.persons:
                for face in person.faces:
                    yield category, person, face


def _unwrap(container: Any, key: str) -> list[dict[str, Any]]:
    # The service wraps lists as {"Category": [...]}; tolerate a bare list or absence. An item
    # that is not an object is a damaged answer, never something to skip: a listing that
    # silently lost a face would read as "not stored".
    if container is None:
        return []
    items = container.get(key, []) if isinstance(container, dict) else container
    if not isinstance(items, list):
        raise ResponseFormatError(f"expected a list under {key!r}, got {type(items).__name__}")
    for item in items:
        if not isinstance(item, dict):
            raise ResponseFormatError(f"a {key} entry is {type(item).__name__}, not an object")
    return items


def _required(record: dict[str, Any], name: str, what: str) -> str:
    value = record.get(name)
    if value is None or value == "":
        raise ResponseFormatError(f"ListCustomPersons answer has a {what} without {name}")
    return str(value)


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def request_id_of(body: dict[str, Any]) -> str:
    """The RequestId every answer carries."""
    return str(body.get("RequestId", ""))


def parse_registered_face(body: dict[str, Any]) -> RegisteredFace:
    """Parse a ``RegisterCustomFace`` answer; a missing FaceId is a format error."""
    face_id = body.get("FaceId")
    if not face_id:
        raise ResponseFormatError("RegisterCustomFace answer has no FaceId")
    return RegisteredFace(face_id=str(face_id), request_id=request_id_of(body))


def parse_acknowledgement(body: dict[str, Any]) -> Acknowledgement:
    """Parse an answer that carries only a RequestId."""
    return Acknowledgement(request_id=request_id_of(body))


def parse_custom_persons(body: dict[str, Any]) -> CustomPersons:
    """Parse a ``ListCustomPersons`` answer into the category → person → face tree.

    A malformed or partial answer (no ``Categories``, an entry that is not an object, a
    category, person or face without its ID, a face without ``ImageUrl``) raises
    :class:`ResponseFormatError`: it must never read as "nothing stored".
    """
    if not isinstance(body.get("Categories"), dict | list):
        raise ResponseFormatError("ListCustomPersons answer has no Categories")
    categories = tuple(
        Category(
            category_id=_required(c, "CategoryId", "category"),
            category_name=_opt(c.get("CategoryName")),
            category_description=_opt(c.get("CategoryDescription")),
            persons=tuple(
                Person(
                    person_id=_required(p, "PersonId", "person"),
                    person_name=_opt(p.get("PersonName")),
                    person_description=_opt(p.get("PersonDescription")),
                    faces=tuple(
                        Face(
                            face_id=_required(f, "FaceId", "face"),
                            image_url=_required(f, "ImageUrl", "face"),
                        )
                        for f in _unwrap(p.get("Faces"), "Face")
                    ),
                )
                for p in _unwrap(c.get("Persons"), "Person")
            ),
        )
        for c in _unwrap(body.get("Categories"), "Category")
    )
    return CustomPersons(request_id=request_id_of(body), categories=categories)

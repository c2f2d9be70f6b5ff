"""The stored custom libraries: categories, persons, faces, all in memory.

IDs are case-insensitive as the service's are: each is matched casefolded and kept in the
spelling first seen. Dicts keep insertion order, so listings come out in creation order.
"""

from __future__ import annotations

from typing import Any

import attrs

from . import _errors as errors

ALL = "ALL"


@attrs.define
class StoredFace:
    """One registered image."""

    face_id: str
    image_url: str


@attrs.define
class StoredPerson:
    """A person and its faces."""

    person_id: str
    name: str | None = None
    description: str | None = None
    faces: list[StoredFace] = attrs.Factory(list)


@attrs.define
class StoredCategory:
    """A custom figure library."""

    category_id: str
    name: str | None = None
    description: str | None = None
    persons: dict[str, StoredPerson] = attrs.Factory(dict)


class Library:
    """Every category the emulator stores, with the per-person face cap."""

    def __init__(self, max_faces_per_person: int) -> None:
        self.max_faces = max_faces_per_person
        self._categories: dict[str, StoredCategory] = {}

    @property
    def face_count(self) -> int:
        """Faces stored, over all libraries."""
        return sum(len(p.faces) for c in self._categories.values() for p in c.persons.values())

    def clear(self) -> None:
        """Remove every library."""
        self._categories.clear()

    def empty(self, category_id: str | None = None) -> int:
        """Remove one library (None: all); returns how many faces it held."""
        if category_id is None:
            gone = self.face_count
            self.clear()
            return gone
        category = self._categories.pop(category_id.casefold(), None)
        return sum(len(p.faces) for p in category.persons.values()) if category else 0

    def _person(self, category_id: str, person_id: str) -> StoredPerson:
        category = self._categories.get(category_id.casefold())
        if category is None:
            category = self._categories[category_id.casefold()] = StoredCategory(category_id)
        person = category.persons.get(person_id.casefold())
        if person is None:
            person = category.persons[person_id.casefold()] = StoredPerson(person_id)
        return person

    def check_room(self, category_id: str, person_id: str) -> None:
        """Raise the cap error when the person has no room for one more face."""
        category = self._categories.get(category_id.casefold())
        person = category.persons.get(person_id.casefold()) if category else None
        if person is not None and len(person.faces) >= self.max_faces:
            raise errors.face_limit_exceeded(self.max_faces)

    def register(
        self,
        category_id: str,
        person_id: str,
        image_url: str,
        face_id: str,
        person_name: str | None = None,
    ) -> StoredFace:
        """Store one face for the person (created on first use)."""
        self.check_room(category_id, person_id)
        person = self._person(category_id, person_id)
        if person_name is not None:
            person.name = person_name
        face = StoredFace(face_id, image_url)
        person.faces.append(face)
        return face

    def unregister(self, category_id: str, person_id: str, face_id: str) -> int:
        """Remove a face, a person's faces (``ALL``), or a library (person ``ALL``).

        Returns how many faces went; a person or library removed as a whole goes with them.
        """
        category = self._categories.get(category_id.casefold())
        if category is None:
            raise errors.not_found("Category", category_id)
        if person_id == ALL:
            del self._categories[category_id.casefold()]
            return sum(len(p.faces) for p in category.persons.values())
        person = category.persons.get(person_id.casefold())
        if person is None:
            raise errors.not_found("Person", person_id)
        if face_id == ALL:
            del category.persons[person_id.casefold()]
            return len(person.faces)
        for index, face in enumerate(person.faces):
            if face.face_id == face_id.lower():
                del person.faces[index]
                return 1
        raise errors.not_found("Face", face_id)

    def tag(
        self,
        category_id: str,
        person_id: str,
        *,
        person_name: str | None,
        person_description: str | None,
        category_name: str | None,
        category_description: str | None,
    ) -> None:
        """Set the given names and descriptions; the person and library are created if new."""
        person = self._person(category_id, person_id)
        category = self._categories[category_id.casefold()]
        if person_name is not None:
            person.name = person_name
        if person_description is not None:
            person.description = person_description
        if category_name is not None:
            category.name = category_name
        if category_description is not None:
            category.description = category_description

    def listing(
        self, category_id: str | None = None, person_id: str | None = None
    ) -> dict[str, Any]:
        """The ``Categories`` object of a ListCustomPersons answer, optionally narrowed."""
        if category_id is None:
            categories = list(self._categories.values())
        else:
            found = self._categories.get(category_id.casefold())
            categories = [found] if found is not None else []
        wanted = person_id.casefold() if person_id is not None else None
        out = []
        for category in categories:
            persons = [p for key, p in category.persons.items() if wanted is None or key == wanted]
            if wanted is not None and not persons:
                continue
            out.append(_category_json(category, persons))
        return {"Category": out}


def _category_json(category: StoredCategory, persons: list[StoredPerson]) -> dict[str, Any]:
    return _without_none(
        {
            "CategoryId": category.category_id,
            "CategoryName": category.name,
            "CategoryDescription": category.description,
            "Persons": {
                "Person": [
                    _without_none(
                        {
                            "PersonId": p.person_id,
                            "PersonName": p.name,
                            "PersonDescription": p.description,
                            "Faces": {
                                "Face": [
                                    {"FaceId": f.face_id, "ImageUrl": f.image_url} for f in p.faces
                                ]
                            },
                        }
                    )
                    for p in persons
                ]
            },
        }
    )


def _without_none(record: dict[str, Any]) -> dict[str, Any]:
    # The service leaves out attributes that were never set rather than sending null.
    return {k: v for k, v in record.items() if v is not None}

"""Regression tests for defects the reliability work found (each failed before its fix),
plus the guards that hold around them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import respx

from mts_faces import MtsFaceClient, ValidationError
from mts_faces._http import HttpTransport
from mts_faces.manifest import FaceRow
from mts_faces.registrar import Registrar

from .fake_client import FakeClient


class ExplodingClient(FakeClient):
    """A client whose registration fails with an error that is not an MtsFacesError."""

    async def register_custom_face(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unexpected")


async def test_an_unexpected_error_does_not_hang_the_run() -> None:
    registrar = Registrar(
        ExplodingClient(),  # type: ignore[arg-type]
        settle=0.0,
        drain_timeout=0.1,
    )
    rows = [FaceRow("lib", "p", "https://img.example.com/1.jpg")]
    try:
        # A guard, not a timing: the run needs microseconds; a second means it hangs.
        await asyncio.wait_for(registrar.register_all(rows), 1.0)
    except RuntimeError:
        pass  # surfacing the error is fine; hanging is not
    except TimeoutError:
        pytest.fail("the run hung after a worker died")


async def test_client_refuses_text_that_cannot_be_encoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(HttpTransport, "default_backend", "httpx")  # so that respx sees it
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post().respond(200, json={"FaceId": "f", "RequestId": "r"})
        async with MtsFaceClient(
            access_key_id="i", access_key_secret="s", endpoint="http://127.0.0.1:9"
        ) as client:
            with pytest.raises(ValidationError):
                await client.register_custom_face("lib", "p\ud800", "https://img.example/1.jpg")
        assert route.call_count == 0


async def test_registrar_refuses_rows_that_cannot_be_encoded() -> None:
    """The guard that holds today: the manifest's validation, which the registrar applies to
    FaceRow and mapping input alike, fails such rows before any call."""
    client = FakeClient()
    registrar = Registrar(client, settle=0.0)  # type: ignore[arg-type]
    rows: list[Any] = [
        FaceRow("lib", "p\ud800", "https://img.example.com/1.jpg"),
        {"category_id": "lib", "person_id": "p", "image_url": "https://x/\udfff"},
        FaceRow("lib", "ok", "https://img.example.com/2.jpg", person_name="N\udc80"),
    ]
    outcomes = [o async for o in registrar.run(rows)]
    assert [o.status for o in outcomes] == ["failed"] * 3
    assert all("unpaired surrogate" in (o.reason or "") for o in outcomes)
    assert client.calls.get("RegisterCustomFace", 0) == 0

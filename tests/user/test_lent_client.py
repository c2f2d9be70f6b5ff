"""A lent ``httpx.AsyncClient`` (the user's transport, hooks, limits) and ``transport=``.

Written as a user would, against the public API only.
"""

from __future__ import annotations

import httpx
import pytest

from mts_faces import MtsFaceClient, NotFoundError, TransportError


def _answer(request: httpx.Request) -> httpx.Response:
    action = request.headers["x-acs-action"]
    if action == "ListCustomPersons":
        return httpx.Response(200, json={"RequestId": "r", "Categories": {"Category": []}})
    return httpx.Response(
        404, json={"Code": "InvalidCategory.NotFound", "Message": "no", "RequestId": "r"}
    )


@pytest.mark.asyncio
async def test_lent_client_with_mock_transport_and_event_hooks_stays_open() -> None:
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request.headers["x-acs-action"])

    lent = httpx.AsyncClient(
        transport=httpx.MockTransport(_answer), event_hooks={"request": [hook]}
    )
    async with MtsFaceClient(
        access_key_id="LTAIuser", access_key_secret="s", http_client=lent
    ) as client:
        listing = await client.list_custom_persons()
        with pytest.raises(NotFoundError) as info:
            await client.unregister_custom_face("nope", "p", "f")
    assert listing.categories == ()
    assert info.value.status_code == 404
    assert seen == ["ListCustomPersons", "UnregisterCustomFace"]
    # The client was lent: closing ours leaves it open for its owner.
    assert not lent.is_closed
    response = await lent.post("https://elsewhere.example/", headers={"x-acs-action": "x"})
    assert response.status_code == 404
    await lent.aclose()


@pytest.mark.asyncio
async def test_transport_keyword_takes_any_httpx_transport() -> None:
    bodies: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(dict(request.url.params))
        return httpx.Response(200, json={"RequestId": "r", "FaceId": "f"})

    async with MtsFaceClient(
        access_key_id="LTAIuser",
        access_key_secret="s",
        transport=httpx.MockTransport(handler),
    ) as client:
        face = await client.register_custom_face("c", "p", "https://img.example/a.jpg", "Pat")
    assert face.face_id == "f"
    assert bodies == [
        {
            "CategoryId": "c",
            "PersonId": "p",
            "ImageUrl": "https://img.example/a.jpg",
            "PersonName": "Pat",
        }
    ]


@pytest.mark.asyncio
async def test_a_failing_lent_transport_is_a_typed_transport_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    calls = 0

    def count(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return refuse(request)

    lent = httpx.AsyncClient(transport=httpx.MockTransport(count))
    async with MtsFaceClient(
        access_key_id="LTAIuser",
        access_key_secret="s",
        http_client=lent,
        max_retries=2,
        backoff_base=0.0,
    ) as client:
        with pytest.raises(TransportError) as info:
            await client.list_custom_persons()
    await lent.aclose()
    assert info.value.request_sent is False
    assert calls == 3  # a connect failure is safe to retry
    assert "refused" in str(info.value)

"""respx intercepts the default client: a user's test can never reach the service by accident.

Written as a user would, against the public API only.
"""

from __future__ import annotations

import httpx
import pytest
import respx

from mts_faces import MtsFaceClient, ThrottlingError

ENDPOINT = "https://mts.cn-shanghai.aliyuncs.com"


@pytest.mark.asyncio
@respx.mock
async def test_default_client_is_intercepted_by_a_plain_respx_mock() -> None:
    route = respx.post(f"{ENDPOINT}/").mock(
        return_value=httpx.Response(200, json={"FaceId": "f-1", "RequestId": "r-1"})
    )
    async with MtsFaceClient(access_key_id="LTAIuser", access_key_secret="secret") as client:
        face = await client.register_custom_face("stars", "zhang-san", "https://img.example/1.jpg")
    assert (face.face_id, face.request_id) == ("f-1", "r-1")
    assert route.call_count == 1
    sent = route.calls.last.request
    assert sent.headers["x-acs-action"] == "RegisterCustomFace"
    assert sent.url.params["ImageUrl"] == "https://img.example/1.jpg"
    assert sent.headers["authorization"].startswith("ACS3-HMAC-SHA256 Credential=LTAIuser,")


@pytest.mark.asyncio
async def test_an_unmocked_call_fails_instead_of_reaching_the_network() -> None:
    with respx.mock:  # no routes: every request is refused by respx, none leaves the process
        async with MtsFaceClient(access_key_id="LTAIuser", access_key_secret="s") as client:
            with pytest.raises(AssertionError, match="not mocked"):
                await client.list_custom_persons("stars")


@pytest.mark.asyncio
async def test_respx_sees_every_retry_and_typed_errors() -> None:
    throttled = httpx.Response(
        400,
        json={"Code": "Throttling.User", "Message": "slow down", "RequestId": "r-t"},
        headers={"x-acs-retry-after": "1"},
    )
    async with respx.mock(base_url=ENDPOINT) as router:
        route = router.post("/").mock(side_effect=[throttled, throttled])
        async with MtsFaceClient(
            access_key_id="LTAIuser", access_key_secret="s", max_retries=1
        ) as client:
            with pytest.raises(ThrottlingError) as info:
                await client.list_custom_persons()
    assert route.call_count == 2  # one retry, each a new request with a new nonce
    nonces = {c.request.headers["x-acs-signature-nonce"] for c in route.calls}
    assert len(nonces) == 2
    error = info.value
    assert (error.status_code, error.http_status, error.code) == (400, 400, "Throttling.User")
    assert error.request_id == "r-t" and error.retry_after == 0.001

"""The client against respx-mocked HTTP: wire format, parsing, errors, retries, secrets."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import respx

import mts_faces._client as client_module
from mts_faces import (
    AmbiguousOutcomeError,
    APIError,
    AuthenticationError,
    ConfigurationError,
    CredentialsError,
    InvalidParameterError,
    MtsFaceClient,
    NotFoundError,
    ServerError,
    ThrottlingError,
    TransportError,
    ValidationError,
)
from mts_faces._http import HttpTransport

from .conftest import SECRET, TOKEN
from .reference import load

ENDPOINT = "https://mts.cn-shanghai.aliyuncs.com"
FACE_ID = "c6cc71cb44a9491093818faf9d60abcd"
# An answer every operation can parse (a listing must carry its Categories).
ANY_ANSWER = {"FaceId": FACE_ID, "RequestId": "R", "Categories": {"Category": []}}


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=ENDPOINT, assert_all_called=False) as router:
        yield router


@pytest.fixture(autouse=True)
def _httpx_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    # respx mocks httpx; the default aiohttp backend is tested on loopback in test_http.py.
    monkeypatch.setattr(HttpTransport, "default_backend", "httpx")


@pytest.fixture
async def client() -> AsyncIterator[MtsFaceClient]:
    async with MtsFaceClient(
        access_key_id="testid", access_key_secret=SECRET, backoff_base=0.0, qps=1000
    ) as c:
        yield c


def sent_query(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(str(request.url)).query, keep_blank_values=True))


def error_body(code: str, message: str = "m") -> dict[str, str]:
    return {
        "RequestId": "REQ",
        "HostId": "mts.aliyuncs.com",
        "Code": code,
        "Message": message,
        "Recommend": "https://next.api.aliyun.com/troubleshoot?q=" + code,
    }


# --- wire format ----------------------------------------------------------------------------


def _freeze(monkeypatch: pytest.MonkeyPatch, timestamp: str, nonce: str) -> None:
    monkeypatch.setattr(client_module, "utc_timestamp", lambda: timestamp)
    monkeypatch.setattr(client_module, "new_nonce", lambda: nonce)


@pytest.mark.parametrize("case", load("signature-v3-vectors.json"), ids=["ascii", "chinese-sts"])
async def test_v3_request_matches_official_vector(
    case: dict[str, Any], mock: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = case["signed_headers"]
    _freeze(monkeypatch, headers["x-acs-date"], headers["x-acs-signature-nonce"])
    route = mock.post("/").respond(200, json=ANY_ANSWER)
    query = case["query"]
    async with MtsFaceClient(
        access_key_id=case["access_key_id"],
        access_key_secret=case["access_key_secret"],
        security_token=headers.get("x-acs-security-token"),
    ) as c:
        face = await c.register_custom_face(
            query["CategoryId"], query["PersonId"], query["ImageUrl"], query.get("PersonName")
        )
    assert face.face_id == FACE_ID
    request = route.calls.last.request
    assert request.method == "POST" and request.url.path == "/" and request.content == b""
    assert sent_query(request) == query
    for name, value in headers.items():
        assert request.headers[name] == value
    assert request.headers["authorization"] == case["authorization"]


V1_OPERATIONS = {
    "RegisterCustomFace": ("register_custom_face", ["CategoryId", "PersonId", "ImageUrl"]),
    "ListCustomPersons": ("list_custom_persons", ["CategoryId"]),
    "UnregisterCustomFace": ("unregister_custom_face", ["CategoryId", "PersonId", "FaceId"]),
}


@pytest.mark.parametrize("case", load("signature-vectors.json")[:5], ids=lambda c: c["signature"])
async def test_v1_request_matches_official_vector(
    case: dict[str, Any], mock: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = case["params"]
    _freeze(monkeypatch, params["Timestamp"], params["SignatureNonce"])
    route = mock.post("/").respond(200, json=ANY_ANSWER)
    method, names = V1_OPERATIONS[params["Action"]]
    args = [params[n] for n in names]
    kwargs = {"person_name": params["PersonName"]} if "PersonName" in params else {}
    async with MtsFaceClient(
        access_key_id=params["AccessKeyId"],
        access_key_secret=case["access_key_secret"],
        security_token=params.get("SecurityToken"),
        signature_version=1,
    ) as c:
        await getattr(c, method)(*args, **kwargs)
    sent = sent_query(route.calls.last.request)
    assert sent.pop("Signature") == case["signature"]
    assert sent == params
    assert "authorization" not in route.calls.last.request.headers


async def test_each_attempt_gets_a_fresh_nonce(
    mock: respx.MockRouter, client: MtsFaceClient
) -> None:
    route = mock.post("/").mock(
        side_effect=[
            httpx.Response(400, json=error_body("Throttling.User")),
            httpx.Response(200, json={"RequestId": "R", "Categories": {"Category": []}}),
        ]
    )
    await client.list_custom_persons()
    nonces = [call.request.headers["x-acs-signature-nonce"] for call in route.calls]
    assert len(nonces) == 2 and nonces[0] != nonces[1]


async def test_tag_custom_person_sends_only_given_fields(
    mock: respx.MockRouter, client: MtsFaceClient
) -> None:
    route = mock.post("/").respond(200, json={"RequestId": "TAG"})
    ack = await client.tag_custom_person("cat", "p1", person_name="Ann", category_name="Stars")
    assert ack.request_id == "TAG"
    request = route.calls.last.request
    assert request.headers["x-acs-action"] == "TagCustomPerson"
    assert sent_query(request) == {
        "CategoryId": "cat",
        "PersonId": "p1",
        "PersonName": "Ann",
        "CategoryName": "Stars",
    }


async def test_list_custom_persons_parses_documented_shape(
    mock: respx.MockRouter, client: MtsFaceClient
) -> None:
    mock.post("/").respond(
        200,
        json={
            "RequestId": "L",
            "Categories": {
                "Category": [
                    {
                        "CategoryId": "cat",
                        "CategoryName": "Stars",
                        "CategoryDescription": "d",
                        "Persons": {
                            "Person": [
                                {
                                    "PersonId": "p1",
                                    "PersonName": "Ann",
                                    "PersonDescription": "pd",
                                    "Faces": {
                                        "Face": [{"FaceId": FACE_ID, "ImageUrl": "http://x/1.jpg"}]
                                    },
                                }
                            ]
                        },
                    }
                ]
            },
        },
    )
    result = await client.list_custom_persons(category_id="cat")
    [(category, person, face)] = list(result.iter_faces())
    assert (category.category_id, category.category_name) == ("cat", "Stars")
    assert (person.person_id, person.person_name, person.person_description) == ("p1", "Ann", "pd")
    assert (face.face_id, face.image_url) == (FACE_ID, "http://x/1.jpg")
    assert result.request_id == "L"


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "Throttling.User", ThrottlingError),
        (503, "Throttling", ThrottlingError),
        (400, "Throttling.Api", ThrottlingError),
        (503, "ServiceUnavailable", ServerError),
        (500, "InternalError", ServerError),
        (400, "SignatureDoesNotMatch", AuthenticationError),
        (404, "InvalidAccessKeyId.NotFound", AuthenticationError),
        (400, "InvalidTimeStamp.Expired", AuthenticationError),
        (400, "SignatureNonceUsed", AuthenticationError),
        (400, "MissingParameter", InvalidParameterError),
        (400, "InvalidParameter", InvalidParameterError),
        (404, "InvalidFace.NotFound", NotFoundError),
        (403, "SomethingElse", APIError),
    ],
)
async def test_error_codes_map_to_classes(
    status: int, code: str, cls: type[APIError], mock: respx.MockRouter
) -> None:
    mock.post("/").respond(status, json=error_body(code, "msg"))
    async with MtsFaceClient(access_key_id="i", access_key_secret=SECRET, max_retries=0) as c:
        with pytest.raises(cls) as info:
            await c.unregister_custom_face("cat", "p", FACE_ID)
    error = info.value
    assert type(error) is cls
    assert (error.code, error.message, error.http_status) == (code, "msg", status)
    assert error.request_id == "REQ" and error.recommend and error.recommend.endswith(code)


async def test_throttling_is_retried_then_raised(
    mock: respx.MockRouter, client: MtsFaceClient
) -> None:
    route = mock.post("/").respond(400, json=error_body("Throttling.User"))
    with pytest.raises(ThrottlingError):
        await client.register_custom_face("c", "p", "http://x/1.jpg")
    assert route.call_count == 1 + 3


async def test_retry_after_header_is_obeyed(
    mock: respx.MockRouter, client: MtsFaceClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(client_module.asyncio, "sleep", fake_sleep)
    mock.post("/").mock(
        side_effect=[
            httpx.Response(
                400, json=error_body("Throttling.User"), headers={"x-acs-retry-after": "1500"}
            ),
            httpx.Response(200, json={"FaceId": FACE_ID, "RequestId": "R"}),
        ]
    )
    face = await client.register_custom_face("c", "p", "http://x/1.jpg")
    assert face.face_id == FACE_ID
    assert waits == [1.5]


async def test_register_internal_error_is_ambiguous_and_not_retried(
    mock: respx.MockRouter, client: MtsFaceClient
) -> None:
    route = mock.post("/").respond(500, json=error_body("InternalError"))
    with pytest.raises(AmbiguousOutcomeError) as info:
        await client.register_custom_face("c", "p", "http://x/1.jpg")
    assert route.call_count == 1
    assert isinstance(info.value.cause, ServerError)


async def test_register_read_timeout_is_ambiguous_and_not_retried(
    mock: respx.MockRouter, client: MtsFaceClient
) -> None:
    route = mock.post("/").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(AmbiguousOutcomeError) as info:
        await client.register_custom_face("c", "p", "http://x/1.jpg")
    assert route.call_count == 1
    assert isinstance(info.value.cause, TransportError) and info.value.cause.request_sent


async def test_register_connect_error_is_retried(
    mock: respx.MockRouter, client: MtsFaceClient
) -> None:
    route = mock.post("/").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(503, json=error_body("ServiceUnavailable")),
            httpx.Response(200, json={"FaceId": FACE_ID, "RequestId": "R"}),
        ]
    )
    face = await client.register_custom_face("c", "p", "http://x/1.jpg")
    assert face.face_id == FACE_ID and route.call_count == 3


async def test_connect_errors_exhaust_retries_as_not_sent(
    mock: respx.MockRouter, client: MtsFaceClient
) -> None:
    route = mock.post("/").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TransportError) as info:
        await client.register_custom_face("c", "p", "http://x/1.jpg")
    assert info.value.request_sent is False and route.call_count == 4


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500, json=error_body("InternalError")),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
)
async def test_idempotent_operations_are_retried(
    failure: Any, mock: respx.MockRouter, client: MtsFaceClient
) -> None:
    ok = httpx.Response(200, json={"RequestId": "R"})
    route = mock.post("/").mock(side_effect=[failure, ok])
    assert (await client.unregister_custom_face("c", "p", FACE_ID)).request_id == "R"
    assert route.call_count == 2


@pytest.mark.parametrize("code", ["SignatureDoesNotMatch", "InvalidParameter", "MissingParameter"])
async def test_permanent_errors_are_not_retried(
    code: str, mock: respx.MockRouter, client: MtsFaceClient
) -> None:
    route = mock.post("/").respond(400, json=error_body(code))
    with pytest.raises(APIError):
        await client.list_custom_persons()
    assert route.call_count == 1


async def test_max_retries_is_configurable(mock: respx.MockRouter) -> None:
    route = mock.post("/").respond(503, json=error_body("ServiceUnavailable"))
    async with MtsFaceClient(
        access_key_id="i", access_key_secret="s", max_retries=5, backoff_base=0.0
    ) as c:
        with pytest.raises(ServerError):
            await c.list_custom_persons()
    assert route.call_count == 6


async def test_success_body_that_is_not_json_is_a_format_error(
    mock: respx.MockRouter, client: MtsFaceClient
) -> None:
    from mts_faces import ResponseFormatError

    mock.post("/").respond(200, content=b"<html>")
    with pytest.raises(ResponseFormatError):
        await client.list_custom_persons()


async def test_unreadable_success_of_a_registration_is_ambiguous(
    mock: respx.MockRouter, client: MtsFaceClient
) -> None:
    # The face was most likely stored: the caller must check, not retry blindly.
    route = mock.post("/").respond(200, content=b"<html>proxy page " + SECRET.encode())
    with pytest.raises(AmbiguousOutcomeError) as caught:
        await client.register_custom_face("c", "p", "https://img.example/1.jpg")
    assert route.call_count == 1
    assert SECRET not in str(caught.value) and SECRET not in str(caught.value.cause)


# --- validation before the network ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "field", "fragment"),
    [
        (("", "p", "http://x/a.jpg"), "CategoryId", "empty"),
        (("c" * 121, "p", "http://x/a.jpg"), "CategoryId", "120"),
        (("c", "p" * 121, "http://x/a.jpg"), "PersonId", "121 characters"),
        (("c", "p", "ftp://x/a.jpg"), "ImageUrl", "http"),
        (("c", "p", "http:///a.jpg"), "ImageUrl", "host"),
        (("c", "p", "not a url"), "ImageUrl", "http"),
    ],
)
async def test_bad_input_is_refused_before_any_call(
    args: tuple[str, str, str],
    field: str,
    fragment: str,
    mock: respx.MockRouter,
    client: MtsFaceClient,
) -> None:
    route = mock.post("/").respond(200, json=ANY_ANSWER)
    with pytest.raises(ValidationError) as info:
        await client.register_custom_face(*args)
    assert info.value.field == field and fragment in str(info.value)
    assert route.call_count == 0


async def test_120_character_ids_are_accepted(
    mock: respx.MockRouter, client: MtsFaceClient
) -> None:
    mock.post("/").respond(200, json={"FaceId": FACE_ID, "RequestId": "R"})
    face = await client.register_custom_face("c" * 120, "张" * 120, "https://x/a.jpg")
    assert face.face_id == FACE_ID


# --- configuration --------------------------------------------------------------------------


def test_regions_and_endpoints() -> None:
    def make(**kw: Any) -> MtsFaceClient:
        return MtsFaceClient(access_key_id="i", access_key_secret="s", **kw)

    assert make().endpoint == "https://mts.cn-shanghai.aliyuncs.com"
    assert (
        make(region_id="cn-beijing", vpc=True).endpoint == "https://mts-vpc.cn-beijing.aliyuncs.com"
    )
    with pytest.raises(ConfigurationError, match="cn-hangzhou"):
        make(region_id="us-west-1")
    assert make(region_id="us-west-1", endpoint="https://proxy.example.com").endpoint == (
        "https://proxy.example.com"
    )
    assert make(endpoint="http://127.0.0.1:8080").endpoint == "http://127.0.0.1:8080"
    assert make(endpoint="http://localhost:1").endpoint == "http://localhost:1"
    assert make(endpoint="http://[::1]:1").endpoint == "http://[::1]:1"
    with pytest.raises(ConfigurationError, match="allow_insecure_http"):
        make(endpoint="http://mts.example.com")
    assert make(endpoint="http://10.0.0.1", allow_insecure_http=True).endpoint == "http://10.0.0.1"


def test_missing_credentials_name_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the ``credentials`` extra (with it, the official chain is asked instead).
    monkeypatch.setattr("mts_faces._credentials.official_chain_available", lambda: False)
    with pytest.raises(CredentialsError) as info:
        MtsFaceClient()
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in str(info.value)
    assert "ALIBABA_CLOUD_ACCESS_KEY_SECRET" in str(info.value)
    assert "pip install '.[credentials]'" in str(info.value)
    with pytest.raises(CredentialsError, match="access_key_secret"):
        MtsFaceClient(access_key_id="only-id")


def test_credentials_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "env-id")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET)
    monkeypatch.setenv("ALIBABA_CLOUD_SECURITY_TOKEN", TOKEN)
    c = MtsFaceClient()
    assert c.credentials.access_key_id == "env-id"
    assert c.credentials.security_token == TOKEN


# --- secrets --------------------------------------------------------------------------------


def _secret_forms() -> list[str]:
    from urllib.parse import quote

    forms = [SECRET, TOKEN, quote(SECRET, safe=""), quote(TOKEN, safe="")]
    return forms + [quote(f, safe="") for f in forms[2:]]


async def test_secrets_never_in_repr_logs_or_errors(
    mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    from urllib.parse import quote

    # The service echoes the string to sign, where a V1 SecurityToken appears encoded twice.
    echoed = "server string to sign is:POST&%2F&SecurityToken%3D" + quote(
        quote(TOKEN, safe=""), safe=""
    )
    mock.post("/").mock(
        side_effect=[
            httpx.Response(400, json=error_body("Throttling.User", f"slow down {TOKEN}")),
            httpx.ReadTimeout(f"timeout {SECRET}"[:7]),
            httpx.Response(400, json=error_body("SignatureDoesNotMatch", echoed + " " + SECRET)),
        ]
    )
    caplog.set_level(logging.DEBUG)
    async with MtsFaceClient(
        access_key_id="id",
        access_key_secret=SECRET,
        security_token=TOKEN,
        signature_version=1,
        backoff_base=0.0,
    ) as c:
        with pytest.raises(AuthenticationError) as info:
            await c.list_custom_persons()
        texts = [
            repr(c),
            str(c.__dict__),
            repr(c.credentials),
            str(info.value),
            repr(info.value),
            info.value.message,
            caplog.text,
        ]
    assert "***" in info.value.message
    for text in texts:
        for form in _secret_forms():
            assert form not in text, (form, text)

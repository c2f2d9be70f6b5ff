"""The emulator driven by the real client over loopback HTTP: operations, errors, quota, faults.

Rates are checked on the emulator's own counts with a frozen clock, never on wall time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import mts_faces._client as client_module
from mts_faces import (
    AmbiguousOutcomeError,
    AuthenticationError,
    ConfigurationError,
    InvalidParameterError,
    MtsFaceClient,
    NotFoundError,
    ServerError,
    ThrottlingError,
    TransportError,
)
from mts_faces._models import parse_acknowledgement, parse_registered_face
from mts_faces._operations import Operation, Param, validate_text
from mts_faces._signing import EMPTY_BODY_SHA256, v1_signature, v3_authorization
from mts_faces.emulator import FACE_LIMIT_EXCEEDED, AccessKey, Emulator, EmulatorConfig

URL = "https://img.example.com/face.jpg"


class FrozenClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def client_for(emulator: Emulator, signature_version: int = 3, **options: Any) -> MtsFaceClient:
    """A client whose own limiter never holds back, and which never retries."""
    kwargs: dict[str, Any] = {
        **emulator.client_kwargs(),
        "signature_version": signature_version,
        "qps": 100_000,
        "max_retries": 0,
        "backoff_base": 0.0,
    }
    kwargs.update(options)
    return MtsFaceClient(**kwargs)


@pytest.fixture(params=[3, 1], ids=["v3", "v1"])
def sigver(request: pytest.FixtureRequest) -> int:
    version: int = request.param
    return version


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(qps=None, seed=1)) as emu:
        yield emu


# --- the four operations ---------------------------------------------------------------------


async def test_each_operation(emulator: Emulator, sigver: int) -> None:
    async with client_for(emulator, sigver) as client:
        face = await client.register_custom_face("明星库", "张三-001", URL + "?a=1&b=~+%", "张三")
        assert len(face.face_id) == 32 and face.face_id == face.face_id.lower()
        int(face.face_id, 16)
        assert face.request_id
        tag = await client.tag_custom_person(
            "明星库",
            "张三-001",
            person_description="歌手 singer",
            category_name="Stars",
            category_description="lib",
        )
        assert tag.request_id
        listing = await client.list_custom_persons("明星库")
        ((category, person, stored),) = listing.iter_faces()
        assert (category.category_id, category.category_name) == ("明星库", "Stars")
        assert (person.person_id, person.person_name) == ("张三-001", "张三")
        assert person.person_description == "歌手 singer"
        assert (stored.face_id, stored.image_url) == (face.face_id, URL + "?a=1&b=~+%")
        ack = await client.unregister_custom_face("明星库", "张三-001", face.face_id)
        assert ack.request_id
        listing = await client.list_custom_persons("明星库")
        assert [p.faces for c in listing.categories for p in c.persons] == [()]
    stats = emulator.stats
    assert stats.accepted == 5 and stats.rejected == 0
    assert stats.signature_versions == {sigver: 5}
    assert stats.requests_by_action == {
        "RegisterCustomFace": 1,
        "TagCustomPerson": 1,
        "ListCustomPersons": 2,
        "UnregisterCustomFace": 1,
    }


async def test_list_answer_has_the_documented_shape(emulator: Emulator) -> None:
    async with client_for(emulator) as client:
        face = await client.register_custom_face("lib", "p1", URL, "P One")
    assert emulator.library() == {
        "Category": [
            {
                "CategoryId": "lib",
                "Persons": {
                    "Person": [
                        {
                            "PersonId": "p1",
                            "PersonName": "P One",
                            "Faces": {"Face": [{"FaceId": face.face_id, "ImageUrl": URL}]},
                        }
                    ]
                },
            }
        ]
    }
    assert json.loads(emulator.library_json()) == emulator.library()


async def test_ids_are_case_insensitive_and_keep_the_first_spelling(emulator: Emulator) -> None:
    async with client_for(emulator) as client:
        await client.register_custom_face("Stars", "Zhang-San", URL)
        await client.register_custom_face("STARS", "zhang-san", URL + "?2")
        listing = await client.list_custom_persons("stars", "ZHANG-SAN")
    ((category,),) = [listing.categories]
    assert category.category_id == "Stars"
    assert [p.person_id for p in category.persons] == ["Zhang-San"]
    assert len(category.persons[0].faces) == 2


async def test_list_narrows_by_category_and_person(emulator: Emulator) -> None:
    async with client_for(emulator) as client:
        await client.register_custom_face("a", "p1", URL)
        await client.register_custom_face("a", "p2", URL)
        await client.register_custom_face("b", "p1", URL)
        everything = await client.list_custom_persons()
        assert [c.category_id for c in everything.categories] == ["a", "b"]
        only_p1 = await client.list_custom_persons(person_id="p1")
        assert [(c.category_id, len(c.persons)) for c in only_p1.categories] == [("a", 1), ("b", 1)]
        assert (await client.list_custom_persons("nope")).categories == ()


async def test_unregister_all_faces_then_the_whole_library(emulator: Emulator) -> None:
    async with client_for(emulator) as client:
        for person in ("p1", "p2"):
            for i in range(3):
                await client.register_custom_face("lib", person, f"{URL}?{i}")
        await client.unregister_custom_face("lib", "p1", "ALL")
        listing = await client.list_custom_persons("lib")
        assert [p.person_id for c in listing.categories for p in c.persons] == ["p2"]
        await client.unregister_custom_face("lib", "ALL", "ALL")
        assert (await client.list_custom_persons()).categories == ()
        with pytest.raises(NotFoundError) as excinfo:
            await client.unregister_custom_face("lib", "p2", "ALL")
    assert excinfo.value.http_status == 404
    assert emulator.stats.faces_stored == 0


async def test_ten_faces_per_person_then_a_clear_error(emulator: Emulator, sigver: int) -> None:
    async with client_for(emulator, sigver) as client:
        for i in range(10):
            await client.register_custom_face("lib", "Person", f"{URL}?{i}")
        with pytest.raises(InvalidParameterError) as excinfo:
            await client.register_custom_face("lib", "PERSON", f"{URL}?10")
        # Another person still has room.
        await client.register_custom_face("lib", "other", URL)
    error = excinfo.value
    assert (error.code, error.http_status) == (FACE_LIMIT_EXCEEDED, 400)
    assert "10 faces" in error.message and error.request_id
    assert emulator.stats.faces_stored == 11


# --- errors ----------------------------------------------------------------------------------


async def test_wrong_secret_is_signature_does_not_match(emulator: Emulator, sigver: int) -> None:
    secret = "wrong-secret/+=value"
    async with client_for(emulator, sigver, access_key_secret=secret) as client:
        with pytest.raises(AuthenticationError) as excinfo:
            await client.list_custom_persons()
    assert (excinfo.value.code, excinfo.value.http_status) == ("SignatureDoesNotMatch", 400)
    assert secret not in str(excinfo.value)
    assert emulator.stats.accepted == 0 and emulator.stats.rejected == 1


async def test_unknown_key_is_not_found(emulator: Emulator, sigver: int) -> None:
    async with client_for(emulator, sigver, access_key_id="LTAInobody") as client:
        with pytest.raises(AuthenticationError) as excinfo:
            await client.list_custom_persons()
    assert (excinfo.value.code, excinfo.value.http_status) == ("InvalidAccessKeyId.NotFound", 404)


async def test_timestamp_more_than_15_minutes_off_is_expired(
    emulator: Emulator, sigver: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def minutes_ago(minutes: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - minutes * 60))

    async with client_for(emulator, sigver) as client:
        monkeypatch.setattr(client_module, "utc_timestamp", lambda: minutes_ago(14))
        await client.list_custom_persons()
        monkeypatch.setattr(client_module, "utc_timestamp", lambda: minutes_ago(16))
        with pytest.raises(AuthenticationError) as excinfo:
            await client.list_custom_persons()
    assert (excinfo.value.code, excinfo.value.http_status) == ("InvalidTimeStamp.Expired", 400)


async def test_replayed_nonce_is_refused(
    emulator: Emulator, sigver: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "new_nonce", lambda: "the-same-nonce")
    async with client_for(emulator, sigver) as client:
        await client.register_custom_face("lib", "p", URL)
        with pytest.raises(AuthenticationError) as excinfo:
            await client.register_custom_face("lib", "p", URL)
    assert (excinfo.value.code, excinfo.value.http_status) == ("SignatureNonceUsed", 400)
    assert emulator.stats.faces_stored == 1  # the replay did nothing


def _unchecked(action: str, *names: str) -> Operation:
    # An operation the client does not validate, to send what the service must refuse.
    return Operation(
        action,
        {name: Param(name, validate_text) for name in names},
        parse_registered_face if action == "RegisterCustomFace" else parse_acknowledgement,
    )


async def test_missing_parameters_are_named(emulator: Emulator, sigver: int) -> None:
    async with client_for(emulator, sigver) as client:
        for values, missing in (
            ({"CategoryId": "lib", "PersonId": "p"}, "ImageUrl"),
            ({"CategoryId": "lib", "ImageUrl": URL}, "PersonId"),
            ({"CategoryId": "", "PersonId": "p", "ImageUrl": URL}, "CategoryId"),
        ):
            with pytest.raises(InvalidParameterError) as excinfo:
                await client.call(_unchecked("RegisterCustomFace", *values), **values)
            assert excinfo.value.code == "MissingParameter"
            assert f'"{missing}"' in excinfo.value.message
        with pytest.raises(InvalidParameterError) as excinfo:
            await client.call(_unchecked("UnregisterCustomFace", "CategoryId", "PersonId"),
                              CategoryId="lib", PersonId="p")  # fmt: skip
        assert '"FaceId"' in excinfo.value.message


async def test_invalid_parameters_are_refused(emulator: Emulator, sigver: int) -> None:
    register = _unchecked("RegisterCustomFace", "CategoryId", "PersonId", "ImageUrl")
    cases = [
        ({"CategoryId": "x" * 121, "PersonId": "p", "ImageUrl": URL}, "CategoryId"),
        ({"CategoryId": "lib", "PersonId": "人" * 121, "ImageUrl": URL}, "PersonId"),
        ({"CategoryId": "lib", "PersonId": "p", "ImageUrl": "ftp://host/a.jpg"}, "ImageUrl"),
        ({"CategoryId": "lib", "PersonId": "p", "ImageUrl": "https:///a.jpg"}, "ImageUrl"),
        ({"CategoryId": "   ", "PersonId": "p", "ImageUrl": URL}, "CategoryId"),
    ]
    async with client_for(emulator, sigver) as client:
        for values, name in cases:
            with pytest.raises(InvalidParameterError) as excinfo:
                await client.call(register, **values)
            assert (excinfo.value.code, excinfo.value.http_status) == ("InvalidParameter", 400)
            assert f'"{name}"' in excinfo.value.message
        # 120 characters is the limit, not past it.
        await client.call(register, CategoryId="x" * 120, PersonId="人" * 120, ImageUrl=URL)
    assert emulator.stats.faces_stored == 1


async def test_unknown_action_is_the_services_error(emulator: Emulator, sigver: int) -> None:
    async with client_for(emulator, sigver) as client:
        with pytest.raises(NotFoundError) as excinfo:
            await client.call(_unchecked("DescribeNothing", "CategoryId"), CategoryId="x")
    assert (excinfo.value.code, excinfo.value.http_status) == ("InvalidAction.NotFound", 404)


async def test_error_bodies_have_the_services_fields(emulator: Emulator) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(emulator.url + "/?Action=ListCustomPersons")
    body = response.json()
    assert response.status_code == 400
    assert set(body) == {"RequestId", "HostId", "Code", "Message", "Recommend"}
    assert body["Code"] == "MissingParameter"
    assert response.headers["x-acs-request-id"] == body["RequestId"]


# --- form bodies, more keys ------------------------------------------------------------------


async def test_params_in_a_form_body_v3_and_v1(emulator: Emulator) -> None:
    key = emulator.key
    host = emulator.url.split("://")[1]
    body = "CategoryId=lib&PersonId=p+1&ImageUrl=" + httpx.QueryParams({"u": URL})["u"]
    digest = hashlib.sha256(body.encode()).hexdigest()
    signed = {
        "host": host,
        "x-acs-action": "RegisterCustomFace",
        "x-acs-version": "2014-06-18",
        "x-acs-date": client_module.utc_timestamp(),
        "x-acs-signature-nonce": "form-v3",
        "x-acs-content-sha256": digest,
    }
    auth = v3_authorization(
        "POST", {}, signed, key.access_key_id, key.access_key_secret, payload_sha256=digest
    )
    form = {"content-type": "application/x-www-form-urlencoded"}
    query = {
        "Action": "RegisterCustomFace",
        "Version": "2014-06-18",
        "Format": "json",
        "AccessKeyId": key.access_key_id,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "SignatureNonce": "form-v1",
        "Timestamp": client_module.utc_timestamp(),
    }
    v1_params = {**query, "CategoryId": "lib", "PersonId": "p 1", "ImageUrl": URL}
    signature = v1_signature("POST", v1_params, key.access_key_secret)
    async with httpx.AsyncClient(base_url=emulator.url) as http:
        v3 = await http.post("/", headers={**signed, **form, "authorization": auth}, content=body)
        v1 = await http.post("/", params={**query, "Signature": signature}, headers=form,
                             content=body)  # fmt: skip
        tampered = await http.post(
            "/",
            headers={**signed, **form, "authorization": auth, "x-acs-signature-nonce": "n2"},
            content=body,
        )
    assert v3.status_code == 200 and len(v3.json()["FaceId"]) == 32
    assert v1.status_code == 200 and len(v1.json()["FaceId"]) == 32
    assert tampered.json()["Code"] == "SignatureDoesNotMatch"
    (category,) = emulator.library()["Category"]
    assert [p["PersonId"] for p in category["Persons"]["Person"]] == ["p 1"]
    assert emulator.stats.signature_versions == {3: 1, 1: 1}
    assert digest != EMPTY_BODY_SHA256


async def test_extra_keys_are_accepted_each_with_its_own_quota() -> None:
    clock = FrozenClock()
    other = AccessKey("LTAIsecondkey", "second-secret")
    config = EmulatorConfig(qps=3, extra_keys={other.access_key_id: other.access_key_secret})
    assert "second-secret" not in repr(config)
    async with Emulator(config, clock=clock) as emu:
        for key in (emu.key, other):
            async with client_for(
                emu, access_key_id=key.access_key_id, access_key_secret=key.access_key_secret
            ) as client:
                for _ in range(3):
                    await client.list_custom_persons()
                with pytest.raises(ThrottlingError):
                    await client.list_custom_persons()
        assert (emu.stats.accepted, emu.stats.throttled) == (6, 2)


# --- the quota -------------------------------------------------------------------------------


async def test_quota_window_under_many_concurrent_requests(sigver: int) -> None:
    clock = FrozenClock()
    async with Emulator(EmulatorConfig(qps=20), clock=clock) as emu:
        async with client_for(emu, sigver, max_connections=64) as client:
            results = await asyncio.gather(
                *(client.register_custom_face("lib", f"p{i}", URL) for i in range(60)),
                return_exceptions=True,
            )
            throttled = [r for r in results if isinstance(r, ThrottlingError)]
            assert len(throttled) == 40
            assert all(t.code == "Throttling.User" and t.http_status == 400 for t in throttled)
            stats = emu.stats
            assert (stats.accepted, stats.throttled) == (20, 40)
            assert stats.max_window_accepted == 20
            assert stats.max_window_arrivals == 60
            assert stats.errors_by_code == {"Throttling.User": 40}
            assert stats.faces_stored == 20  # throttled calls were not carried out

            clock.advance(0.999)  # the first burst is still inside the window
            with pytest.raises(ThrottlingError) as caught:
                await client.register_custom_face("lib", "late", URL)
            # The answer says when a slot frees: 1 ms from now, in milliseconds.
            assert caught.value.retry_after == 0.001
            # Each action has its own quota: listing is not throttled by the registrations.
            await client.list_custom_persons()
            clock.advance(0.001)  # exactly one second later the burst has left the window
            again = await asyncio.gather(
                *(client.list_custom_persons() for _ in range(25)), return_exceptions=True
            )
            assert sum(not isinstance(r, BaseException) for r in again) == 19
        stats = emu.stats
        # 20 registrations and one listing share a second; each action's quota holds 20.
        assert stats.accepted == 40 and stats.max_window_accepted == 21
        assert stats.max_window_quota == 20
        emu.reset_stats()
        assert (emu.stats.accepted, emu.stats.max_window_accepted) == (0, 0)
        assert emu.stats.faces_stored == 20


async def test_quota_holds_on_the_real_clock() -> None:
    async with Emulator(EmulatorConfig(qps=10)) as emu, client_for(emu) as client:
        results = await asyncio.gather(
            *(client.list_custom_persons() for _ in range(40)), return_exceptions=True
        )
        stats = emu.stats
    assert all(isinstance(r, ThrottlingError) for r in results if isinstance(r, BaseException))
    assert stats.accepted + stats.throttled == 40
    assert stats.max_window_accepted <= 10 and stats.throttled >= 1


# --- faults ----------------------------------------------------------------------------------


async def test_internal_error_is_ambiguous_and_stores_nothing() -> None:
    async with Emulator(EmulatorConfig(qps=None, internal_error_rate=1.0)) as emu:
        async with client_for(emu) as client:
            with pytest.raises(AmbiguousOutcomeError) as excinfo:
                await client.register_custom_face("lib", "p", URL)
            await client.list_custom_persons()  # faults hit RegisterCustomFace only
        assert isinstance(excinfo.value.cause, ServerError)
        assert excinfo.value.cause.code == "InternalError"
        assert excinfo.value.cause.http_status == 500
        assert emu.stats.faulted["internal_error"] == 1
        assert emu.stats.faces_stored == 0


async def test_unavailable_is_a_retryable_503() -> None:
    async with Emulator(EmulatorConfig(qps=None, unavailable_rate=1.0)) as emu:
        async with client_for(emu) as client:
            with pytest.raises(ServerError) as excinfo:
                await client.register_custom_face("lib", "p", URL)
        assert (excinfo.value.code, excinfo.value.http_status) == ("ServiceUnavailable", 503)
        assert emu.stats.faulted["unavailable"] == 1
        assert emu.stats.faces_stored == 0


async def test_dropped_connection_stores_nothing() -> None:
    async with Emulator(EmulatorConfig(qps=None, drop_rate=1.0)) as emu:
        async with client_for(emu) as client:
            with pytest.raises(AmbiguousOutcomeError) as excinfo:
                await client.register_custom_face("lib", "p", URL)
        assert isinstance(excinfo.value.cause, TransportError)
        assert emu.stats.faulted["drop"] == 1
        assert emu.stats.faces_stored == 0


async def test_commit_then_timeout_stores_the_face_and_never_answers() -> None:
    config = EmulatorConfig(qps=None, commit_timeout_rate=1.0, hang=60.0)
    async with Emulator(config) as emu:
        async with client_for(emu, timeout=0.2) as client:
            with pytest.raises(AmbiguousOutcomeError) as excinfo:
                await client.register_custom_face("lib", "p", URL)
        assert isinstance(excinfo.value.cause, TransportError)
        assert emu.stats.faulted["commit_timeout"] == 1
        assert emu.stats.faces_stored == 1


async def test_commit_then_timeout_closes_after_the_hang() -> None:
    config = EmulatorConfig(qps=None, commit_timeout_rate=1.0, hang=0.0)
    async with Emulator(config) as emu:
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await _raw_register(http, emu)
        assert emu.stats.faces_stored == 1


async def _raw_register(http: httpx.AsyncClient, emu: Emulator) -> httpx.Response:
    key = emu.key
    query = {
        "Action": "RegisterCustomFace",
        "Version": "2014-06-18",
        "AccessKeyId": key.access_key_id,
        "SignatureNonce": f"n{time.monotonic_ns()}",
        "Timestamp": client_module.utc_timestamp(),
        "CategoryId": "lib",
        "PersonId": "p",
        "ImageUrl": URL,
    }
    query["Signature"] = v1_signature("POST", query, key.access_key_secret)
    return await http.post(emu.url + "/", params=query)


async def test_latency_applies_to_the_chosen_actions() -> None:
    config = EmulatorConfig(qps=None, latency=60.0, latency_actions=frozenset({"TagCustomPerson"}))
    async with Emulator(config) as emu, client_for(emu, timeout=0.2) as client:
        await client.register_custom_face("lib", "p", URL)
        with pytest.raises(TransportError) as excinfo:
            await client.tag_custom_person("lib", "p", person_name="slow")
        assert excinfo.value.request_sent


async def test_fault_actions_are_configurable() -> None:
    config = EmulatorConfig(
        qps=None, unavailable_rate=1.0, fault_actions=frozenset({"ListCustomPersons"})
    )
    async with Emulator(config) as emu, client_for(emu) as client:
        await client.register_custom_face("lib", "p", URL)
        with pytest.raises(ServerError):
            await client.list_custom_persons()


async def _fault_pattern(seed: int) -> list[str]:
    config = EmulatorConfig(qps=None, seed=seed, internal_error_rate=0.3, unavailable_rate=0.3)
    pattern = []
    async with Emulator(config) as emu, client_for(emu) as client:
        for i in range(30):
            try:
                await client.register_custom_face("lib", f"p{i}", URL)
                pattern.append("ok")
            except (AmbiguousOutcomeError, ServerError) as exc:
                pattern.append(type(exc).__name__)
    return pattern


async def test_faults_are_drawn_from_a_seeded_rng() -> None:
    first, again, other = await _fault_pattern(5), await _fault_pattern(5), await _fault_pattern(6)
    assert first == again
    assert first != other
    assert {"ok", "AmbiguousOutcomeError", "ServerError"} <= set(first)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="add up"):
        EmulatorConfig(internal_error_rate=0.6, drop_rate=0.6)
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        EmulatorConfig(drop_rate=1.5)
    with pytest.raises(ValueError, match="unknown actions"):
        EmulatorConfig(fault_actions=frozenset({"Nope"}))
    with pytest.raises(ValueError, match="qps"):
        EmulatorConfig(qps=0.5)
    assert "***" in repr(AccessKey("id", "hidden")) and "hidden" not in repr(AccessKey("id", "h"))


# --- TLS -------------------------------------------------------------------------------------


async def test_tls_with_a_certificate_made_on_the_spot(tmp_path: Path) -> None:
    pytest.importorskip("trustme")
    async with Emulator(EmulatorConfig(qps=None, tls=True)) as emu:
        assert emu.url.startswith("https://127.0.0.1:")
        async with client_for(emu) as client:  # trusts emu.client_ssl_context()
            await client.register_custom_face("lib", "p", URL)
        ca_file = tmp_path / "ca.pem"
        emu.write_ca(ca_file)
        async with client_for(emu, verify=str(ca_file)) as client:
            await client.list_custom_persons()
        async with client_for(emu, verify=True) as untrusting:
            with pytest.raises(TransportError):
                await untrusting.list_custom_persons()
        assert emu.stats.accepted == 2


async def test_tls_without_trustme_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "trustme", None)
    with pytest.raises(ConfigurationError, match=r"pip install '\.\[emulator-tls\]'"):
        await Emulator(EmulatorConfig(tls=True)).start()

"""The emulator's own signature checks against the vectors computed by Alibaba's signing code."""

from __future__ import annotations

import calendar
import time
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from mts_faces.emulator._errors import ServiceError
from mts_faces.emulator._verify import (
    NonceCache,
    SignedRequest,
    Verifier,
    canonical_query,
    decode_params,
    parse_timestamp,
    v1_string_to_sign,
)
from mts_faces.emulator._window import Quota, SlidingWindow

from .reference import load

V3_CASES = load("signature-v3-vectors.json")
V1_CASES = load("signature-vectors.json")


def _epoch(timestamp: str) -> float:
    return float(calendar.timegm(time.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ")))


def _verifier(keys: dict[str, str] | None = None) -> Verifier:
    return Verifier(keys or {"testid": "testsecret"}, tolerance=900, nonces=NonceCache(900, 1000))


def _raw_query(params: dict[str, str], plus_spaces: bool) -> str:
    # The official SDK sends spaces as "+" (urlencode); our client sends "%20".
    if plus_spaces:
        return urlencode(params)
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items())


def _v3_request(
    case: dict[str, Any], *, plus_spaces: bool = False, **header_changes: str
) -> SignedRequest:
    headers = {**case["signed_headers"], "authorization": case["authorization"]}
    headers.update(header_changes)
    return SignedRequest(
        method=case["method"],
        path=case["pathname"],
        query=decode_params(_raw_query(case["query"], plus_spaces)),
        form={},
        headers={name: (value,) for name, value in headers.items()},
        body=case["body"].encode(),
    )


def _v3_time(case: dict[str, Any]) -> float:
    return _epoch(case["signed_headers"]["x-acs-date"])


def _code(excinfo: pytest.ExceptionInfo[ServiceError]) -> tuple[int, str]:
    return excinfo.value.status, excinfo.value.code


# --- version 3 -------------------------------------------------------------------------------


@pytest.mark.parametrize("plus_spaces", [False, True], ids=["pct20", "plus"])
@pytest.mark.parametrize("case", V3_CASES, ids=["ascii", "chinese-sts"])
def test_v3_vectors_verify(case: dict[str, Any], plus_spaces: bool) -> None:
    request = _v3_request(case, plus_spaces=plus_spaces)
    identity = _verifier().verify(request, wall_time=_v3_time(case), now=0.0)
    assert identity.access_key_id == "testid"
    assert identity.signature_version == 3
    assert identity.action == case["signed_headers"]["x-acs-action"]
    assert identity.nonce == case["signed_headers"]["x-acs-signature-nonce"]


@pytest.mark.parametrize("case", V3_CASES, ids=["ascii", "chinese-sts"])
def test_v3_any_change_breaks_the_signature(case: dict[str, Any]) -> None:
    verifier = _verifier()
    changed = _v3_request(case, **{"x-acs-action": "UnregisterCustomFace"})
    with pytest.raises(ServiceError) as excinfo:
        verifier.verify(changed, wall_time=_v3_time(case), now=0.0)
    assert _code(excinfo) == (400, "SignatureDoesNotMatch")
    request = _v3_request(case)
    tampered = SignedRequest(
        method=request.method,
        path=request.path,
        query={**request.query, "PersonId": "someone-else"},
        form={},
        headers=request.headers,
        body=b"",
    )
    with pytest.raises(ServiceError) as excinfo:
        verifier.verify(tampered, wall_time=_v3_time(case), now=0.0)
    assert excinfo.value.code == "SignatureDoesNotMatch"
    # The echoed string to sign is what the service shows; it never holds a secret.
    assert "testsecret" not in excinfo.value.message


def test_v3_wrong_secret_unknown_key_time_and_nonce() -> None:
    case = V3_CASES[0]
    request = _v3_request(case)
    when = _v3_time(case)
    with pytest.raises(ServiceError) as excinfo:
        _verifier({"testid": "other"}).verify(request, wall_time=when, now=0.0)
    assert _code(excinfo) == (400, "SignatureDoesNotMatch")
    with pytest.raises(ServiceError) as excinfo:
        _verifier({"someone": "testsecret"}).verify(request, wall_time=when, now=0.0)
    assert _code(excinfo) == (404, "InvalidAccessKeyId.NotFound")
    for skew in (-901.0, 901.0):
        with pytest.raises(ServiceError) as excinfo:
            _verifier().verify(request, wall_time=when + skew, now=0.0)
        assert _code(excinfo) == (400, "InvalidTimeStamp.Expired")
    verifier = _verifier()
    verifier.verify(request, wall_time=when + 899, now=0.0)
    with pytest.raises(ServiceError) as excinfo:
        verifier.verify(request, wall_time=when, now=1.0)
    assert _code(excinfo) == (400, "SignatureNonceUsed")


def test_v3_body_hash_is_checked() -> None:
    case = V3_CASES[0]
    request = _v3_request(case)
    with_body = SignedRequest(
        method=request.method,
        path=request.path,
        query=request.query,
        form={},
        headers=request.headers,
        body=b"CategoryId=x",
    )
    with pytest.raises(ServiceError) as excinfo:
        _verifier().verify(with_body, wall_time=_v3_time(case), now=0.0)
    assert excinfo.value.code == "SignatureDoesNotMatch"
    assert "x-acs-content-sha256" in excinfo.value.message


def test_v3_unsigned_acs_header_or_malformed_authorization_is_incomplete() -> None:
    case = V3_CASES[0]
    extra = _v3_request(case, **{"x-acs-extra": "1"})
    with pytest.raises(ServiceError) as excinfo:
        _verifier().verify(extra, wall_time=_v3_time(case), now=0.0)
    assert _code(excinfo) == (400, "IncompleteSignature")
    broken = _v3_request(case, authorization="ACS3-HMAC-SHA256 Credential=testid")
    with pytest.raises(ServiceError) as excinfo:
        _verifier().verify(broken, wall_time=_v3_time(case), now=0.0)
    assert excinfo.value.code == "IncompleteSignature"


# --- version 1 -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", V1_CASES, ids=[f"v1-{i}" for i in range(len(V1_CASES))])
def test_v1_canonical_forms_match_the_vectors(case: dict[str, Any]) -> None:
    assert canonical_query(case["params"]) == case["canonicalized_query_string"]
    assert v1_string_to_sign(case["method"], case["params"]) == case["string_to_sign"]


@pytest.mark.parametrize("plus_spaces", [False, True], ids=["pct20", "plus"])
@pytest.mark.parametrize("case", V1_CASES, ids=[f"v1-{i}" for i in range(len(V1_CASES))])
def test_v1_vectors_verify_from_the_raw_query(case: dict[str, Any], plus_spaces: bool) -> None:
    params = {**case["params"], "Signature": case["signature"]}
    request = SignedRequest(
        method=case["method"],
        path="/",
        query=decode_params(_raw_query(params, plus_spaces)),
        form={},
        headers={"host": ("mts.cn-shanghai.aliyuncs.com",)},
        body=b"",
    )
    keys = {params["AccessKeyId"]: case["access_key_secret"]}
    identity = _verifier(keys).verify(request, wall_time=_epoch(params["Timestamp"]), now=0.0)
    assert identity.signature_version == 1
    assert identity.action == params["Action"]
    with pytest.raises(ServiceError) as excinfo:
        _verifier({params["AccessKeyId"]: "wrong"}).verify(
            request, wall_time=_epoch(params["Timestamp"]), now=0.0
        )
    assert excinfo.value.code == "SignatureDoesNotMatch"
    token = params.get("SecurityToken")
    if token:  # the echoed string to sign hides an STS token
        assert quote(quote(token, safe=""), safe="") not in excinfo.value.message
        assert "%252A%252A%252A" in excinfo.value.message


def test_v1_params_may_come_in_a_form_body() -> None:
    case = V1_CASES[0]
    params = {**case["params"], "Signature": case["signature"]}
    body_names = {"CategoryId", "PersonId", "ImageUrl"}
    request = SignedRequest(
        method="POST",
        path="/",
        query={k: v for k, v in params.items() if k not in body_names},
        form={k: v for k, v in params.items() if k in body_names},
        headers={},
        body=b"(form)",
    )
    identity = _verifier().verify(request, wall_time=_epoch(params["Timestamp"]), now=0.0)
    assert identity.access_key_id == "testid"


def test_v1_missing_signature_parameters_are_named() -> None:
    case = V1_CASES[0]
    params = dict(case["params"])
    del params["SignatureNonce"]
    request = SignedRequest("POST", "/", {**params, "Signature": "x"}, {}, {}, b"")
    with pytest.raises(ServiceError) as excinfo:
        _verifier().verify(request, wall_time=_epoch(params["Timestamp"]), now=0.0)
    assert _code(excinfo) == (400, "MissingParameter")
    assert '"SignatureNonce"' in excinfo.value.message


# --- pieces ----------------------------------------------------------------------------------


def test_timestamps_parse_or_are_refused() -> None:
    assert parse_timestamp("1970-01-01T00:01:00Z") == 60.0
    assert parse_timestamp("1970-01-01T00:01:00.5Z") == 60.5
    for bad in ("1970-01-01 00:01:00", "yesterday", "1970-01-01T00:01:00+08:00"):
        with pytest.raises(ServiceError) as excinfo:
            parse_timestamp(bad)
        assert excinfo.value.code == "InvalidTimeStamp.Format"


def test_nonces_are_forgotten_after_the_ttl_and_bounded() -> None:
    cache = NonceCache(ttl=900, limit=3)
    assert cache.use("k", "n1", now=0.0)
    assert not cache.use("k", "n1", now=899.0)
    assert cache.use("other-key", "n1", now=899.0)  # nonces are per key
    assert cache.use("k", "n1", now=900.0)  # forgotten after 15 minutes
    for i in range(10):
        cache.use("k", f"x{i}", now=901.0)
    assert len(cache) <= 3


def test_decoding_keeps_the_first_of_repeated_names_and_plus_is_space() -> None:
    assert decode_params("A=1&A=2&B=a+b%2Bc&C=") == {"A": "1", "B": "a b+c", "C": ""}
    with pytest.raises(ServiceError):
        decode_params("A=%ff")


def test_sliding_window_counts_half_open_seconds() -> None:
    window = SlidingWindow()
    for t in (0.0, 0.5, 0.999):
        window.add(t)
    assert window.peak == 3
    window.add(1.0)  # the event at 0.0 is exactly one second old: out of the window
    assert window.count(1.0) == 3
    assert window.peak == 3
    window.add(1.2)
    assert window.peak == 4


def test_quota_is_per_account_and_action_and_slides() -> None:
    quota = Quota(2, {"ListCustomPersons": 1})
    reg = "RegisterCustomFace"
    assert quota.admit("a", reg, 0.0) and quota.admit("a", reg, 0.4)
    assert not quota.admit("a", reg, 0.9)  # refused calls are not charged...
    assert quota.retry_after("a", reg, 0.9) == pytest.approx(0.1)  # ...the first frees at 1.0
    assert quota.admit("b", reg, 0.9)  # ...another account has its own quota
    assert quota.admit("a", "ListCustomPersons", 0.9)  # ...and so has another action
    assert not quota.admit("a", "ListCustomPersons", 0.95)  # with its own limit
    assert quota.admit("a", reg, 1.0)
    assert not quota.admit("a", reg, 1.3)
    assert quota.admit("a", reg, 1.41)
    assert quota.peak == 2
    assert Quota(None).admit("a", reg, 0.0)
    assert Quota(None).retry_after("a", reg, 0.0) == 0.0

"""The signer against an independent implementation written here from the service's rules, on
generated input: percent-encoding, both string-to-sign forms, and the signed wire request.

tests/test_signing.py already checks the official vectors and the shape of the encoding; these
tests add agreement with a second implementation over arbitrary text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from mts_faces import MtsFaceClient
from mts_faces._signing import (
    canonical_query,
    percent_encode,
    v1_signature,
    v1_string_to_sign,
    v3_authorization,
)

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


def ref_encode(value: str) -> str:
    """RFC 3986 percent-encoding of the UTF-8 bytes, upper-case hex, unreserved kept."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in value.encode("utf-8"))


def ref_decode(value: str) -> str:
    """The inverse of :func:`ref_encode` (no ``+`` for space: the service never sends one)."""
    out = bytearray()
    i = 0
    while i < len(value):
        if value[i] == "%":
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out += value[i].encode()
            i += 1
    return out.decode("utf-8")


def ref_canonical(params: dict[str, str]) -> str:
    pairs = sorted((k.encode("utf-8"), k, v) for k, v in params.items())
    return "&".join(f"{ref_encode(k)}={ref_encode(v)}" for _, k, v in pairs)


def ref_v1_signature(params: dict[str, str], secret: str) -> str:
    query = ref_canonical({k: v for k, v in params.items() if k != "Signature"})
    to_sign = "POST&" + ref_encode("/") + "&" + ref_encode(query)
    digest = hmac.new((secret + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def ref_v3_signature(query: dict[str, str], headers: dict[str, str], secret: str) -> str:
    names = sorted(h.lower() for h in headers)
    lowered = {k.lower(): v.strip() for k, v in headers.items()}
    canonical = "\n".join(
        [
            "POST",
            "/",
            ref_canonical(query),
            "".join(f"{n}:{lowered[n]}\n" for n in names),
            ";".join(names),
            hashlib.sha256(b"").hexdigest(),
        ]
    )
    to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    return hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


# Any text that can be encoded as UTF-8 (lone surrogates cannot be, and are refused earlier).
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
params_st = st.dictionaries(names, texts, max_size=6)
secrets_st = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=300)
@given(texts)
def test_percent_encode_matches_reference(value: str) -> None:
    assert percent_encode(value) == ref_encode(value)
    assert ref_decode(percent_encode(value)) == value


@given(params_st)
def test_canonical_query_matches_reference(params: dict[str, str]) -> None:
    assert canonical_query(params) == ref_canonical(params)


@given(params_st, secrets_st)
def test_v1_signature_matches_reference(params: dict[str, str], secret: str) -> None:
    assert v1_signature("POST", params, secret) == ref_v1_signature(params, secret)
    query = ref_canonical({k: v for k, v in params.items() if k != "Signature"})
    assert v1_string_to_sign("post", params) == "POST&%2F&" + ref_encode(query)


@given(
    params_st, st.dictionaries(st.sampled_from(["x-acs-a", "X-Acs-B", "host"]), texts), secrets_st
)
def test_v3_signature_matches_reference(
    query: dict[str, str], headers: dict[str, str], secret: str
) -> None:
    authorization = v3_authorization("POST", query, headers, "KEYID", secret)
    signature = authorization.rsplit("Signature=", 1)[1]
    assert signature == ref_v3_signature(query, headers, secret)


# --- what the client puts on the wire ------------------------------------------------------------

wire_values = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)


def query_of(url: str) -> dict[str, str]:
    raw = url.split("?", 1)[1]
    pairs = [pair.split("=", 1) for pair in raw.split("&")]
    return {ref_decode(k): ref_decode(v) for k, v in pairs}


@settings(max_examples=100)
@given(
    st.fixed_dictionaries({"CategoryId": wire_values, "PersonId": wire_values, "ImageUrl": texts}),
    st.sampled_from([1, 3]),
    st.booleans(),
)
def test_signed_request_verifies_independently(
    params: dict[str, str], version: Literal[1, 3], sts: bool
) -> None:
    secret, token = "s3cr/t+=ü", ("CAIS/+=token" if sts else None)
    client = MtsFaceClient(
        access_key_id="KEYID",
        access_key_secret=secret,
        security_token=token,
        signature_version=version,
        endpoint="https://mts.cn-shanghai.aliyuncs.com",
    )
    url, headers = client._sign("RegisterCustomFace", params, client.credentials)
    sent = query_of(url)
    if version == 1:
        signature = sent.pop("Signature")
        assert {k: sent[k] for k in params} == params
        assert sent.get("SecurityToken") == token
        assert signature == ref_v1_signature(sent, secret)
    else:
        assert sent == params
        credential, signed, signature = headers["authorization"].split(" ", 1)[1].split(",")
        assert credential == "Credential=KEYID"
        names = signed.removeprefix("SignedHeaders=").split(";")
        assert headers.get("x-acs-security-token") == token
        assert {"host", "x-acs-date", "x-acs-signature-nonce"} <= set(names)
        signed_headers = {n: headers[n] for n in names}
        assert signature.removeprefix("Signature=") == ref_v3_signature(
            sent, signed_headers, secret
        )

"""Signature checks, rebuilt from the request as received: version 3 and version 1.

Written apart from the client's signer on purpose: the emulator is the client's independent
check, so this module shares no code with it. Both versions percent-encode as RFC 3986 with
UTF-8 (only ``A-Z a-z 0-9 - _ . ~`` kept). The query string is decoded first, ``+`` as a
space, because the official SDK builds its URLs with ``urlencode`` (spaces as ``+``) while
others send ``%20``: either way the signed value is the decoded one.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import hmac
import re
from collections import deque
from collections.abc import Mapping
from urllib.parse import quote, unquote_plus

import attrs

from . import _errors as errors

V3_ALGORITHM = "ACS3-HMAC-SHA256"
API_VERSION = "2014-06-18"
MAX_PARAMS = 1000


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def encode(value: str) -> str:
    """RFC 3986 percent-encoding of UTF-8, as both signature versions use it."""
    # Most values (IDs, nonces) need no escaping; skipping quote() for them saves real time.
    return value if _UNRESERVED.fullmatch(value) else quote(value, safe="~")


def canonical_query(params: Mapping[str, str]) -> str:
    """``name=value`` pairs sorted by name, percent-encoded, joined with ``&``."""
    return "&".join(
        f"{encode(name)}={encode(params[name])}" for name in sorted(params, key=str.encode)
    )


@attrs.frozen
class SignedRequest:
    """What the checks need of one request: decoded parameters, headers, the raw body."""

    method: str
    path: str
    query: Mapping[str, str]
    """Query-string parameters, decoded."""
    form: Mapping[str, str]
    """Parameters from an ``application/x-www-form-urlencoded`` body, decoded."""
    headers: Mapping[str, tuple[str, ...]]
    """Header values by lower-case name, in the order received."""
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), or None."""
        values = self.headers.get(name)
        return values[0] if values else None


@attrs.frozen
class Identity:
    """A request whose signature checked out: who sent it and what it asks for."""

    access_key_id: str
    action: str | None
    version: str | None
    nonce: str
    signature_version: int


class NonceCache:
    """Nonces seen per AccessKeyId; each is forgotten ``ttl`` seconds after it was used.

    ``limit`` bounds memory under a flood: past it the oldest nonces are forgotten early.
    """

    def __init__(self, ttl: float, limit: int) -> None:
        self._ttl = ttl
        self._limit = limit
        self._seen: set[tuple[str, str]] = set()
        self._order: deque[tuple[float, tuple[str, str]]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def use(self, access_key_id: str, nonce: str, now: float) -> bool:
        """Record ``nonce``; False when it was already used within the ttl."""
        order = self._order
        while order and (order[0][0] <= now - self._ttl or len(order) >= self._limit):
            self._seen.discard(order.popleft()[1])
        entry = (access_key_id, nonce)
        if entry in self._seen:
            return False
        self._seen.add(entry)
        order.append((now, entry))
        return True

    def clear(self) -> None:
        """Forget every nonce."""
        self._seen.clear()
        self._order.clear()


_TIMESTAMP = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?Z")


@functools.lru_cache(maxsize=256)
def parse_timestamp(value: str) -> float:
    """Seconds since the epoch of ``YYYY-MM-DDThh:mm:ssZ`` (fractional seconds allowed)."""
    # Cached: concurrent requests carry the same second, and strptime is slow.
    match = _TIMESTAMP.fullmatch(value.strip())
    if match is None:
        raise errors.TIMESTAMP_FORMAT
    try:
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        moment = datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.UTC)
    except ValueError:
        raise errors.TIMESTAMP_FORMAT from None
    return moment.timestamp() + float(match.group(7) or 0.0)


class Verifier:
    """Checks a request's key, timestamp, signature and nonce, in that order."""

    def __init__(self, keys: Mapping[str, str], *, tolerance: float, nonces: NonceCache) -> None:
        self._keys = dict(keys)
        self._tolerance = tolerance
        self._nonces = nonces

    def verify(self, request: SignedRequest, *, wall_time: float, now: float) -> Identity:
        """Return who signed ``request``, or raise the service's error for it."""
        authorization = request.header("authorization")
        if authorization is not None and authorization.startswith("ACS3-"):
            identity = self._verify_v3(request, authorization, wall_time)
        else:
            identity = self._verify_v1(request, wall_time)
        # Only a verified request may burn a nonce, or anyone could block others' nonces.
        if not self._nonces.use(identity.access_key_id, identity.nonce, now):
            raise errors.NONCE_USED
        return identity

    def _secret(self, access_key_id: str) -> str:
        secret = self._keys.get(access_key_id)
        if secret is None:
            raise errors.UNKNOWN_KEY
        return secret

    def _check_time(self, timestamp: str, wall_time: float) -> None:
        if abs(parse_timestamp(timestamp) - wall_time) > self._tolerance:
            raise errors.TIMESTAMP_EXPIRED

    # --- version 3 ---------------------------------------------------------------------------

    def _verify_v3(self, request: SignedRequest, authorization: str, wall_time: float) -> Identity:
        algorithm, _, rest = authorization.partition(" ")
        if algorithm != V3_ALGORITHM:
            raise incomplete(f"unsupported algorithm {algorithm!r}; use {V3_ALGORITHM}")
        fields = parse_authorization(rest)
        access_key_id = fields["Credential"]
        secret = self._secret(access_key_id)
        date = request.header("x-acs-date")
        if not date:
            raise errors.missing_parameter("x-acs-date")
        self._check_time(date, wall_time)
        nonce = request.header("x-acs-signature-nonce")
        if not nonce:
            raise errors.missing_parameter("x-acs-signature-nonce")
        signed_names = fields["SignedHeaders"].split(";")
        _require_signed(request, signed_names)
        payload_hash = request.header("x-acs-content-sha256") or ""
        if payload_hash.lower() != hashlib.sha256(request.body).hexdigest():
            raise errors.ServiceError(
                400,
                "SignatureDoesNotMatch",
                "The x-acs-content-sha256 header does not match the SHA-256 of the body.",
            )
        canonical = v3_canonical_request(request, signed_names, payload_hash)
        string_to_sign = f"{V3_ALGORITHM}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        expected = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, fields["Signature"].lower()):
            raise errors.signature_mismatch(string_to_sign)
        return Identity(
            access_key_id,
            request.header("x-acs-action") or request.query.get("Action"),
            request.header("x-acs-version") or request.query.get("Version"),
            nonce,
            3,
        )

    # --- version 1 ---------------------------------------------------------------------------

    def _verify_v1(self, request: SignedRequest, wall_time: float) -> Identity:
        # Version 1 signs every parameter, from the query and the form body alike.
        params = {**request.form, **request.query}
        for name in ("AccessKeyId", "Signature", "SignatureNonce", "Timestamp"):
            if not params.get(name):
                raise errors.missing_parameter(name)
        secret = self._secret(params["AccessKeyId"])
        method = params.get("SignatureMethod", "HMAC-SHA1")
        if method != "HMAC-SHA1":
            raise errors.invalid_parameter("SignatureMethod", f"{method!r} is not supported")
        version = params.get("SignatureVersion", "1.0")
        if version != "1.0":
            raise errors.invalid_parameter("SignatureVersion", f"{version!r} is not supported")
        self._check_time(params["Timestamp"], wall_time)
        string_to_sign = v1_string_to_sign(request.method, params)
        digest = hmac.new(f"{secret}&".encode(), string_to_sign.encode(), hashlib.sha1).digest()
        if not hmac.compare_digest(base64.b64encode(digest).decode(), params["Signature"]):
            token = params.get("SecurityToken")
            shown = params if not token else {**params, "SecurityToken": "***"}
            raise errors.signature_mismatch(v1_string_to_sign(request.method, shown))
        return Identity(
            params["AccessKeyId"],
            params.get("Action"),
            params.get("Version"),
            params["SignatureNonce"],
            1,
        )


def incomplete(why: str) -> errors.ServiceError:
    """Shorthand for an IncompleteSignature error."""
    return errors.incomplete_signature(why)


def parse_authorization(rest: str) -> dict[str, str]:
    """``Credential=..,SignedHeaders=..,Signature=..`` into a dict; all three required."""
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name] = value.strip()
    for name in ("Credential", "SignedHeaders", "Signature"):
        if not fields.get(name):
            raise incomplete(f"the Authorization header has no {name}")
    return fields


def _require_signed(request: SignedRequest, signed_names: list[str]) -> None:
    # The host and every x-acs-* header must be covered, or they could be changed in transit.
    signed = set(signed_names)
    if any(name != name.lower() for name in signed_names):
        raise incomplete("SignedHeaders must be lower case")
    for name in request.headers:
        if (name == "host" or name.startswith("x-acs-")) and name not in signed:
            raise incomplete(f"header {name!r} is not signed")
    for name in signed_names:
        if name not in request.headers:
            raise incomplete(f"signed header {name!r} is missing from the request")


def v3_canonical_request(request: SignedRequest, signed_names: list[str], payload_hash: str) -> str:
    """Method, path, canonical query, the signed headers, their names and the body hash."""
    # Repeated headers are signed as their trimmed values, sorted, joined by commas.
    names = sorted(signed_names)
    canonical_headers = "".join(
        f"{name}:{','.join(sorted(v.strip() for v in request.headers[name]))}\n" for name in names
    )
    return "\n".join(
        (
            request.method,
            request.path,
            canonical_query(request.query),
            canonical_headers,
            ";".join(names),
            payload_hash,
        )
    )


def v1_string_to_sign(method: str, params: Mapping[str, str]) -> str:
    """``METHOD&%2F&`` + the encoded canonical query of every parameter but ``Signature``."""
    query = canonical_query({k: v for k, v in params.items() if k != "Signature"})
    return f"{method}&%2F&{encode(query)}"


def decode_params(raw: str) -> dict[str, str]:
    """Decode a query string or form body (``+`` is a space); a repeated name keeps its first."""
    params: dict[str, str] = {}
    if not raw:
        return params
    parts = raw.split("&")
    if len(parts) > MAX_PARAMS:
        raise errors.invalid_parameter("query", f"has more than {MAX_PARAMS} parameters")
    for part in parts:
        if not part:
            continue
        name, _, value = part.partition("=")
        try:
            # Most values need no decoding; unquote_plus is the slow part of a request.
            if "%" in name or "+" in name:
                name = unquote_plus(name, errors="strict")
            if "%" in value or "+" in value:
                value = unquote_plus(value, errors="strict")
        except UnicodeDecodeError as exc:
            raise errors.invalid_parameter(name, f"cannot be decoded as UTF-8 ({exc})") from None
        params.setdefault(name, value)
    return params

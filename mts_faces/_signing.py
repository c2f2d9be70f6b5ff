"""Request signing, exactly as Alibaba Cloud's SDKs sign RPC calls. Pure functions, no I/O.

Version 3 (``ACS3-HMAC-SHA256``) is what today's official SDK sends by default; version 1
(HMAC-SHA1 ``Signature`` parameter) is what the older ``aliyun-python-sdk-core`` sends. The
service accepts both. Both share one percent-encoding: RFC 3986 unreserved characters
(``A-Z a-z 0-9 - _ . ~``) stay, everything else is UTF-8 percent-encoded (so a space is ``%20``,
never ``+``, and ``*`` is ``%2A``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import quote

V3_ALGORITHM = "ACS3-HMAC-SHA256"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()


def percent_encode(value: str) -> str:
    """Percent-encode ``value`` as Alibaba's signers do (RFC 3986, UTF-8, ``~`` kept)."""
    # quote() always keeps ``A-Za-z0-9_.-~``; an empty ``safe`` escapes everything else,
    # ``/`` included, which is what both signature versions require.
    return quote(value, safe="")


def canonical_query(params: Mapping[str, str]) -> str:
    """Parameters sorted by name (byte order), ``name=value`` percent-encoded, joined by ``&``."""
    return "&".join(
        f"{percent_encode(name)}={percent_encode(params[name])}"
        for name in sorted(params, key=lambda n: n.encode())
    )


Query = Mapping[str, str] | str
"""Request parameters, or their :func:`canonical_query` already built: the client builds it
once per attempt and uses it both to sign and as the URL's query string."""


def _canonical(query: Query) -> str:
    return query if isinstance(query, str) else canonical_query(query)


# --- version 1 -------------------------------------------------------------------------------


def v1_string_to_sign(method: str, params: Query) -> str:
    """``METHOD&%2F&percent-encode(canonical query)`` over every parameter but ``Signature``."""
    if not isinstance(params, str) and "Signature" in params:
        params = {k: v for k, v in params.items() if k != "Signature"}
    return f"{method.upper()}&%2F&{percent_encode(_canonical(params))}"


def v1_signature(method: str, params: Query, access_key_secret: str) -> str:
    """Base64 HMAC-SHA1 of the version-1 string to sign, keyed with ``secret + "&"``."""
    digest = hmac.new(
        f"{access_key_secret}&".encode(),
        v1_string_to_sign(method, params).encode(),
        hashlib.sha1,
    ).digest()
    return base64.b64encode(digest).decode()


# --- version 3 -------------------------------------------------------------------------------


def v3_canonical_request(
    method: str,
    query: Query,
    signed_headers: Mapping[str, str],
    payload_sha256: str = EMPTY_BODY_SHA256,
    pathname: str = "/",
) -> tuple[str, str]:
    """The canonical request and the ``SignedHeaders`` list it commits to."""
    headers = sorted((name.lower(), value.strip()) for name, value in signed_headers.items())
    names = ";".join(name for name, _ in headers)
    canonical_headers = "".join(f"{name}:{value}\n" for name, value in headers)
    request = "\n".join(
        (method.upper(), pathname, _canonical(query), canonical_headers, names, payload_sha256)
    )
    return request, names


def v3_authorization(
    method: str,
    query: Query,
    signed_headers: Mapping[str, str],
    access_key_id: str,
    access_key_secret: str,
    payload_sha256: str = EMPTY_BODY_SHA256,
    pathname: str = "/",
) -> str:
    """The ``Authorization`` header value of an ACS3-HMAC-SHA256 request."""
    request, names = v3_canonical_request(method, query, signed_headers, payload_sha256, pathname)
    string_to_sign = f"{V3_ALGORITHM}\n{hashlib.sha256(request.encode()).hexdigest()}"
    signature = hmac.new(
        access_key_secret.encode(), string_to_sign.encode(), hashlib.sha256
    ).hexdigest()
    return f"{V3_ALGORITHM} Credential={access_key_id},SignedHeaders={names},Signature={signature}"

"""The identity of an image: its URL less the query parameters that only authorise the fetch.

A private bucket's image URLs are signed, and signed anew on every run: the same photo comes
back as ``https://b.oss-cn-shanghai.aliyuncs.com/p/1.jpg?OSSAccessKeyId=…&Expires=…&
Signature=…`` with another ``Expires`` and ``Signature`` each time. So a face is known by
(category, person, **image key**), never by its raw URL. The default key is the URL with
every query parameter named in :data:`SIGNING_PARAMETERS` removed (names compared
case-insensitively; the other parameters, such as ``x-oss-process``, stay in their order,
since they change the image). A manifest may carry an explicit ``image_key`` column (a
content digest, a stable photo ID): it wins over the URL.

The key of a listed face is computed from its ``ImageUrl`` the same way, so the ledger, the
cap and duplicate checks, the settling of lost answers, ``verify --repair``, ``plan``,
``export`` and ``sync --prune`` all compare keys.

>>> ImageKeys().key("https://b.example/p/1.jpg?Expires=1&Signature=x&x-oss-process=a")
'https://b.example/p/1.jpg?x-oss-process=a'
>>> ImageKeys().ignoring("token").key("https://cdn.example/1.jpg?token=abc")
'https://cdn.example/1.jpg'
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import attrs

__all__ = ["SIGNING_PARAMETERS", "ImageKeys"]

SIGNING_PARAMETERS: frozenset[str] = frozenset(
    {
        # OSS signature version 1 (query-string authorisation) and its STS token.
        "ossaccesskeyid",
        "expires",
        "signature",
        "security-token",
        # OSS signature version 4.
        "x-oss-signature-version",
        "x-oss-credential",
        "x-oss-date",
        "x-oss-expires",
        "x-oss-signature",
        "x-oss-additional-headers",
        "x-oss-security-token",
        # Alibaba Cloud CDN URL authentication (types A; B and C sign in the path).
        "auth_key",
    }
)
"""Query parameters (casefolded) that authorise a fetch and say nothing of the image."""


def _fold(names: frozenset[str] | set[str] | tuple[str, ...]) -> frozenset[str]:
    return frozenset(name.casefold() for name in names)


@attrs.frozen
class ImageKeys:
    """How image URLs are keyed: ``ignore`` holds the query parameter names (compared
    casefolded) that are not part of an image's identity; the default is
    :data:`SIGNING_PARAMETERS`. Name more with :meth:`ignoring` (or the command line's
    ``--ignore-url-param``)."""

    ignore: frozenset[str] = attrs.field(default=SIGNING_PARAMETERS, converter=_fold)

    def ignoring(self, *names: str) -> ImageKeys:
        """These keys, also ignoring the query parameters ``names``."""
        return ImageKeys(self.ignore | _fold(names))

    @property
    def rule(self) -> str:
        """The rule as one stable string (the ledger records it to notice a change)."""
        return "strip:" + ",".join(sorted(self.ignore))

    def key(self, url: str) -> str:
        """The image key of ``url``: the URL without its ignored query parameters (an
        empty query and a fragment are dropped too)."""
        if "?" not in url and "#" not in url:
            return url
        parts = urlsplit(url)
        kept = [
            pair
            for pair in parts.query.split("&")
            if pair and pair.split("=", 1)[0].casefold() not in self.ignore
        ]
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(kept), ""))


DEFAULT_IMAGE_KEYS = ImageKeys()
"""The default rule: :data:`SIGNING_PARAMETERS` ignored."""

"""Alibaba's official SDK (``alibabacloud-mts20140618``, the ``bench`` extra), used as documented.

One client object for the whole run, its ``*_with_options_async`` method and one
``RuntimeOptions``; the endpoint is the emulator's ``host:port`` with protocol http or https.
For TLS the SDK's own ``ca`` option names the CA file: it builds an ``ssl.SSLContext`` from it
(for every call, as it opens a new aiohttp session per call). The one construction of it
lives beside the emulator's rival program, which sends through it too.
"""

from __future__ import annotations

# The SDK ships no type information.
from alibabacloud_tea_openapi.exceptions import (  # type: ignore[import-untyped]
    AlibabaCloudException,
)

from mts_faces.emulator._rival_client import Register
from mts_faces.emulator._rival_client import official_register as _official

__all__ = ["Register", "error_code", "official_register"]


def official_register(
    url: str, access_key_id: str, access_key_secret: str, ca_file: str | None = None
) -> Register:
    """``await register(category, person, image_url)`` through one official SDK client."""
    register, _ = _official(url, access_key_id, access_key_secret, ca_file=ca_file)
    return register


def error_code(exc: BaseException) -> str | None:
    """The service's error ``Code`` carried by an SDK exception, if it is one."""
    return str(exc.code) if isinstance(exc, AlibabaCloudException) else None

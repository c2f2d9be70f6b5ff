"""Alibaba's official SDK (``alibabacloud-mts20140618``, the ``bench`` extra), used as documented.

One client object for the whole run, its ``*_with_options_async`` method and one
``RuntimeOptions``; the endpoint is the emulator's ``host:port`` with protocol http or https.
For TLS the SDK's own ``ca`` option names the CA file: it builds an ``ssl.SSLContext`` from it
(for every call, as it opens a new aiohttp session per call).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

# The SDK ships no type information.
from alibabacloud_mts20140618 import models  # type: ignore[import-untyped]
from alibabacloud_mts20140618.client import Client  # type: ignore[import-untyped]
from alibabacloud_tea_openapi.exceptions import (  # type: ignore[import-untyped]
    AlibabaCloudException,
)
from alibabacloud_tea_openapi.utils_models import Config  # type: ignore[import-untyped]
from darabonba.runtime import RuntimeOptions  # type: ignore[import-untyped]

Register = Callable[[str, str, str], Awaitable[None]]


def official_register(
    url: str, access_key_id: str, access_key_secret: str, ca_file: str | None = None
) -> Register:
    """``await register(category, person, image_url)`` through one official SDK client."""
    parts = urlsplit(url)
    config = Config(
        access_key_id=access_key_id,
        access_key_secret=access_key_secret,
        endpoint=parts.netloc,
        protocol=parts.scheme,
        region_id="cn-shanghai",
        ca=ca_file,
    )
    client = Client(config)
    runtime = RuntimeOptions()

    async def register(category_id: str, person_id: str, image_url: str) -> None:
        request = models.RegisterCustomFaceRequest(
            category_id=category_id, person_id=person_id, image_url=image_url
        )
        await client.register_custom_face_with_options_async(request, runtime)

    return register


def error_code(exc: BaseException) -> str | None:
    """The service's error ``Code`` carried by an SDK exception, if it is one."""
    return str(exc.code) if isinstance(exc, AlibabaCloudException) else None

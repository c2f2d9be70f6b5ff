"""Image checks: will the service be able to fetch each ImageUrl? Asked before any quota is
spent (``register --check-images``, ``sync --check-images``, ``mts-faces check-images``).

Each distinct URL's headers are fetched concurrently, with this module's own concurrency and
timeout (not the MTS quota: these requests go to the image hosts): ``HEAD``, and when a host
refuses HEAD, a ranged ``GET`` of one byte (its body is not read). A URL fails, with the
reason, when it is unreachable, answers 4xx/5xx, has a content type that is not an image, or
is larger than ``max_bytes``. Redirects are followed to ``max_redirects`` hops, each hop
checked again. A host that resolves to a private, loopback, link-local or otherwise
non-public address is refused unless ``allow_private`` (the service fetches from the public
internet; a private address in a manifest is a mistake, or an attempt to probe a network).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urljoin, urlsplit

import attrs
import httpx

DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
"""The largest image accepted by default (10 MiB)."""

_REDIRECTS = (301, 302, 303, 307, 308)
_NO_HEAD = (400, 403, 405, 501)  # hosts (signed-URL stores among them) that refuse HEAD


@attrs.frozen
class ImageCheckOptions:
    """How images are checked.

    ``concurrency``: URLs checked at once. ``timeout``: seconds for each request.
    ``max_bytes``: the largest image accepted. ``max_redirects``: hops followed.
    ``allow_private``: accept hosts on private and loopback addresses.
    """

    concurrency: int = attrs.field(default=16)
    timeout: float = 10.0
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_redirects: int = 5
    allow_private: bool = False

    @concurrency.validator
    def _check(self, _: object, value: int) -> None:
        if value < 1:
            raise ValueError(f"concurrency must be >= 1, got {value}")


class ImageProblem(Exception):
    """Why an image cannot be used (the message is the row's skip reason)."""


async def _refuse_private(host: str) -> None:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ImageProblem(f"unreachable: cannot resolve {host} ({exc})") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise ImageProblem(
                f"refused: {host} is at the non-public address {address} "
                "(--allow-private-images accepts it)"
            )


def _size(response: httpx.Response) -> int | None:
    content_range = response.headers.get("content-range", "")
    if "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    length = response.headers.get("content-length")
    if response.request.method == "HEAD" and length and length.isdigit():
        return int(length)
    return None


async def _fetch_headers(client: httpx.AsyncClient, url: str) -> httpx.Response:
    response = await client.head(url)
    if response.status_code in _NO_HEAD:
        request = client.build_request("GET", url, headers={"Range": "bytes=0-0"})
        response = await client.send(request, stream=True)
        await response.aclose()  # the headers are all we want
    return response


async def check_image(client: httpx.AsyncClient, url: str, options: ImageCheckOptions) -> None:
    """Raise :class:`ImageProblem` when the service could not use the image at ``url``."""
    current = url
    for _ in range(options.max_redirects + 1):
        parts = urlsplit(current)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImageProblem(f"not an http(s) URL: {current[:80]}")
        if not options.allow_private:
            await _refuse_private(parts.hostname)
        try:
            response = await _fetch_headers(client, current)
        except httpx.TimeoutException:
            raise ImageProblem(f"unreachable: no answer within {options.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise ImageProblem(f"unreachable: {type(exc).__name__}: {exc}") from None
        if response.status_code in _REDIRECTS and "location" in response.headers:
            current = urljoin(current, response.headers["location"])
            continue
        if response.status_code >= 400:
            raise ImageProblem(f"HTTP {response.status_code} {response.reason_phrase}".rstrip())
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not content_type.startswith("image/"):
            raise ImageProblem(f"not an image: content type {content_type or 'missing'!r}")
        size = _size(response)
        if size is not None and size > options.max_bytes:
            raise ImageProblem(f"too large: {size:,} bytes (limit {options.max_bytes:,})")
        return
    raise ImageProblem(f"more than {options.max_redirects} redirects")


async def check_images(
    urls: Iterable[str],
    options: ImageCheckOptions | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, str]:
    """Check each distinct URL of ``urls``; returns URL → reason for those that fail (the
    others are absent). ``transport``: for tests (an ``httpx.MockTransport``)."""
    options = options or ImageCheckOptions()
    distinct = iter(dict.fromkeys(urls))
    problems: dict[str, str] = {}
    async with httpx.AsyncClient(
        timeout=options.timeout,
        follow_redirects=False,
        transport=transport,
        limits=httpx.Limits(max_connections=options.concurrency),
        headers={"User-Agent": "mts-faces image check"},
    ) as client:

        async def worker() -> None:
            for url in distinct:  # shared: each URL is taken by one worker
                try:
                    await check_image(client, url, options)
                except ImageProblem as exc:
                    problems[url] = f"image check: {exc}"

        await asyncio.gather(*(worker() for _ in range(options.concurrency)))
    return problems

"""Access keys from arguments, the environment, or Alibaba Cloud's own credentials chain.

The secret parts never reach a repr, a log line or an error. Explicit arguments and the
``ALIBABA_CLOUD_*`` variables need nothing else; the rest of the official default chain (OIDC,
the ``~/.aliyun/config.json`` profile, ``~/.alibabacloud/credentials``, the ECS RAM role
through the metadata server, a credentials URI) comes from ``alibabacloud-credentials``, the
``credentials`` extra, which runs in a worker thread so that the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote_plus

import attrs

from ._exceptions import CredentialsError
from ._signing import percent_encode

logger = logging.getLogger("mts_faces.credentials")

CREDENTIALS_EXTRA = "credentials"
"""The extra that brings Alibaba Cloud's credentials chain: ``pip install '.[credentials]'``."""
_OFFICIAL_PACKAGE = "alibabacloud_credentials"

ENV_ACCESS_KEY_ID = "ALIBABA_CLOUD_ACCESS_KEY_ID"
ENV_ACCESS_KEY_SECRET = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"
ENV_SECURITY_TOKEN = "ALIBABA_CLOUD_SECURITY_TOKEN"


@attrs.frozen
class Credentials:
    """An AccessKey pair, plus an STS security token when the pair is temporary."""

    access_key_id: str
    access_key_secret: str = attrs.field(repr=False)
    security_token: str | None = attrs.field(default=None, repr=False)

    def __repr__(self) -> str:
        # attrs would still show the field names; say outright that the secrets are hidden.
        token = ", security_token='***'" if self.security_token else ""
        return f"Credentials(access_key_id={self.access_key_id!r}, access_key_secret='***'{token})"

    async def get_credentials(self) -> Credentials:
        """Itself: fixed credentials are their own :class:`CredentialsProvider`."""
        return self

    def redact(self, text: str) -> str:
        """``text`` with the secret and the token replaced by ``***``, also in encoded forms.

        The service's ``SignatureDoesNotMatch`` message echoes the string to sign, in which a
        version-1 ``SecurityToken`` appears percent-encoded once or twice.
        """
        for secret in (self.access_key_secret, self.security_token):
            if not secret:
                continue
            once = percent_encode(secret)
            for form in (secret, once, percent_encode(once), quote_plus(secret)):
                text = text.replace(form, "***")
        return text

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """Read the ``ALIBABA_CLOUD_*`` variables; a clear error names any that are missing."""
        env = os.environ if environ is None else environ
        key_id = env.get(ENV_ACCESS_KEY_ID, "")
        secret = env.get(ENV_ACCESS_KEY_SECRET, "")
        missing = [
            n for n, v in ((ENV_ACCESS_KEY_ID, key_id), (ENV_ACCESS_KEY_SECRET, secret)) if not v
        ]
        if missing:
            raise CredentialsError(_missing_extra_message(missing))
        return cls(key_id, secret, env.get(ENV_SECURITY_TOKEN) or None)


@runtime_checkable
class CredentialsProvider(Protocol):
    """Where the client gets the credentials to sign each request with.

    :class:`Credentials` (fixed keys) and :class:`AlibabaCloudCredentials` (the official chain,
    refreshed) are providers; so is any object with these two methods.
    """

    async def get_credentials(self) -> Credentials:
        """The credentials to sign the next request with; must not block the event loop."""
        ...

    def redact(self, text: str) -> str:
        """``text`` with every secret this provider has handed out replaced by ``***``."""
        ...


def official_chain_available() -> bool:
    """True when ``alibabacloud-credentials`` (the ``credentials`` extra) is installed."""
    return importlib.util.find_spec(_OFFICIAL_PACKAGE) is not None


class AlibabaCloudCredentials:
    """Credentials from Alibaba Cloud's own chain (``alibabacloud-credentials``), kept fresh.

    Without ``provider``, the official default chain, in its own order: the
    ``ALIBABA_CLOUD_ACCESS_KEY_ID``/``_SECRET``/``SECURITY_TOKEN`` variables; OIDC
    (``ALIBABA_CLOUD_ROLE_ARN``, ``ALIBABA_CLOUD_OIDC_PROVIDER_ARN``,
    ``ALIBABA_CLOUD_OIDC_TOKEN_FILE``); the aliyun CLI profile ``~/.aliyun/config.json``
    (``ALIBABA_CLOUD_PROFILE`` picks one); ``~/.alibabacloud/credentials``
    (``ALIBABA_CLOUD_CREDENTIALS_FILE``); the ECS RAM role from the instance metadata server
    (``ALIBABA_CLOUD_ECS_METADATA`` names the role, ``ALIBABA_CLOUD_ECS_METADATA_DISABLED=true``
    skips it); ``ALIBABA_CLOUD_CREDENTIALS_URI``. STS credentials are refreshed by that
    library before they expire. The library reads these variables when it is first imported.

    Every call to the library runs in a worker thread (it reads files, takes thread locks and
    makes blocking HTTP calls), one at a time. The credentials are asked for again every
    ``refresh_interval`` seconds, in the background while the last ones keep signing; a
    caller waits only for the very first credentials. A failed background refresh is logged
    and the last credentials stay in use until the next try; when there are none yet, calls
    fail with the same :class:`CredentialsError` until the next try.

    Args:
        provider: any credentials provider of ``alibabacloud-credentials`` (an object with a
            blocking ``get_credentials()``), e.g. ``EcsRamRoleCredentialsProvider(role_name=...)``;
            default: its ``DefaultCredentialsProvider()``, built on first use.
        refresh_interval: seconds between two questions to the library (default 60; the
            library itself renews STS credentials 15 minutes or more before they expire).
        clock: monotonic seconds; replaceable in tests.
    """

    def __init__(
        self,
        provider: Any = None,
        *,
        refresh_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not refresh_interval > 0:
            raise CredentialsError(f"refresh_interval must be > 0, got {refresh_interval!r}")
        if provider is None and not official_chain_available():
            raise CredentialsError(_missing_extra_message())
        self._provider = provider
        self.refresh_interval = refresh_interval
        self._clock = clock
        self._current: Credentials | None = None
        self._due = 0.0
        self._seen: list[Credentials] = []
        self._refresh: asyncio.Future[Credentials] | None = None
        self._failure: str | None = None

    def __repr__(self) -> str:
        return f"AlibabaCloudCredentials(access_key_id={self.access_key_id!r})"

    @property
    def access_key_id(self) -> str | None:
        """The AccessKey ID in use, or None before the first credentials arrived."""
        return self._current.access_key_id if self._current else None

    async def get_credentials(self) -> Credentials:
        """The current credentials; waits only when there are none yet.

        Raises :class:`CredentialsError` when the chain finds none.
        """
        current = self._current
        if current is not None:
            if self._clock() >= self._due and self._refresh is None:
                self._start_refresh()  # in the background; the current ones keep signing
            return current
        if self._refresh is None:
            if self._failure is not None and self._clock() < self._due:
                # The chain found nothing a moment ago: say so again without asking it (its
                # metadata-server timeouts would otherwise slow down every call).
                raise CredentialsError(self._failure)
            self._start_refresh()
        assert self._refresh is not None
        # Shielded: one caller cancelled does not cancel the others' refresh.
        return await asyncio.shield(self._refresh)

    def redact(self, text: str) -> str:
        """``text`` with every secret and token handed out so far replaced by ``***``."""
        for credentials in self._seen:
            text = credentials.redact(text)
        return text

    def _start_refresh(self) -> None:
        refresh = asyncio.ensure_future(asyncio.to_thread(self._fetch_blocking))
        refresh.add_done_callback(self._refresh_done)
        self._refresh = refresh

    def _refresh_done(self, refresh: asyncio.Future[Credentials]) -> None:
        self._refresh = None
        self._due = self._clock() + self.refresh_interval
        if refresh.cancelled():
            return
        error = refresh.exception()
        self._failure = None if error is None or self._current is not None else str(error)
        if error is None:
            fresh = refresh.result()
            if fresh != self._current:
                logger.debug("credentials refreshed (AccessKey ID %s)", fresh.access_key_id)
            self._current = fresh
            if fresh not in self._seen:
                # Kept so that an answer to a request signed before the change is redacted too.
                self._seen = [*self._seen[-7:], fresh]
        elif self._current is not None:
            logger.warning("credentials refresh failed, the last ones stay in use: %s", error)

    def _fetch_blocking(self) -> Credentials:
        """Ask the library (in a worker thread)."""
        try:
            if self._provider is None:
                module = importlib.import_module(f"{_OFFICIAL_PACKAGE}.provider")
                self._provider = module.DefaultCredentialsProvider()
            got = self._provider.get_credentials()
            key_id = got.get_access_key_id()
            secret = got.get_access_key_secret()
            token = got.get_security_token()
        except Exception as exc:
            raise CredentialsError(
                "no credentials from the Alibaba Cloud credentials chain "
                f"({type(exc).__name__}: {exc}); pass access_key_id and access_key_secret, "
                f"or set {ENV_ACCESS_KEY_ID} and {ENV_ACCESS_KEY_SECRET}"
            ) from None
        if not key_id or not secret:
            raise CredentialsError("the Alibaba Cloud credentials chain gave an empty AccessKey")
        return Credentials(key_id, secret, token or None)


def _missing_extra_message(missing_env: list[str] | None = None) -> str:
    env = " and ".join(missing_env or [ENV_ACCESS_KEY_ID, ENV_ACCESS_KEY_SECRET])
    message = (
        f"no credentials: pass access_key_id and access_key_secret, or set {env} "
        f"(and {ENV_SECURITY_TOKEN} for STS credentials)"
    )
    if not official_chain_available():
        message += (
            f"; for profile files, ECS RAM roles and OIDC install the {CREDENTIALS_EXTRA!r} "
            f"extra (from a checkout: pip install '.[{CREDENTIALS_EXTRA}]')"
        )
    return message


def resolve_credentials(
    access_key_id: str | None,
    access_key_secret: str | None,
    security_token: str | None,
    credentials: Credentials | CredentialsProvider | None,
) -> Credentials | CredentialsProvider:
    """Explicit credentials win; a lone half of a pair is an error; then the environment;
    then, when the ``credentials`` extra is installed, Alibaba Cloud's default chain."""
    if credentials is not None:
        return credentials
    if access_key_id or access_key_secret:
        if not (access_key_id and access_key_secret):
            half = "access_key_secret" if access_key_id else "access_key_id"
            raise CredentialsError(f"{half} is missing: pass both halves of the AccessKey pair")
        return Credentials(access_key_id, access_key_secret, security_token or None)
    env = os.environ
    if env.get(ENV_ACCESS_KEY_ID) or env.get(ENV_ACCESS_KEY_SECRET):
        return Credentials.from_env()  # a half-set pair is an error, named
    if official_chain_available():
        return AlibabaCloudCredentials()
    return Credentials.from_env()

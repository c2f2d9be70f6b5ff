"""Access keys from arguments or the environment; the secret parts never reach a repr."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import quote_plus

import attrs

from ._exceptions import CredentialsError
from ._signing import percent_encode

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
            raise CredentialsError(
                "no credentials: pass access_key_id and access_key_secret, or set "
                + " and ".join(missing)
                + f" (and {ENV_SECURITY_TOKEN} for STS credentials)"
            )
        return cls(key_id, secret, env.get(ENV_SECURITY_TOKEN) or None)


def resolve_credentials(
    access_key_id: str | None,
    access_key_secret: str | None,
    security_token: str | None,
    credentials: Credentials | None,
) -> Credentials:
    """Explicit credentials win; a lone half of a pair is an error; otherwise the environment."""
    if credentials is not None:
        return credentials
    if access_key_id or access_key_secret:
        if not (access_key_id and access_key_secret):
            half = "access_key_secret" if access_key_id else "access_key_id"
            raise CredentialsError(f"{half} is missing: pass both halves of the AccessKey pair")
        return Credentials(access_key_id, access_key_secret, security_token or None)
    return Credentials.from_env()

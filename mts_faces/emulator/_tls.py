"""TLS for the emulator: a given certificate, or a throwaway CA and certificate from trustme."""

from __future__ import annotations

import ssl
from typing import Any

import attrs

from .._exceptions import ConfigurationError
from .._extras import install_hint
from ._config import EmulatorConfig


@attrs.frozen
class TlsMaterial:
    """The server's TLS context, and the CA (PEM) a client must trust when we made one."""

    server_context: ssl.SSLContext
    ca_pem: bytes | None = attrs.field(default=None, repr=False)


def _trustme() -> Any:
    try:
        import trustme
    except ImportError:
        raise ConfigurationError(
            "TLS with a certificate made on the spot needs the optional package 'trustme': "
            f"{install_hint('emulator-tls')}; or pass certfile and keyfile"
        ) from None
    return trustme


def server_tls(config: EmulatorConfig) -> TlsMaterial:
    """Build the server context from ``config.certfile`` or from a fresh trustme CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if config.certfile:
        try:
            context.load_cert_chain(config.certfile, config.keyfile)
        except (OSError, ssl.SSLError) as exc:
            files = config.certfile + (f" and {config.keyfile}" if config.keyfile else "")
            reason = exc.strerror or str(exc)
            raise ConfigurationError(f"cannot load the certificate {files}: {reason}") from None
        return TlsMaterial(context)
    ca = _trustme().CA(organization_name="mts-faces emulator")
    names = dict.fromkeys(("127.0.0.1", "localhost", "::1", config.host))
    ca.issue_cert(*names).configure_cert(context)
    return TlsMaterial(context, ca.cert_pem.bytes())


def client_context(ca_pem: bytes) -> ssl.SSLContext:
    """A client context that trusts ``ca_pem`` (and only it)."""
    return ssl.create_default_context(cadata=ca_pem.decode("ascii"))

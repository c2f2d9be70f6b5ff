"""Optional dependencies and the extra that brings each: one table, for every error that
names what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from ._exceptions import MissingExtraError

# Top-level module name -> the extra of mts-faces that installs it.
EXTRA_FOR_MODULE = {
    "trustme": "emulator-tls",
    "redis": "redis",
    "alibabacloud_credentials": "credentials",
    "aiohttp": "aiohttp",
    "opentelemetry": "otel",
    "matplotlib": "report",
}


def install_hint(extra: str) -> str:
    """How to install ``extra``: the package is installed from a checkout, not an index."""
    return f"install the {extra!r} extra (from a checkout: pip install '.[{extra}]')"


def missing_module_message(module: str | None, purpose: str = "this") -> str | None:
    """``"<purpose> needs <module>: install the '<extra>' extra ..."`` for a module one of our
    extras provides; None for any other module."""
    top = (module or "").split(".")[0]
    extra = EXTRA_FOR_MODULE.get(top)
    if extra is None:
        return None
    return f"{purpose} needs the optional package {top!r}: {install_hint(extra)}"


def import_extra(module: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming the extra to install.

    ``module`` must be one of :data:`EXTRA_FOR_MODULE`; ``purpose`` says what needed it (an
    option, a command), for the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRA_FOR_MODULE[module.split(".")[0]]
        message = missing_module_message(module, purpose) or f"{purpose} needs {module!r}"
        raise MissingExtraError(message, extra=extra) from exc

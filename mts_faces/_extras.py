"""Optional dependencies: import one when it is used, or say which extra installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from ._exceptions import MissingExtraError


def import_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``pip install`` of ``extra``.

    ``purpose`` says what needed it (an option, a command), for the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the {module!r} package: pip install 'mts-faces[{extra}]'",
            extra=extra,
        ) from exc

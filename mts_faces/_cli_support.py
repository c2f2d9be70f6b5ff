"""What every ``mts-faces`` command shares: option value checks, logging flags, and turning a
missing optional package into a message that names the extra to install."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ._credentials import AlibabaCloudCredentials
from ._extras import missing_module_message
from ._window import MAX_QPS, call_limit
from .imagekey import ImageKeys

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _number(text: str, convert: Callable[[str], float]) -> float:
    try:
        value = convert(text)
    except ValueError:
        kind = "a whole number" if convert is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def at_least_one(text: str) -> float:
    """An argparse type: a rate in calls per second, as the limiters take it."""
    value = _number(text, float)
    try:
        call_limit(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number from 1 to {MAX_QPS:,}, got {text}"
        ) from None
    return value


def non_negative(text: str) -> float:
    """An argparse type: a finite number >= 0 (seconds)."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def log_level(text: str) -> str:
    """An argparse type: a logging level name, any case."""
    name = text.upper()
    if name not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown level {text!r}; use one of {', '.join(LOG_LEVELS)}"
        )
    return name


def url_param(text: str) -> str:
    """An argparse type: a query parameter name (not empty, no ``=`` or ``&``)."""
    name = text.strip()
    if not name or "=" in name or "&" in name:
        raise argparse.ArgumentTypeError(f"not a query parameter name: {text!r}")
    return name


def add_image_key_option(parser: argparse.ArgumentParser) -> None:
    """``--ignore-url-param NAME`` (repeatable): more query parameters that are not part of
    an image's identity."""
    parser.add_argument(
        "--ignore-url-param",
        action="append",
        default=[],
        type=url_param,
        metavar="NAME",
        help="a query parameter that does not change the image (a token, a signature), left "
        "out of the image's identity; repeatable. The signing parameters of OSS (V1, V4) and "
        "CDN URL auth are left out already",
    )


def image_keys_from(args: argparse.Namespace) -> ImageKeys:
    """The image-key rule ``--ignore-url-param`` describes."""
    return ImageKeys().ignoring(*getattr(args, "ignore_url_param", ()))


def add_logging_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """``-v/--verbose`` and ``--log-level``: on the top-level parser and on every subcommand
    (where they are only set when given, so ``mts-faces -v register ...`` keeps its ``-v``)."""
    default_count: object = 0 if top_level else argparse.SUPPRESS
    default_level: object = None if top_level else argparse.SUPPRESS
    group = parser.add_argument_group("logging (on standard error)")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default_count,
        help="more detail: -v for INFO (each call that failed for good), -vv for DEBUG (each "
        "attempt and each retry)",
    )
    group.add_argument(
        "--log-level",
        type=log_level,
        default=default_level,
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default WARNING; wins over -v)",
    )


def level_from_args(args: argparse.Namespace) -> int:
    """The logging level ``--log-level`` or ``-v`` asks for (WARNING by default)."""
    name = getattr(args, "log_level", None)
    if name:
        return int(getattr(logging, name))
    verbose = getattr(args, "verbose", 0) or 0
    return logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING


@contextmanager
def command_logging(level: int) -> Iterator[None]:
    """Log records of ``mts_faces`` at ``level`` and above to standard error while the command
    runs; the logger is put back as it was afterwards (the command may run in-process)."""
    logger = logging.getLogger("mts_faces")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(level)
    saved = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        # Lowered only: whoever configured more detail (an embedding app, a test) keeps it;
        # the handler prints ``level`` and above either way.
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


def missing_extra(exc: ImportError, command: str) -> str | None:
    """The message for an optional package that is not installed, naming its extra."""
    return missing_module_message(exc.name, f"mts-faces {command}")


def fetch_credentials_now(credentials: object) -> None:
    """With Alibaba Cloud's credentials chain, get the first credentials before the command
    starts, so that finding none is one clear usage error rather than a failure per row.
    (Inside a running event loop, e.g. an async command, the first call does it instead.)"""
    if not isinstance(credentials, AlibabaCloudCredentials):
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(credentials.get_credentials())

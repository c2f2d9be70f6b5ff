"""The ``mts-faces`` command: each subcommand lives in the module that owns its job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mts-faces`` with every subcommand attached."""
    from .emulator._command import add_parser as add_emulate

    parser = argparse.ArgumentParser(
        prog="mts-faces",
        description="Register faces in Alibaba Cloud MTS custom figure libraries.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_emulate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mts-faces`` with ``argv`` (default: the process arguments); return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = args.run
    try:
        return int(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

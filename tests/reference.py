"""Loads the signature vectors computed by Alibaba's own signing code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The reference folder sits beside the repository (shared/reference), or is named by env.
_CANDIDATES = [
    Path(__file__).resolve().parents[2] / "shared" / "reference",
    Path(__file__).resolve().parent / "data" / "reference",
]


def reference_dir() -> Path:
    """The folder holding the reference vectors."""
    import os

    env = os.environ.get("MTS_FACES_REFERENCE_DIR")
    if env:
        return Path(env)
    for candidate in _CANDIDATES:
        if (candidate / "signature-vectors.json").exists():
            return candidate
    raise FileNotFoundError("signature vectors not found; set MTS_FACES_REFERENCE_DIR")


def load(name: str) -> list[dict[str, Any]]:
    """One vector file as a list of cases."""
    data: list[dict[str, Any]] = json.loads((reference_dir() / name).read_text("utf-8"))
    return data

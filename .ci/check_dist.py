"""Check what ``python -m build`` made: one sdist and one wheel, with the package's modules,
its type marker, the command and the metadata users and indexes read.

    python .ci/check_dist.py DIST_FOLDER
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

REQUIRED_FILES = (
    "mts_faces/__init__.py",
    "mts_faces/py.typed",
    "mts_faces/cli.py",
    "mts_faces/testing.py",
    "mts_faces/emulator/__init__.py",
)
REQUIRED_EXTRAS = ("credentials", "redis", "emulator-tls", "dev")


def main(folder: str) -> int:
    dist = Path(folder)
    wheels = sorted(dist.glob("mts_faces-*.whl"))
    sdists = sorted(dist.glob("mts_faces-*.tar.gz"))
    problems: list[str] = []
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"expected one wheel and one sdist in {dist}, got {wheels + sdists}")
        return 1
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        problems += [f"wheel lacks {name}" for name in REQUIRED_FILES if name not in names]
        problems += [f"wheel holds {name}" for name in names if name.startswith("tests/")]
        [metadata_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(wheel.read(metadata_name).decode())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        if "mts-faces = mts_faces.cli:main" not in wheel.read(entry_points).decode():
            problems.append("the mts-faces command is not declared")
    extras = set(metadata.get_all("Provides-Extra") or [])
    problems += [f"extra {e!r} missing" for e in REQUIRED_EXTRAS if e not in extras]
    if not metadata.get_all("Classifier"):
        problems.append("no classifiers")
    if metadata.get("Requires-Python") != ">=3.11":
        problems.append(f"Requires-Python is {metadata.get('Requires-Python')!r}")
    if "mts-faces" not in (metadata.get_payload() or ""):
        problems.append("the README is not the long description")
    with tarfile.open(sdists[0]) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
        problems += [f"sdist lacks {name}" for name in REQUIRED_FILES if name not in members]
    for problem in problems:
        print(f"dist: {problem}")
    if not problems:
        print(f"dist: {wheels[0].name} and {sdists[0].name} are complete")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

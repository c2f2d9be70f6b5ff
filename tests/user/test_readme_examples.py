"""The README's testing section, run as written: each Python block is a user's test file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parents[2] / "README.md"


def _testing_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Testing code that uses mts-faces")
    return text[start : text.index("\n## ", start + 1)]


def test_the_readme_testing_examples_pass_as_written(pytester: pytest.Pytester) -> None:
    section = _testing_section()
    [toml] = re.findall(r"```toml\n(.*?)```", section, re.DOTALL)
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 3
    pytester.makepyprojecttoml(toml)
    conftest = 'pytest_plugins = ["mts_faces.testing"]\n'
    pytester.makeconftest(conftest)
    pytester.makepyfile(**{f"test_readme_{i}": block for i, block in enumerate(blocks)})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=3)

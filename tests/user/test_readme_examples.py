"""The README's testing section, run as written: each Python block is a user's test file."""

from __future__ import annotations

import re
import textwrap
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


def _python_blocks() -> list[tuple[int, str]]:
    """Every fenced Python block of the README (dedented, as in a list item), with its line."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"^([ \t]*)```python\n(.*?)^\1```", text, re.DOTALL | re.MULTILINE):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((line, textwrap.dedent(match.group(2))))
    return blocks


def test_every_readme_python_block_compiles_as_a_program() -> None:
    """A sample pasted into a file must at least be valid Python: no top-level ``async
    with`` or ``await`` (a SyntaxError outside a coroutine), no stray indentation."""
    blocks = _python_blocks()
    assert len(blocks) >= 8
    for line, block in blocks:
        try:
            compile(block, f"README.md:{line}", "exec")
        except SyntaxError as exc:
            pytest.fail(f"the Python block at README.md line {line} does not compile: {exc}")


def test_every_readme_sample_imports_the_names_it_uses() -> None:
    """Each sample imports every mts_faces name it calls."""
    for line, block in _python_blocks():
        for name in ("MtsFaceClient", "Emulator", "Registrar", "RedisWindowLimiter"):
            if re.search(rf"\b{name}\(", block):
                assert re.search(rf"^from \S+ import .*\b{name}\b", block, re.MULTILINE), (
                    f"README.md line {line} uses {name} without importing it"
                )

"""``mts_faces.testing``: the pytest fixtures, used the way a project would use them."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

INNER_TESTS = """
import asyncio

import pytest

from mts_faces import MtsFaceClient, ThrottlingError
from mts_faces.emulator import EmulatorConfig

pytest_plugins = ["mts_faces.testing"]


def test_register_from_a_sync_test(mts_emulator, mts_client_kwargs):
    async def go():
        async with MtsFaceClient(**mts_client_kwargs) as client:
            face = await client.register_custom_face("lib", "p", "https://h/a.jpg")
            listing = await client.list_custom_persons("lib")
        return face, listing

    face, listing = asyncio.run(go())
    assert [f.face_id for _, _, f in listing.iter_faces()] == [face.face_id]
    assert mts_emulator.stats.accepted == 2
    assert mts_emulator.library()["Category"][0]["CategoryId"] == "lib"
    assert mts_client_kwargs["endpoint"].startswith("http://127.0.0.1:")


class TestTightQuota:
    @pytest.fixture
    def mts_emulator_config(self):
        return EmulatorConfig(qps=2)

    def test_third_call_is_throttled(self, mts_emulator, mts_client_kwargs):
        async def go():
            async with MtsFaceClient(**{**mts_client_kwargs, "qps": 1000}, max_retries=0) as client:
                return await asyncio.gather(
                    *(client.list_custom_persons() for _ in range(6)), return_exceptions=True
                )

        results = asyncio.run(go())
        assert sum(isinstance(r, ThrottlingError) for r in results) >= 4
        assert mts_emulator.stats.max_window_accepted <= 2
        mts_emulator.reset_stats()
        assert mts_emulator.stats.requests == 0
"""


def test_fixtures_serve_an_emulator_to_sync_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER_TESTS)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2)


def test_module_imports_without_pytest_asyncio() -> None:
    code = (
        "import sys; sys.modules['pytest_asyncio'] = None; "
        "import mts_faces.testing as t; print(t.mts_emulator.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "mts_emulator" in done.stdout

"""Shared fixtures: no test reads real credentials from the environment."""

from __future__ import annotations

import pytest

SECRET = "unit-test-secret/+=Zq9"
TOKEN = "CAIS+sts/token=value~9"


@pytest.fixture(autouse=True)
def _clean_credentials_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "ALIBABA_CLOUD_ACCESS_KEY_ID",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        "ALIBABA_CLOUD_SECURITY_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)

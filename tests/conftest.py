"""Shared fixtures: no test reads real credentials from the environment."""

from __future__ import annotations

import os

import pytest

# No test, nor any program a test starts, may ask a real ECS metadata server (a link-local
# address off this machine): the official credentials chain would, when it finds no keys.
# The chain's own tests set up their child processes' environment from scratch.
os.environ["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] = "true"

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


@pytest.fixture(autouse=True)
def _no_official_credentials_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process tests never ask Alibaba Cloud's credentials chain: it would read this
    machine's profile files and call the ECS metadata server. (The chain's own tests run it
    in a child process, against a fake profile and a fake metadata server on loopback.)"""
    monkeypatch.setattr("mts_faces._credentials.official_chain_available", lambda: False)


@pytest.fixture
def official_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test see the ``credentials`` extra as installed (it must fetch nothing)."""
    pytest.importorskip("alibabacloud_credentials")
    monkeypatch.setattr("mts_faces._credentials.official_chain_available", lambda: True)

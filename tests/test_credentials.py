"""The credentials providers: the official chain runs off the event loop, one fetch at a time,
refreshes in the background, and never shows a secret."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from mts_faces import (
    AlibabaCloudCredentials,
    AuthenticationError,
    Credentials,
    CredentialsError,
    CredentialsProvider,
    MtsFaceClient,
)
from mts_faces._signing import v1_string_to_sign
from mts_faces.emulator import AccessKey, Emulator, EmulatorConfig

SECRET_A, TOKEN_A = "Sec/A+=xSECAx1", "CAIS/A+=xTOKAx1"
SECRET_B, TOKEN_B = "Sec/B+=xSECBx2", "CAIS/B+=xTOKBx2"


class OfficialCredentials:
    """Shaped like ``alibabacloud_credentials``' credentials object."""

    def __init__(self, key_id: str, secret: str, token: str | None) -> None:
        self._values = (key_id, secret, token)

    def get_access_key_id(self) -> str:
        return self._values[0]

    def get_access_key_secret(self) -> str:
        return self._values[1]

    def get_security_token(self) -> str | None:
        return self._values[2]


class BlockingProvider:
    """A provider of the official library's shape whose ``get_credentials`` blocks until
    released, the way a metadata-server call or a file lock would."""

    def __init__(self) -> None:
        self.answers: list[OfficialCredentials | Exception] = []
        self.release = threading.Event()
        self.calls = 0
        self.threads: set[int] = set()

    def get_credentials(self) -> OfficialCredentials:
        self.calls += 1
        self.threads.add(threading.get_ident())
        assert self.release.wait(30), "the test never released the provider"
        answer = self.answers[min(self.calls, len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_loop_keeps_running_while_the_chain_blocks() -> None:
    provider = BlockingProvider()
    provider.answers = [OfficialCredentials("id-a", SECRET_A, TOKEN_A)]
    chain = AlibabaCloudCredentials(provider)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    tick_task = asyncio.create_task(ticker())
    waiters = [asyncio.create_task(chain.get_credentials()) for _ in range(20)]
    while provider.calls == 0:  # noqa: ASYNC110 (the provider runs in another thread)
        await asyncio.sleep(0.01)
    before = ticks
    await asyncio.sleep(0.05)
    assert ticks > before + 5  # the loop ran while the provider blocked its thread
    assert not any(w.done() for w in waiters)
    provider.release.set()
    got = await asyncio.gather(*waiters)
    tick_task.cancel()
    assert {c.access_key_id for c in got} == {"id-a"}
    assert got[0].security_token == TOKEN_A
    assert provider.calls == 1  # twenty callers, one fetch
    assert threading.get_ident() not in provider.threads


async def test_refresh_happens_in_the_background_while_the_old_keys_sign() -> None:
    clock = Clock()
    provider = BlockingProvider()
    provider.answers = [
        OfficialCredentials("id-a", SECRET_A, TOKEN_A),
        OfficialCredentials("id-b", SECRET_B, TOKEN_B),
    ]
    chain = AlibabaCloudCredentials(provider, refresh_interval=60, clock=clock)
    provider.release.set()
    assert (await chain.get_credentials()).access_key_id == "id-a"
    clock.now += 59
    assert (await chain.get_credentials()).access_key_id == "id-a"
    assert provider.calls == 1
    provider.release.clear()
    clock.now += 2  # due: the next caller starts a refresh but does not wait for it
    assert (await chain.get_credentials()).access_key_id == "id-a"
    for _ in range(50):
        if provider.calls == 2:
            break
        await asyncio.sleep(0.01)
    assert provider.calls == 2
    assert (await chain.get_credentials()).access_key_id == "id-a"  # still refreshing
    assert provider.calls == 2  # and only one refresh at a time
    provider.release.set()
    for _ in range(500):
        if chain.access_key_id == "id-b":
            break
        await asyncio.sleep(0.01)
    assert (await chain.get_credentials()).access_key_id == "id-b"
    # Both generations of secrets are redacted: an answer to a request signed before the
    # change may echo the old ones.
    text = f"{SECRET_A} {TOKEN_A} {SECRET_B} {TOKEN_B}"
    assert chain.redact(text) == "*** *** *** ***"


async def test_a_failed_refresh_keeps_the_last_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    provider = BlockingProvider()
    provider.answers = [
        OfficialCredentials("id-a", SECRET_A, TOKEN_A),
        RuntimeError("metadata server unreachable"),
        OfficialCredentials("id-b", SECRET_B, TOKEN_B),
    ]
    provider.release.set()
    chain = AlibabaCloudCredentials(provider, refresh_interval=10, clock=clock)
    caplog.set_level(logging.DEBUG)
    assert (await chain.get_credentials()).access_key_id == "id-a"
    clock.now += 11
    await chain.get_credentials()
    for _ in range(500):
        if "refresh failed" in caplog.text:
            break
        await asyncio.sleep(0.01)
    assert "metadata server unreachable" in caplog.text
    assert (await chain.get_credentials()).access_key_id == "id-a"
    assert provider.calls == 2  # the next try waits for the next interval
    clock.now += 11
    await chain.get_credentials()
    for _ in range(500):
        if chain.access_key_id == "id-b":
            break
        await asyncio.sleep(0.01)
    assert chain.access_key_id == "id-b"
    for secret in (SECRET_A, TOKEN_A, SECRET_B, TOKEN_B):
        assert secret not in caplog.text


async def test_no_credentials_at_first_is_an_error_and_the_next_call_asks_again() -> None:
    provider = BlockingProvider()
    provider.answers = [
        RuntimeError("unable to load credentials from any of the providers in the chain"),
        OfficialCredentials("id-a", SECRET_A, None),
    ]
    provider.release.set()
    clock = Clock()
    chain = AlibabaCloudCredentials(provider, refresh_interval=30, clock=clock)
    with pytest.raises(CredentialsError, match="ALIBABA_CLOUD_ACCESS_KEY_ID") as info:
        await chain.get_credentials()
    assert "unable to load credentials" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    # Until the next try, calls fail at once with the same message, without asking again.
    clock.now += 29
    with pytest.raises(CredentialsError, match="unable to load credentials"):
        await chain.get_credentials()
    assert provider.calls == 1
    clock.now += 2
    got = await chain.get_credentials()
    assert provider.calls == 2
    assert got.access_key_id == "id-a" and got.security_token is None


async def test_an_empty_key_from_the_chain_is_refused() -> None:
    provider = BlockingProvider()
    provider.answers = [OfficialCredentials("", "", None)]
    provider.release.set()
    with pytest.raises(CredentialsError, match="empty AccessKey"):
        await AlibabaCloudCredentials(provider).get_credentials()


async def test_a_cancelled_caller_does_not_cancel_the_others() -> None:
    provider = BlockingProvider()
    provider.answers = [OfficialCredentials("id-a", SECRET_A, None)]
    chain = AlibabaCloudCredentials(provider)
    first = asyncio.create_task(chain.get_credentials())
    second = asyncio.create_task(chain.get_credentials())
    while provider.calls == 0:  # noqa: ASYNC110 (the provider runs in another thread)
        await asyncio.sleep(0.01)
    first.cancel()
    provider.release.set()
    assert (await second).access_key_id == "id-a"
    assert first.cancelled()


def test_repr_never_shows_a_secret() -> None:
    chain = AlibabaCloudCredentials(BlockingProvider())
    assert repr(chain) == "AlibabaCloudCredentials(access_key_id=None)"
    with pytest.raises(CredentialsError, match="refresh_interval"):
        AlibabaCloudCredentials(BlockingProvider(), refresh_interval=0)


def test_without_the_extra_the_chain_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mts_faces._credentials.official_chain_available", lambda: False)
    with pytest.raises(CredentialsError, match=r"pip install '\.\[credentials\]'"):
        AlibabaCloudCredentials()
    # Explicit keys and the environment need no extra.
    assert MtsFaceClient(access_key_id="id", access_key_secret="s").credentials == Credentials(
        "id", "s"
    )
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "env-id")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "env-secret")
    assert isinstance(MtsFaceClient().credentials, Credentials)


def test_with_the_extra_a_bare_client_uses_the_official_chain(official_chain: None) -> None:
    client = MtsFaceClient()  # no keys, no environment: nothing is fetched yet
    assert isinstance(client.credentials, AlibabaCloudCredentials)
    assert "access_key_id=None" in repr(client)


def test_a_half_set_environment_is_still_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "env-id")
    with pytest.raises(CredentialsError, match="ALIBABA_CLOUD_ACCESS_KEY_SECRET"):
        MtsFaceClient()


class Rotating:
    """A user's own provider: any object with ``get_credentials`` and ``redact``; its keys
    change when the test says (as a rotation would, between two calls or during a wait)."""

    def __init__(self, keys: list[Credentials]) -> None:
        self.keys = keys
        self.current = 0
        self.calls = 0

    def rotate(self) -> None:
        self.current = min(self.current + 1, len(self.keys) - 1)

    async def get_credentials(self) -> Credentials:
        self.calls += 1
        return self.keys[self.current]

    def redact(self, text: str) -> str:
        for key in self.keys:
            text = key.redact(text)
        return text


@pytest.mark.parametrize("signature_version", [1, 3])
async def test_each_attempt_signs_with_the_providers_current_keys(signature_version: Any) -> None:
    a, b = AccessKey("id-a", SECRET_A), AccessKey("id-b", SECRET_B)
    provider = Rotating(
        [
            Credentials("id-a", SECRET_A, TOKEN_A),
            Credentials("id-b", SECRET_B, TOKEN_B),
            Credentials("id-unknown", SECRET_B, None),
        ]
    )
    assert isinstance(provider, CredentialsProvider)
    config = EmulatorConfig(qps=None, access_key=a, extra_keys={b.access_key_id: SECRET_B})
    async with Emulator(config) as emulator:
        async with MtsFaceClient(
            endpoint=emulator.url, credentials=provider, signature_version=signature_version
        ) as client:
            await client.list_custom_persons()
            provider.rotate()
            await client.list_custom_persons()
            provider.rotate()
            with pytest.raises(AuthenticationError):  # the third key is one it does not know
                await client.list_custom_persons()
        assert emulator.stats.accepted == 2
    assert provider.calls >= 3


class RotateWhileWaiting:
    """A limiter that, while the call waits for its slot, lets the provider rotate."""

    def __init__(self, provider: Rotating) -> None:
        self.provider = provider

    async def acquire(self) -> None:
        self.provider.rotate()

    def on_success(self) -> None:
        pass

    def on_throttled(self) -> None:
        pass


async def test_keys_rotated_during_the_wait_for_a_slot_are_the_ones_signed_with() -> None:
    provider = Rotating(
        [Credentials("id-old", SECRET_A, TOKEN_A), Credentials("id-new", SECRET_B, TOKEN_B)]
    )
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"].split("Credential=")[1].split(",")[0])
        return httpx.Response(200, json={"RequestId": "r", "Categories": {"Category": []}})

    async with MtsFaceClient(
        credentials=provider,
        limiter=RotateWhileWaiting(provider),
        transport=httpx.MockTransport(answer),
    ) as client:
        await client.list_custom_persons()
    assert seen == ["id-new"]


def echoing_transport() -> httpx.MockTransport:
    """Answers like the service does a bad signature: echoing the string it signed, where a
    version-1 SecurityToken appears percent-encoded."""

    def answer(request: httpx.Request) -> httpx.Response:
        query = dict(parse_qsl(request.url.query.decode(), keep_blank_values=True))
        echoed = v1_string_to_sign("POST", query)
        body = {"RequestId": "R1", "Code": "SignatureDoesNotMatch", "Message": echoed}
        return httpx.Response(400, json=body)

    return httpx.MockTransport(answer)


async def test_secrets_from_the_chain_are_redacted_from_the_services_echo(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import traceback

    clock = Clock()
    provider = BlockingProvider()
    provider.answers = [
        OfficialCredentials("id-a", SECRET_A, TOKEN_A),
        OfficialCredentials("id-b", SECRET_B, TOKEN_B),
    ]
    provider.release.set()
    chain = AlibabaCloudCredentials(provider, refresh_interval=10, clock=clock)
    caplog.set_level(logging.DEBUG)
    errors = []
    async with MtsFaceClient(
        credentials=chain,
        signature_version=1,
        max_retries=0,
        transport=echoing_transport(),
    ) as client:
        for _ in range(2):  # signed with A, then (after a refresh) with B
            with pytest.raises(AuthenticationError) as info:
                await client.list_custom_persons()
            errors.append(info.value)
            clock.now += 11
            await chain.get_credentials()
            for _ in range(500):
                if chain.access_key_id == "id-b":
                    break
                await asyncio.sleep(0.01)
        shown = [repr(client), repr(chain), str(client.__dict__)]
    assert chain.access_key_id == "id-b"
    for error, key_id in zip(errors, ("id-a", "id-b"), strict=True):
        assert f"AccessKeyId%3D{key_id}%26" in error.message
        assert "SecurityToken%3D***%26" in error.message  # redacted, not dropped
    text = "\n".join(
        [*shown, caplog.text, *("".join(traceback.format_exception(e)) for e in errors)]
    )
    for core in ("xSECAx1", "xTOKAx1", "xSECBx2", "xTOKBx2"):
        assert core not in text

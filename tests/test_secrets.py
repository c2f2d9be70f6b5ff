"""The AccessKey secret and the STS token never leave the signer: not in a log line (DEBUG
included, every logger), a repr, an exception's text or traceback, the ledger, the outcome
file or the command's output. Both signature versions and both HTTP backends, against the
emulator (with faults, throttling and its SignatureDoesNotMatch) and against a service that,
like the real one, echoes the string to sign with the token in it.

tests/test_client.py checks the redaction of a mocked version-1 answer; this file covers the
emulator, the registrar, the command and everything they write.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus

import httpx
import pytest

from mts_faces import AuthenticationError, Credentials, MtsFaceClient, MtsFacesError
from mts_faces._http import HttpTransport
from mts_faces._signing import v1_string_to_sign
from mts_faces.cli import main
from mts_faces.emulator import AccessKey, Emulator, EmulatorConfig, EmulatorThread
from mts_faces.manifest import FaceRow
from mts_faces.registrar import Registrar

# Each holds a core that no encoding changes (letters and digits), so a partial leak shows too.
SECRET = "Sec/ret+=xSECRETx9q~&"
TOKEN = "CAIS/sts+=xTOKENx7w~?"
WRONG_SECRET = "Wr/ong+=xWRONGx5z"
CORES = ("xSECRETx9q", "xTOKENx7w", "xWRONGx5z")


def forms(value: str) -> list[str]:
    once = quote(value, safe="")
    twice = quote(once, safe="")
    return [value, once, twice, quote_plus(value), once.lower(), twice.lower()]


def assert_no_secret(*texts: str) -> None:
    needles = [*CORES] + [f for s in (SECRET, TOKEN, WRONG_SECRET) for f in forms(s)]
    for text in texts:
        for needle in needles:
            assert needle not in text, f"{needle!r} leaked in: {text[:300]!r}"


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record: formatted text, raw message and arguments, and any traceback."""
    parts = [caplog.text]
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            parts.append("".join(traceback.format_exception(record.exc_info[1])))
    return "\n".join(parts)


def chain_text(error: BaseException) -> str:
    """The error as a user would see it printed: str, repr and the whole traceback chain."""
    return "\n".join([str(error), repr(error), "".join(traceback.format_exception(error))])


@pytest.fixture(params=["aiohttp", "httpx"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name: str = request.param
    monkeypatch.setattr(HttpTransport, "default_backend", name)
    monkeypatch.setattr("mts_faces.cli.fast_backend", lambda: name)  # the CLI's own pick
    return name


@pytest.fixture
def faulty_emulator() -> Iterator[EmulatorThread]:
    config = EmulatorConfig(
        access_key=AccessKey("LTAIsecretstestkey0001", SECRET),
        qps=None,
        internal_error_rate=0.1,
        unavailable_rate=0.1,
        drop_rate=0.05,
        commit_timeout_rate=0.05,
        hang=0.05,
        seed=3,
    )
    with Emulator.in_thread(config) as emu:
        yield emu


def run_cli(
    emu: EmulatorThread, tmp_path: Path, secret: str, version: int, monkeypatch: Any
) -> tuple[int, Path, Path]:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emu.key.access_key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", secret)
    monkeypatch.setenv("ALIBABA_CLOUD_SECURITY_TOKEN", TOKEN)
    manifest = tmp_path / "faces.csv"
    manifest.write_text(
        "category_id,person_id,image_url\n"
        + "".join(f"lib,p{i},https://img.example.com/{i}.jpg\n" for i in range(30))
    )
    journal, out = tmp_path / "run.ledger", tmp_path / "out.jsonl"
    argv = ["register", str(manifest), "--endpoint", emu.url, "--ledger", str(journal)]
    argv += ["--output", str(out), "--signature-version", str(version), "--qps", "400"]
    argv += ["--settle", "0.2"]
    return main(argv), journal, out


@pytest.mark.parametrize("version", [1, 3])
def test_cli_run_with_faults_leaks_nothing(
    version: int,
    backend: str,
    faulty_emulator: EmulatorThread,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    status, journal, out = run_cli(faulty_emulator, tmp_path, SECRET, version, monkeypatch)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    stats = faulty_emulator.stats
    # The run went through the paths that log: faults, retries, lost answers.
    assert sum(stats.faulted.values()) > 0, stats.faulted
    messages = [r.getMessage() for r in caplog.records]
    assert any(" retry " in m for m in messages) and any("no answer" in m for m in messages)
    assert any(r.name.startswith("mts_faces") for r in caplog.records)
    if backend == "httpx":
        assert any(r.name == "httpx" for r in caplog.records)  # it logs every request URL
    assert_no_secret(
        log_text(caplog),
        captured.out,
        captured.err,
        ledger_text(journal),
        out.read_text(),
        repr(faulty_emulator.emulator),
    )


@pytest.mark.parametrize("version", [1, 3])
def test_wrong_secret_answer_leaks_nothing(
    version: int,
    backend: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    with Emulator.in_thread(EmulatorConfig(qps=None)) as emu:
        status, journal, out = run_cli(emu, tmp_path, WRONG_SECRET, version, monkeypatch)
        assert emu.stats.errors_by_code.get("SignatureDoesNotMatch", 0) >= 1
    captured = capsys.readouterr()
    assert status == 1 and "SignatureDoesNotMatch" in captured.err
    assert "Traceback" not in captured.err
    journal_text = ledger_text(journal)
    assert_no_secret(log_text(caplog), captured.out, captured.err, journal_text, out.read_text())


# --- a service that echoes the string to sign, token and all ------------------------------------


class EchoingService(httpx.AsyncBaseTransport):
    """Answers every call as the real service answers a bad signature: with the string it
    signed, in which a version-1 SecurityToken appears percent-encoded twice."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        query = dict(parse_qsl(request.url.query.decode(), keep_blank_values=True))
        token = request.headers.get("x-acs-security-token")
        if token is not None:  # version 3: the token travels as a header
            query["SecurityToken"] = token
        echoed = v1_string_to_sign("POST", query)
        body = {
            "RequestId": "R1",
            "HostId": "mts.cn-shanghai.aliyuncs.com",
            "Code": "SignatureDoesNotMatch",
            "Message": "Specified signature is not matched with our calculation. "
            f"server string to sign is:{echoed}",
            "Recommend": "https://api.aliyun.com/troubleshoot?q=SignatureDoesNotMatch",
        }
        assert "xTOKENx7w" in body["Message"]  # the echo really carries the token
        return httpx.Response(400, json=body)


@pytest.mark.parametrize("version", [1, 3])
async def test_echoed_string_to_sign_leaks_nothing(
    version: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service = EchoingService()
    credentials = Credentials("LTAIecho", WRONG_SECRET, TOKEN)
    async with MtsFaceClient(
        credentials=credentials,
        signature_version=version,  # type: ignore[arg-type]
        transport=service,
    ) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.list_custom_persons()
        assert "***" in info.value.message  # redacted, not dropped
        registrar = Registrar(client, ledger=tmp_path / "j.ledger", check_existing=False)
        with pytest.raises(AuthenticationError) as fatal:
            outcomes = []
            async for outcome in registrar.run([FaceRow("lib", "p", "https://x.example/a.jpg")]):
                outcomes.append(outcome)
        texts = [chain_text(info.value), chain_text(fatal.value), repr(client), repr(credentials)]
        texts += [repr(vars(client)), repr(registrar.report)]
        texts += [repr(o) + str(o.to_dict()) + str(o.reason) for o in outcomes]
    assert service.calls >= 2
    assert_no_secret(*texts, log_text(caplog), ledger_text(tmp_path / "j.ledger"))


def ledger_text(path: Path) -> str:
    """The ledger's bytes (and its WAL's, if any) as text, for a search."""
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    data = b"".join(f.read_bytes() for f in files if f.exists())
    assert path.exists() and data
    return data.decode("latin-1")


async def test_transport_failures_in_the_chain_leak_nothing(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A dropped connection and a refused one: the exception chain (with the library's own
    exceptions inside) carries no part of the version-1 URL, where the token travels."""
    caplog.set_level(logging.DEBUG)
    config = EmulatorConfig(qps=None, drop_rate=1.0, access_key=AccessKey("LTAIdrop", SECRET))
    async with Emulator(config) as emu:
        async with MtsFaceClient(
            endpoint=emu.url,
            credentials=Credentials("LTAIdrop", SECRET, TOKEN),
            signature_version=1,
            max_retries=0,
        ) as client:
            with pytest.raises(MtsFacesError) as dropped:
                await client.register_custom_face("lib", "p", "https://x.example/a.jpg")
        port = emu.port
    async with MtsFaceClient(  # the emulator is gone: nothing listens there now
        endpoint=f"http://127.0.0.1:{port}",
        credentials=Credentials("LTAIdrop", SECRET, TOKEN),
        signature_version=1,
        max_retries=0,
    ) as client:
        with pytest.raises(MtsFacesError) as refused:
            await client.list_custom_persons()
    await asyncio.sleep(0)
    assert_no_secret(chain_text(dropped.value), chain_text(refused.value), log_text(caplog))

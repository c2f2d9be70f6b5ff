"""The credentials chain as a user meets it: no keys in the code, only what the machine holds.

Each case runs a small program in a fresh interpreter, as a user's service would start:
Alibaba Cloud's credentials library reads its settings (``HOME``, ``ALIBABA_CLOUD_*``, the
proxy variables) once, when it is imported. The program registers a face with a plain
``MtsFaceClient()`` against the local emulator, which accepts only the key the chain should
have found. The ECS instance metadata server is faked on loopback; the library reaches it
through the standard ``HTTP_PROXY`` setting, the way it reaches any server through a proxy.
Written only against the public API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest.importorskip("alibabacloud_credentials")

PROFILE_ID, PROFILE_SECRET = "LTAIprofilekey0001", "Prof/ile+=xPROFILEx3k"
ENV_ID, ENV_SECRET = "LTAIenvkey00000001", "Env/sec+=xENVSECx8m"
ROLE = "mts-faces-role"
ECS_IDS = ("STS.ecsfirst000001", "STS.ecssecond00002")
ECS_SECRETS = ("Ecs/one+=xECSONEx4p", "Ecs/two+=xECSTWOx6r")
ECS_TOKENS = ("CAIS/ecs+=xTOKENONEx1a", "CAIS/ecs+=xTOKENTWOx2b")
SECRET_CORES = (
    "xPROFILEx3k",
    "xENVSECx8m",
    "xECSONEx4p",
    "xECSTWOx6r",
    "xTOKENONEx1a",
    "xTOKENTWOx2b",
)

# The user's program: a client with no credentials in the code, against the emulator, which
# knows the keys given on the command line. It prints what it saw, as JSON.
PROGRAM = r"""
import asyncio, json, sys
from mts_faces import AlibabaCloudCredentials, MtsFaceClient, MtsFacesError
from mts_faces.emulator import AccessKey, Emulator, EmulatorConfig

keys = json.loads(sys.argv[1])
calls = int(sys.argv[2])
interval = float(sys.argv[3])
refresh = float(sys.argv[4])  # 0: the plain default client
until = sys.argv[5]  # stop early once this AccessKey ID signs ("" : never)

async def main():
    first, *others = [AccessKey(k, s) for k, s in keys]
    extra = {k.access_key_id: k.access_key_secret for k in others}
    config = EmulatorConfig(qps=None, access_key=first, extra_keys=extra)
    seen, errors = [], []
    async with Emulator(config) as emulator:
        options = {}
        if refresh:
            options["credentials"] = AlibabaCloudCredentials(refresh_interval=refresh)
        async with MtsFaceClient(endpoint=emulator.url, **options) as client:
            for i in range(calls):
                try:
                    await client.register_custom_face("chain", f"p{i}", f"https://img.example.com/{i}.jpg")
                except MtsFacesError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                seen.append(client.credentials.access_key_id)
                if seen[-1] == until:
                    break
                if interval:
                    await asyncio.sleep(interval)
            shown = repr(client)
        accepted = emulator.stats.accepted
    print(json.dumps({"seen": seen, "errors": errors, "accepted": accepted, "repr": shown}))

asyncio.run(main())
"""


class MetadataServer:
    """A fake ECS instance metadata server (IMDSv2 token, role name, STS credentials),
    reached as a forward proxy: requests arrive in absolute form for 100.100.100.200."""

    def __init__(self, expires_in: float = 6 * 3600) -> None:
        self.expires_in = expires_in
        self.requests: list[tuple[str, str, str]] = []
        self.issued = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                outer.requests.append(("PUT", self.headers.get("host", ""), self.path))
                if urlsplit(self.path).path == "/latest/api/token":
                    self._answer(200, "imds-session-token")
                else:
                    self._answer(404, "")

            def do_GET(self) -> None:
                outer.requests.append(("GET", self.headers.get("host", ""), self.path))
                path = urlsplit(self.path).path
                if self.headers.get("X-aliyun-ecs-metadata-token") != "imds-session-token":
                    self._answer(401, "")
                elif path == "/latest/meta-data/ram/security-credentials/":
                    self._answer(200, ROLE)
                elif path == f"/latest/meta-data/ram/security-credentials/{ROLE}":
                    n = min(outer.issued, len(ECS_IDS) - 1)
                    outer.issued += 1
                    expiry = time.gmtime(time.time() + outer.expires_in)
                    self._answer(
                        200,
                        json.dumps(
                            {
                                "Code": "Success",
                                "AccessKeyId": ECS_IDS[n],
                                "AccessKeySecret": ECS_SECRETS[n],
                                "SecurityToken": ECS_TOKENS[n],
                                "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", expiry),
                                "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            }
                        ),
                    )
                else:
                    self._answer(404, "")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> MetadataServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


def write_profile(home: Path, key_id: str, secret: str) -> None:
    (home / ".aliyun").mkdir()
    (home / ".aliyun" / "config.json").write_text(
        json.dumps(
            {
                "current": "work",
                "profiles": [
                    {
                        "name": "other",
                        "mode": "AK",
                        "access_key_id": "LTAIwrong",
                        "access_key_secret": "no",
                    },
                    {
                        "name": "work",
                        "mode": "AK",
                        "access_key_id": key_id,
                        "access_key_secret": secret,
                    },
                ],
            }
        )
    )


def run_program(
    home: Path,
    keys: list[tuple[str, str]],
    *,
    env: dict[str, str] | None = None,
    calls: int = 2,
    interval: float = 0.0,
    refresh: float = 0.0,
    until: str = "",
) -> tuple[dict[str, Any], str]:
    """Run the user's program with a clean environment: only HOME, PATH and ``env``."""
    base = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", ""),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
    }
    base.update(env or {})
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            PROGRAM,
            json.dumps(keys),
            str(calls),
            str(interval),
            str(refresh),
            until,
        ],
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), done.stdout + done.stderr


def assert_no_secret(text: str) -> None:
    for core in SECRET_CORES:
        assert core not in text, f"{core} leaked: {text[:500]}"


def test_profile_file_of_the_aliyun_cli(home: Path) -> None:
    write_profile(home, PROFILE_ID, PROFILE_SECRET)
    result, output = run_program(home, [(PROFILE_ID, PROFILE_SECRET)])
    assert result["errors"] == []
    assert result["accepted"] == 2
    assert result["seen"] == [PROFILE_ID, PROFILE_ID]
    assert PROFILE_ID in result["repr"]
    assert_no_secret(output)


def test_environment_comes_before_the_profile_file(home: Path) -> None:
    write_profile(home, PROFILE_ID, PROFILE_SECRET)
    env = {"ALIBABA_CLOUD_ACCESS_KEY_ID": ENV_ID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ENV_SECRET}
    # The emulator knows only the environment's key: a profile-signed call would be refused.
    result, output = run_program(home, [(ENV_ID, ENV_SECRET)], env=env)
    assert result["errors"] == []
    assert result["accepted"] == 2
    assert_no_secret(output)


def test_ecs_ram_role_from_the_metadata_server(home: Path) -> None:
    with MetadataServer() as metadata:
        env = {"ALIBABA_CLOUD_ECS_METADATA_DISABLED": "false", "HTTP_PROXY": metadata.url}
        result, output = run_program(home, [(ECS_IDS[0], ECS_SECRETS[0])], env=env)
    assert result["errors"] == []
    assert result["accepted"] == 2
    assert result["seen"] == [ECS_IDS[0], ECS_IDS[0]]
    hosts = {host for _, host, _ in metadata.requests}
    assert hosts == {"100.100.100.200"}  # the real metadata address, answered on loopback
    paths = [urlsplit(path).path for _, _, path in metadata.requests]
    assert "/latest/api/token" in paths  # IMDSv2 session token first
    assert f"/latest/meta-data/ram/security-credentials/{ROLE}" in paths
    assert_no_secret(output)


def test_profile_file_comes_before_the_ecs_role(home: Path) -> None:
    write_profile(home, PROFILE_ID, PROFILE_SECRET)
    with MetadataServer() as metadata:
        env = {"ALIBABA_CLOUD_ECS_METADATA_DISABLED": "false", "HTTP_PROXY": metadata.url}
        result, _ = run_program(home, [(PROFILE_ID, PROFILE_SECRET)], env=env)
    assert result["accepted"] == 2
    assert metadata.issued == 0


def test_sts_credentials_are_refreshed_before_they_expire(home: Path) -> None:
    # Credentials that expire in 10 minutes are already inside the library's 15-minute
    # margin: it fetches new ones each time it is asked. The client asks every 0.2 s, in the
    # background, while the first ones keep signing; the program stops once the second key
    # signs (or after 150 calls).
    with MetadataServer(expires_in=600) as metadata:
        env = {
            "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "false",
            "ALIBABA_CLOUD_ECS_METADATA": ROLE,
            "HTTP_PROXY": metadata.url,
        }
        keys = [(ECS_IDS[0], ECS_SECRETS[0]), (ECS_IDS[1], ECS_SECRETS[1])]
        result, output = run_program(
            home, keys, env=env, calls=150, interval=0.1, refresh=0.2, until=ECS_IDS[1]
        )
    assert result["errors"] == []
    assert result["accepted"] == len(result["seen"]) >= 2
    assert result["seen"][0] == ECS_IDS[0]
    assert result["seen"][-1] == ECS_IDS[1]  # rotated without a failed call
    assert metadata.issued >= 2
    assert_no_secret(output)


def test_nothing_found_is_a_clear_error_at_the_first_call(home: Path) -> None:
    result, _ = run_program(home, [("LTAIunused", "unused")], calls=1)
    assert result["accepted"] == 0
    [error] = result["errors"]
    assert error.startswith("CredentialsError: no credentials from the Alibaba Cloud")
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in error

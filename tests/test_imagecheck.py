"""Image checks against a loopback image server: each failure kind (unreachable, 4xx, 5xx, not
an image, too large, too many redirects, a private address not allowed), HEAD refused then a
ranged GET, and ``register --check-images`` skipping the failing rows before any quota is
spent."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from mts_faces.cli import main
from mts_faces.emulator import Emulator, EmulatorConfig, EmulatorThread
from mts_faces.imagecheck import ImageCheckOptions, check_images

from .soak_harness import stored_faces


class Images(BaseHTTPRequestHandler):
    """/ok.jpg, /missing, /broken, /page, /big.jpg, /nohead.png, /hop/N."""

    methods: ClassVar[list[tuple[str, str, str | None]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, head: bool) -> None:
        self.methods.append((self.command, self.path, self.headers.get("Range")))
        path = self.path
        if path == "/ok.jpg":
            self._send(200, {"Content-Type": "image/jpeg", "Content-Length": "100"}, head)
        elif path == "/missing":
            self._send(404, {"Content-Length": "0"}, head)
        elif path == "/broken":
            self._send(503, {"Content-Length": "0"}, head)
        elif path == "/page":
            self._send(
                200, {"Content-Type": "text/html; charset=utf-8", "Content-Length": "5"}, head
            )
        elif path == "/big.jpg":
            self._send(200, {"Content-Type": "image/jpeg", "Content-Length": "50000000"}, head)
        elif path == "/nohead.png":
            if head:
                self._send(405, {"Content-Length": "0"}, head)
            elif self.headers.get("Range") == "bytes=0-0":
                headers = {"Content-Type": "image/png", "Content-Range": "bytes 0-0/20000000"}
                self._send(206, {**headers, "Content-Length": "1"}, head, b"x")
            else:
                self._send(400, {"Content-Length": "0"}, head)
        elif path.startswith("/hop/"):
            left = int(path.rsplit("/", 1)[1])
            target = "/ok.jpg" if left == 0 else f"/hop/{left - 1}"
            self._send(302, {"Location": target, "Content-Length": "0"}, head)
        else:
            self._send(404, {"Content-Length": "0"}, head)

    def _send(self, status: int, headers: dict[str, str], head: bool, body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)
        elif not head and status == 200:
            self.wfile.write(b"x" * min(int(headers.get("Content-Length", "0")), 100))

    def do_HEAD(self) -> None:
        self._answer(True)

    def do_GET(self) -> None:
        self._answer(False)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Images)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Images.methods = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ALLOW = ImageCheckOptions(allow_private=True, max_bytes=1_000_000, timeout=5, max_redirects=3)


def test_each_failure_kind_has_its_reason(server: str) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/x.jpg"
    urls = {
        "ok": f"{server}/ok.jpg",
        "redirected": f"{server}/hop/2",
        "missing": f"{server}/missing",
        "broken": f"{server}/broken",
        "page": f"{server}/page",
        "big": f"{server}/big.jpg",
        "nohead_big": f"{server}/nohead.png",
        "loop": f"{server}/hop/9",
        "dead": dead,
    }
    problems = asyncio.run(check_images(urls.values(), ALLOW))
    reasons = {name: problems.get(url) for name, url in urls.items()}
    assert reasons["ok"] is None and reasons["redirected"] is None
    assert reasons["missing"] == "image check: HTTP 404 Not Found"
    assert reasons["broken"] == "image check: HTTP 503 Service Unavailable"
    assert reasons["page"] == "image check: not an image: content type 'text/html'"
    assert reasons["big"] == "image check: too large: 50,000,000 bytes (limit 1,000,000)"
    assert reasons["nohead_big"] == "image check: too large: 20,000,000 bytes (limit 1,000,000)"
    assert reasons["loop"] == "image check: more than 3 redirects"
    assert str(reasons["dead"]).startswith("image check: unreachable: ConnectError")
    # HEAD first; the host that refused HEAD got one ranged GET; no body was fetched whole.
    assert ("GET", "/nohead.png", "bytes=0-0") in Images.methods
    assert not [m for m in Images.methods if m[0] == "GET" and m[1] != "/nohead.png"]


def test_private_and_loopback_addresses_refused_unless_allowed(server: str) -> None:
    urls = [f"{server}/ok.jpg", "http://10.1.2.3/a.jpg", "http://[::1]/b.jpg"]
    problems = asyncio.run(check_images(urls, ImageCheckOptions(timeout=2)))
    assert set(problems) == set(urls)
    assert all("non-public address" in reason for reason in problems.values())
    assert Images.methods == []  # nothing was requested from them


def test_a_redirect_to_a_private_address_is_refused() -> None:
    # A public address (numeric: no DNS) answers with a redirect to loopback; the transport
    # is mocked, so nothing leaves this machine. Every hop is checked, not only the first.
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://127.0.0.1/secret.jpg"})

    start = "http://93.184.216.34/a.jpg"
    problems = asyncio.run(
        check_images([start], ImageCheckOptions(timeout=2), transport=httpx.MockTransport(answer))
    )
    assert "non-public address 127.0.0.1" in problems[start]
    assert seen == [start]  # the loopback hop was never requested


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        ImageCheckOptions(concurrency=0)


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorThread]:
    with Emulator.in_thread(EmulatorConfig(qps=500, latency=0.001, seed=3)) as emu:
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emu.key.access_key_id)
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", emu.key.access_key_secret)
        yield emu


def test_register_check_images_skips_failing_rows_before_any_call(
    server: str, emulator: EmulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.csv"
    rows = ["ok.jpg", "missing", "page", "big.jpg", "hop/1"]
    manifest.write_text(
        "category_id,person_id,image_url\n"
        + "".join(f"cat,p{i},{server}/{path}\n" for i, path in enumerate(rows))
    )
    out = tmp_path / "out.jsonl"
    argv = ["register", str(manifest), "--endpoint", emulator.url, "--output", str(out)]
    argv += ["--no-progress", "--no-ledger", "--check-images", "--allow-private-images"]
    assert main([*argv, "--max-image-bytes", "1000"]) == 0
    outcomes = {int(o["row"]): o for o in map(json.loads, out.read_text().splitlines())}
    assert [outcomes[i]["status"] for i in range(1, 6)] == [
        "registered", "skipped", "skipped", "skipped", "registered",
    ]  # fmt: skip
    assert outcomes[2]["reason"] == "image check: HTTP 404 Not Found"

    # plan --check-images says the same, row by row (the good rows are now stored).
    decisions = tmp_path / "plan.jsonl"
    planned = ["plan", str(manifest), "--endpoint", emulator.url, "--output", str(decisions)]
    planned += ["--check-images", "--allow-private-images", "--max-image-bytes", "1000"]
    assert main(planned) == 0
    kinds = [json.loads(line)["decision"] for line in decisions.read_text().splitlines()]
    assert kinds == ["in_library", "image_check", "image_check", "image_check", "in_library"]
    assert emulator.stats.requests_by_action["RegisterCustomFace"] == 2
    assert len(list(stored_faces(emulator.library(), "cat"))) == 2

    # check-images alone: one JSON line per failing row, exit 1, no MTS call.
    emulator.reset_stats()
    capsys.readouterr()
    code = main(["check-images", str(manifest), "--allow-private-images"])
    assert code == 1
    failing = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [f["row"] for f in failing] == [2, 3, 4]  # 50 MB is over the default 10 MiB too
    assert emulator.stats.requests == 0


def test_sync_check_images_skips_failing_rows(
    server: str, emulator: EmulatorThread, tmp_path: Path
) -> None:
    manifest = tmp_path / "want.csv"
    manifest.write_text(
        f"category_id,person_id,image_url\ncat,a,{server}/ok.jpg\ncat,b,{server}/page\n"
    )
    out = tmp_path / "out.jsonl"
    argv = ["sync", str(manifest), "--category", "cat", "--yes", "--check-images"]
    argv += ["--allow-private-images", "--endpoint", emulator.url, "--output", str(out)]
    assert main([*argv, "--no-progress", "--no-ledger"]) == 0
    lines = out.read_text().splitlines()
    outcomes = sorted((json.loads(line) for line in lines), key=lambda o: int(o["row"]))
    assert [o["status"] for o in outcomes] == ["registered", "skipped"]
    assert outcomes[1]["reason"] == "image check: not an image: content type 'text/html'"
    assert emulator.stats.requests_by_action["RegisterCustomFace"] == 1
    # Again: the stored row is not checked again, only the one still to register.
    Images.methods = []
    assert main([*argv, "--no-progress", "--no-ledger"]) == 0
    assert {path for _, path, _ in Images.methods} == {"/page"}

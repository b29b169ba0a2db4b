"""examples/http_*.py run as written: each is started as its own process in front of real
demo origins (on a thread of the test process) and driven with real HTTP requests."""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import ferryman
from ferryman.demo.origin import DemoOrigin
from ferryman.net.addr import parse_address
from ferryman.net.listener import bind_socket

LOCAL = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SRC = Path(ferryman.__file__).resolve().parents[1]  # the ferryman this test imports, for the children too
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


# a demo origin on its own thread -------------------------------------------------------------
class ThreadOrigin:
    """The demo origin (``/echo`` sends the request head back; responses carry
    ``Server: ferryman-demo`` and ``X-Origin: NAME``) on an event loop of its own thread."""

    def __init__(self, name: str) -> None:
        self.sock = bind_socket(parse_address(f"{LOCAL}:0"))
        host, port = self.sock.getsockname()[:2]
        self.address = f"{host}:{port}"
        self.origin = DemoOrigin(self.sock, name, grace_period=2.0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name=f"origin-{name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError(f"origin {name} did not start")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.origin.start()
        self._ready.set()
        await self._stop.wait()
        await self.origin.stop()

    def close(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STOP_TIMEOUT)
        assert not self._thread.is_alive(), "the origin thread did not stop"


@pytest.fixture
def origin() -> Iterator[ThreadOrigin]:
    server = ThreadOrigin("stable")
    yield server
    server.close()


@pytest.fixture
def canary_origin() -> Iterator[ThreadOrigin]:
    server = ThreadOrigin("canary")
    yield server
    server.close()


# the example as a child process --------------------------------------------------------------
@dataclass
class Example:
    proc: subprocess.Popen[str]
    port: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def log(self) -> str:
        return "".join(self.lines)


@contextmanager
def run_example(script: str, *args: str) -> Iterator[Example]:
    """Start ``examples/<script> --listen 127.0.0.1:0 ARGS``, yield it once it logs its
    address; on exit stop it with SIGTERM (it must exit 0), killing it if it hangs."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(EXAMPLES / script), "--listen", f"{LOCAL}:0", "--grace", "2", *args]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    example = Example(proc)
    listening = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            example.lines.append(line)
            if "listening on" in line:
                listening.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert listening.wait(START_TIMEOUT), f"{script} did not report its listening address:\n{example.log}"
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", example.log)
        assert match, example.log
        example.port = int(match.group(1))
        yield example
        proc.terminate()
        assert proc.wait(timeout=STOP_TIMEOUT) == 0, example.log
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        reader.join(timeout=STOP_TIMEOUT)
        assert proc.stderr is not None
        proc.stderr.close()
    assert "Traceback" not in example.log, example.log


# HTTP client ---------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def echoed(self) -> tuple[str, list[tuple[str, str]]]:
        """The request line and headers the demo origin's ``/echo`` saw."""
        head, _, _ = self.body.decode("latin-1").partition("\n\n")
        first, *rest = head.split("\n")
        return first, [tuple(part.strip() for part in line.split(":", 1)) for line in rest]  # type: ignore[misc]


def request(
    conn: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> Reply:
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    return Reply(resp.status, resp.headers, resp.read())


@contextmanager
def client(port: int, source: str = LOCAL) -> Iterator[http.client.HTTPConnection]:
    conn = http.client.HTTPConnection(LOCAL, port, timeout=10, source_address=(source, 0))
    try:
        yield conn
    finally:
        conn.close()


# header rewrite ------------------------------------------------------------------------------
def test_header_rewrite_edits_the_request_and_the_response(origin: ThreadOrigin) -> None:
    with run_example(
        "http_header_rewrite.py", "--origin", origin.address, "--rewrite", "/api=/echo", "--rewrite", "/static=/echo",
        "--no-cookie", "/static", "--served-by", "edge-1",
    ) as example, client(example.port) as conn:
        reply = request(conn, "/api?id=7", {"Cookie": "session=abc", "X-Proxy": "spoofed"})
        assert reply.status == 200
        line, headers = reply.echoed()
        assert line == "GET /echo?id=7 HTTP/1.1"  # the prefix was rewritten, the query kept
        assert ("x-proxy", "ferryman") in headers and ("x-proxy", "spoofed") not in headers
        assert ("cookie", "session=abc") in headers
        assert reply.headers["x-served-by"] == "edge-1"
        assert reply.headers["server"] is None  # the origin's Server header is gone
        assert reply.headers["x-origin"] == "stable"

        reply = request(conn, "/static?file=app.css", {"Cookie": "session=abc"})  # same connection
        line, headers = reply.echoed()
        assert line == "GET /echo?file=app.css HTTP/1.1"  # the second rule
        assert not any(name == "cookie" for name, _ in headers)

        reply = request(conn, "/apix")  # not under the prefix: passed through as is
        assert reply.status == 404 and reply.headers["x-served-by"] == "edge-1"

        reply = request(conn, "/echo", {"Cookie": "session=abc"})
        line, headers = reply.echoed()
        assert line == "GET /echo HTTP/1.1" and ("cookie", "session=abc") in headers


def test_header_rewrite_refuses_a_malformed_rewrite_option() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "http_header_rewrite.py"), "--origin", "127.0.0.1:1", "--rewrite", "api"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert "expected /OLD=/NEW" in result.stderr and "Traceback" not in result.stderr


# canary --------------------------------------------------------------------------------------
CLIENT_IPS = [f"127.0.0.{n}" for n in range(1, 21)]


def served_by(port: int, source: str, headers: dict[str, str] | None = None) -> str:
    """Which origin answered ``/`` for a client at ``source`` (a new connection each time)."""
    with client(port, source) as conn:
        reply = request(conn, "/", headers)
        assert reply.status == 200
        return reply.headers["x-origin"]


def test_canary_is_sticky_per_client_ip_and_logs_each_choice(origin: ThreadOrigin, canary_origin: ThreadOrigin) -> None:
    with run_example(
        "http_canary.py", "--origin", origin.address, "--canary", canary_origin.address, "--canary-percent", "50",
    ) as example:
        first = {ip: served_by(example.port, ip) for ip in CLIENT_IPS}
        again = {ip: served_by(example.port, ip) for ip in CLIENT_IPS}
        assert first == again  # every client keeps its origin
        assert set(first.values()) == {"stable", "canary"}, first  # both get a share of 20 clients
        expected = {ip: "canary" if zlib.crc32(ip.encode()) % 100 < 50 else "stable" for ip in CLIENT_IPS}
        assert first == expected  # the documented split: crc32(ip) % 100 < percent

        stable_ip = next(ip for ip, name in first.items() if name == "stable")
        canary_ip = next(ip for ip, name in first.items() if name == "canary")
        assert served_by(example.port, stable_ip, {"X-Canary": "1"}) == "canary"
        assert served_by(example.port, canary_ip, {"X-Canary": "0"}) == "stable"
        assert served_by(example.port, stable_ip, {"Cookie": "theme=dark; canary=1"}) == "canary"
        assert served_by(example.port, canary_ip, {"Cookie": "canary=0"}) == "stable"
        assert served_by(example.port, stable_ip, {"Cookie": "notcanary=1"}) == "stable"
    log = example.log
    for ip, name in first.items():
        lines = re.findall(rf"canary: {re.escape(ip)} GET / -> {name} \(client-hash\) 200\n", log)
        assert len(lines) == (3 if ip == stable_ip else 2)  # the "notcanary" cookie request too
    assert f"canary: {stable_ip} GET / -> canary (header) 200" in log
    assert f"canary: {canary_ip} GET / -> stable (header) 200" in log
    assert f"canary: {stable_ip} GET / -> canary (cookie) 200" in log
    assert f"canary: {canary_ip} GET / -> stable (cookie) 200" in log


@pytest.mark.parametrize("percent, expected", [("0", "stable"), ("100", "canary")])
def test_canary_percent_bounds_send_everyone_one_way(
    origin: ThreadOrigin, canary_origin: ThreadOrigin, percent: str, expected: str
) -> None:
    with run_example(
        "http_canary.py", "--origin", origin.address, "--canary", canary_origin.address, "--canary-percent", percent,
    ) as example:
        assert {served_by(example.port, ip) for ip in CLIENT_IPS} == {expected}


def test_canary_logs_a_failed_choice(origin: ThreadOrigin) -> None:
    dead = socket.socket()  # bound, never listening: connecting is refused
    dead.bind((LOCAL, 0))
    try:
        dead_address = f"{LOCAL}:{dead.getsockname()[1]}"
        with (
            run_example("http_canary.py", "--origin", origin.address, "--canary", dead_address) as example,
            client(example.port) as conn,
        ):
            assert request(conn, "/", {"X-Canary": "1"}).status == 502
    finally:
        dead.close()
    assert re.search(rf"WARNING canary: 127\.0\.0\.1 GET / -> canary \(header\) failed: .*{re.escape(dead_address)}", example.log)


# auth gate -----------------------------------------------------------------------------------
def test_auth_gate_answers_401_without_a_valid_token(origin: ThreadOrigin) -> None:
    with run_example(
        "http_auth_gate.py", "--origin", origin.address, "--token", "alice:s3cret", "--realm", "demo",
    ) as example, client(example.port) as conn:
        for headers, challenge in [
            ({}, 'Bearer realm="demo"'),
            ({"Authorization": "Basic YWxpY2U6czNjcmV0"}, 'Bearer realm="demo"'),
            ({"Authorization": "Bearer wrong"}, 'Bearer realm="demo", error="invalid_token"'),
            ({"Authorization": "Bearer s3cret2"}, 'Bearer realm="demo", error="invalid_token"'),
        ]:
            reply = request(conn, "/echo", headers)  # one keep-alive connection for all of them
            assert reply.status == 401, headers
            assert reply.headers["www-authenticate"] == challenge
            assert reply.body == b"401 Unauthorized\n"  # the gate's page, not the origin's echo
            assert reply.headers["x-origin"] is None


def test_auth_gate_proxies_valid_tokens_as_the_user_without_the_token(origin: ThreadOrigin) -> None:
    with run_example(
        "http_auth_gate.py", "--origin", origin.address, "--token", "alice:s3cret", "--token", "bob:hunter2",
    ) as example, client(example.port) as conn:
        for token, user in [("s3cret", "alice"), ("hunter2", "bob")]:
            reply = request(
                conn, "/echo", {"Authorization": f"bearer {token}", "X-User": "mallory"}, method="POST",
            )
            assert reply.status == 200 and reply.headers["x-origin"] == "stable"
            _, headers = reply.echoed()
            assert [value for name, value in headers if name == "x-user"] == [user]  # the client's claim is gone
            assert not any(name == "authorization" for name, _ in headers)
            assert token not in reply.body.decode("latin-1")


def test_auth_gate_requires_a_token_option() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "http_auth_gate.py"), "--origin", "127.0.0.1:1", "--token", "nocolon"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert "expected USER:TOKEN" in result.stderr and "Traceback" not in result.stderr

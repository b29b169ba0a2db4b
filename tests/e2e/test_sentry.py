"""Sentry reporting against a real HTTP server standing in for Sentry's ingest endpoint
(DSN ``http://key@127.0.0.1:PORT/1``): a framework hook that raises, and a product error
(a refused reload), arrive as envelopes with the exception or message, environment and
release. Each ferryman runs in its own process: the SDK's set-up is process-wide."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support.process import ENV, LOCAL, REPO, free_port, http_get, running, wait_until


class Ingest:
    """Sentry's envelope endpoint: POST /api/PROJECT/envelope/ (gzip, deflate or brotli)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.lock = threading.Lock()
        ingest = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding == "br":
                    import brotli

                    body = brotli.decompress(body)
                assert self.path == "/api/1/envelope/", self.path
                assert "sentry_key=key" in self.headers.get("X-Sentry-Auth", "")
                with ingest.lock:
                    ingest.events.extend(envelope_events(body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer((LOCAL, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.dsn = f"http://key@{LOCAL}:{self.port}/1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def matching(self, predicate) -> list[dict]:  # noqa: ANN001
        with self.lock:
            return [e for e in self.events if predicate(e)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def envelope_events(body: bytes) -> list[dict]:
    """The ``event`` items of an envelope: header line, then (item header, payload) pairs."""
    lines = body.split(b"\n")
    events, index = [], 1
    while index < len(lines) and lines[index]:
        header = json.loads(lines[index])
        length = header.get("length")
        if length is not None:
            rest = b"\n".join(lines[index + 1 :])
            payload, rest = rest[:length], rest[length + 1 :]
            lines = lines[: index + 1] + [payload] + rest.split(b"\n")
        if header.get("type") == "event":
            events.append(json.loads(lines[index + 1]))
        index += 2
    return events


@pytest.fixture
def ingest() -> Iterator[Ingest]:
    server = Ingest()
    yield server
    server.close()


APP = """
import logging, sys
from ferryman import HttpProxyService, ProxyHttp, Server, bind_socket, parse_address
from ferryman.observability import sentry

class Broken(ProxyHttp):
    def request_filter(self, session):
        raise ValueError("boom from the request_filter hook")

    def upstream_peer(self, session):
        raise AssertionError("not reached")

logging.basicConfig(level=logging.INFO)
sentry.setup(sys.argv[1], environment="staging", release="app@7")
sock = bind_socket(parse_address("127.0.0.1:0"))
server = Server(grace_period=1.0)
server.add_service(HttpProxyService("web", sock, Broken()))
print(sock.getsockname()[1], flush=True)
try:
    server.run()
finally:
    sentry.flush()
"""


def test_a_hook_that_raises_is_reported_with_its_exception(ingest: Ingest) -> None:
    proc = subprocess.Popen([sys.executable, "-c", APP, ingest.dsn], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        assert http_get(port, "/")[0] == 500
        wait_until(lambda: ingest.matching(is_exception), 10, "the exception's event")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    (event,) = ingest.matching(is_exception)
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "ValueError"
    assert exception["value"] == "boom from the request_filter hook"
    assert any(frame["function"] == "request_filter" for frame in exception["stacktrace"]["frames"])
    assert event["environment"] == "staging" and event["release"] == "app@7"
    assert event["level"] == "error" and "unexpected error" in event["logentry"]["message"]


def is_exception(event: dict) -> bool:
    return bool(event.get("exception", {}).get("values"))


def test_the_product_reports_with_the_configured_environment_and_release(tmp_path: Path, ingest: Ingest) -> None:
    port, demo = free_port(), free_port()
    text = f"""
[server]
workers = 1
grace_period = "1s"

[sentry]
dsn = "{ingest.dsn}"
environment = "production"
release = "edge@1.2.3"

[demo]
addr = "{LOCAL}:{demo}"

[listeners.web]
addr = "{LOCAL}:{port}"
protocol = "http"
upstream = "app"

[upstreams.app]
backends = ["{LOCAL}:{demo}"]
"""
    path = tmp_path / "ferryman.toml"
    path.write_text(text)
    with running(path) as proc:
        proc.wait_ready()
        assert http_get(port, "/")[0] == 200
        path.write_text(text.replace('upstream = "app"', 'upstream = "missing"'))  # a reload that must be refused
        os.kill(proc.pid, signal.SIGHUP)
        proc.wait_for("reload refused")
        wait_until(lambda: ingest.matching(is_refusal), 10, "the refused reload's event")
        assert proc.stop(10) == 0
    (event,) = ingest.matching(is_refusal)
    assert event["environment"] == "production" and event["release"] == "edge@1.2.3"
    assert "listeners.web.upstream" in event["logentry"]["formatted"]
    assert not ingest.matching(lambda e: e.get("level") in ("info", "warning"))  # only errors are events


def is_refusal(event: dict) -> bool:
    return "reload refused" in event.get("logentry", {}).get("message", "")

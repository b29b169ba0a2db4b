"""examples/l4_python_api.py runs as written and proxies by client IP."""

from __future__ import annotations

import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.process import ENV

LOCAL = "127.0.0.1"
CANARY_CLIENT = "127.0.0.2"
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "l4_python_api.py"


class NamedBackend:
    """A TCP backend on a thread: reads until EOF, answers ``<name>:<what it read>``, closes."""

    def __init__(self, name: bytes) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(10)
                data = b""
                while chunk := self.request.recv(65536):
                    data += chunk
                self.request.sendall(name + b":" + data)

        self.server = socketserver.ThreadingTCPServer((LOCAL, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def backends() -> Iterator[tuple[NamedBackend, NamedBackend]]:
    a, b = NamedBackend(b"A"), NamedBackend(b"B")
    yield a, b
    a.close()
    b.close()


def exchange(port: int, payload: bytes, source: str = LOCAL) -> bytes:
    """Send ``payload`` from ``source``, half-close, and read the reply to EOF."""
    with socket.socket() as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect((LOCAL, port))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply


def test_example_routes_by_client_ip_and_logs_bytes(backends: tuple[NamedBackend, NamedBackend]) -> None:
    a, b = backends
    command = [
        sys.executable, str(EXAMPLE), "--listen", f"{LOCAL}:0",
        "--backend", f"{LOCAL}:{a.port}", "--backend", f"{LOCAL}:{b.port}",
        "--canary-net", f"{CANARY_CLIENT}/32", "--grace", "2",
    ]
    env = ENV
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    listening = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "listening on" in line:
                listening.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert listening.wait(10), "the example did not report its listening address:\n" + "".join(lines)
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", "".join(lines))
        assert match
        port = int(match.group(1))

        assert exchange(port, b"hello") == b"A:hello"
        assert exchange(port, b"hi there", source=CANARY_CLIENT) == b"B:hi there"
        assert exchange(port, b"x" * 200000) == b"A:" + b"x" * 200000

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        reader.join(timeout=5)
        assert proc.stderr is not None
        proc.stderr.close()
    stderr = "".join(lines)
    assert "Traceback" not in stderr
    logged = re.findall(r"client ([\d.]+):\d+ -> ([\d.:]+): (\d+) bytes up, (\d+) bytes down", stderr)
    assert sorted(logged) == sorted(  # one line per connection, in whatever order they closed
        [
            (LOCAL, f"{LOCAL}:{a.port}", "5", "7"),
            (CANARY_CLIENT, f"{LOCAL}:{b.port}", "8", "10"),
            (LOCAL, f"{LOCAL}:{a.port}", "200000", "200002"),
        ]
    )


def test_example_reports_a_bad_backend_address() -> None:
    env = ENV
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--backend", "nowhere"], cwd=REPO, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "has no port" in result.stderr and "Traceback" not in result.stderr

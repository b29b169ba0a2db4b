"""Running ``python -m ferryman`` in tests: the process, its stderr, ports and /proc facts."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import ferryman

LOCAL = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
# the processes run the package the tests import (this checkout's src, or a compiled copy of it)
ENV = {**os.environ, "PYTHONPATH": str(Path(ferryman.__file__).resolve().parents[1])}
COMMAND = [sys.executable, "-m", "ferryman"]


def ferryman_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


_GIVEN: set[int] = set()  # ports handed out by this test process


def free_port() -> int:
    """A port nothing listens on now (for a config a subprocess binds). Never one this
    process handed out before: the kernel may give the same ephemeral port twice in a row,
    and two listeners of one config would then clash."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((LOCAL, 0))
            port = sock.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
    raise RuntimeError("no fresh ephemeral port after 100 tries")


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Running:
    """A ``ferryman run`` process; its stderr is collected line by line on a thread."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [*COMMAND, "run", "-c", str(config)],
            cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 10) -> str:
        """The first stderr line matching ``pattern``, waiting for it up to ``timeout``."""
        regex = re.compile(pattern)
        with self._cond:
            found = self._cond.wait_for(lambda: next((line for line in self.lines if regex.search(line)), None), timeout)
        assert found, f"no stderr line matched {pattern!r} within {timeout}s; stderr:\n" + self.stderr
        return found

    def wait_ready(self, listener: str = "web") -> None:
        # logged after every socket is bound and listening: connections queue until served
        self.wait_for(rf"listener {listener}: ")

    def stop(self, timeout: float) -> int:
        """SIGTERM, then the exit code, which must come within ``timeout``."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        assert self.proc.stderr is not None
        if not self._reader.is_alive():  # a reader still blocked on the pipe holds its lock
            self.proc.stderr.close()


@contextmanager
def running(config: Path) -> Iterator[Running]:
    proc = Running(config)
    try:
        yield proc
    finally:
        proc.close()


def write_config(
    tmp_path: Path,
    *,
    port: int,
    backend: str | None = None,
    demo_port: int | None = None,
    workers: int = 1,
    grace: str = "3s",
    extra: str = "",
) -> Path:
    """A config with one TCP listener ``web`` → upstream ``app`` (the demo origin by default)."""
    text = f'[server]\nworkers = {workers}\ngrace_period = "{grace}"\n'
    if demo_port is not None:
        text += f'[demo]\naddr = "{LOCAL}:{demo_port}"\n'
        backend = backend or f"{LOCAL}:{demo_port}"
    text += f'[listeners.web]\naddr = "{LOCAL}:{port}"\nupstream = "app"\n'
    text += f'[upstreams.app]\nbackends = ["{backend}"]\nconnect_timeout = "2s"\n' + extra
    path = tmp_path / "ferryman.toml"
    path.write_text(text)
    return path


def http_get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOCAL, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def connection_refused(port: int) -> bool:
    try:
        sock = socket.create_connection((LOCAL, port), timeout=2)
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # the listener closed while this connect waited in its queue: ask again
        return False
    sock.close()
    return False


def children(pid: int) -> set[int]:
    """Live (non-zombie) child processes of ``pid``, from /proc/*/stat."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry))
    return found


def state(pid: int) -> str:
    """The /proc state letter of ``pid`` ("R", "S", "T", "Z", ...), or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return ""


def gone(pid: int) -> bool:
    return state(pid) in ("", "Z")


class HttpOrigin:
    """A threaded HTTP origin in the test process: GET answers ``origin <path>``, or
    ``name`` when one is given (to tell origins apart); ``hits`` counts the GETs.
    ``keep_alive``: speak HTTP/1.1 with persistent connections (else one request each)."""

    def __init__(self, name: str | None = None, *, keep_alive: bool = False) -> None:
        self.hits = 0
        lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with lock:
                    origin.hits += 1
                body = (name if name is not None else f"origin {self.path}").encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer((LOCAL, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.addr = f"{LOCAL}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)



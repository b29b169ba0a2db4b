"""``python -m ferryman`` as a user runs it: version, check, run, errors, signals, workers."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.process import (
    LOCAL,
    HttpOrigin,
    children,
    connection_refused,
    ferryman_cli,
    free_port,
    gone,
    http_get,
    running,
    state,
    wait_until,
    write_config,
)

import ferryman


@pytest.fixture
def http_origin() -> Iterator[HttpOrigin]:
    server = HttpOrigin()
    yield server
    server.close()


BAD_CONFIG = """
[server]
workers = 0
grace_period = "5x"

[listeners.web]
addr = "127.0.0.1:99999"
upstream = "nope"
colour = "blue"

[upstreams.app]
backends = ["127.0.0.1"]
"""
BAD_LINES = [
    "server.workers: ",
    "server.grace_period: '5x' is not a duration",
    "listeners.web.addr: port 99999 is out of range",
    "listeners.web.colour: unknown key",
    "listeners.web.upstream: no upstream named 'nope'",
    "upstreams.app.backends[0]: '127.0.0.1' has no port",
]


# --- version and check ----------------------------------------------------------------


def test_version() -> None:
    result = ferryman_cli("version")
    assert result.returncode == 0
    build = "compiled core" if ferryman.compiled_core() else "pure Python"  # the same modules as the CLI's process
    assert result.stdout.strip() == f"ferryman {ferryman.__version__} ({build})"
    if os.environ.get("FERRYMAN_EXPECT_COMPILED"):  # scripts/test.sh's compiled pass
        assert build == "compiled core"


def test_check_accepts_the_example() -> None:
    result = ferryman_cli("check", "-c", "examples/ferryman.toml")
    assert result.returncode == 0, result.stderr
    assert "examples/ferryman.toml: ok" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("command", ["check", "run"])
def test_bad_config_prints_every_error_with_its_path(tmp_path: Path, command: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_CONFIG)
    result = ferryman_cli(command, "-c", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == len(BAD_LINES) + 1
    for expected in BAD_LINES:
        assert sum(line.startswith(f"{path}: {expected}") for line in lines) == 1, (expected, lines)
    assert lines[-1] == f"{path}: {len(BAD_LINES)} error(s); config rejected"


def test_check_reports_toml_syntax_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "syntax.toml"
    path.write_text("[server]\nworkers = 1\nworkers 2\n")
    result = ferryman_cli("check", "-c", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert re.search(r"invalid TOML: .*line 3", result.stderr), result.stderr


def test_check_missing_file(tmp_path: Path) -> None:
    result = ferryman_cli("check", "-c", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert f"{tmp_path / 'nope.toml'}: file not found" in result.stderr
    assert "Traceback" not in result.stderr


# --- run: start-up failures -----------------------------------------------------------


def test_run_with_the_port_in_use_prints_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOCAL, 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, port=port, backend=f"{LOCAL}:{free_port()}")
        result = ferryman_cli("run", "-c", str(config))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "address already in use" in lines[0]
    assert f"{LOCAL}:{port}" in lines[0]


def test_run_with_the_port_in_use_and_workers(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOCAL, 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, port=port, backend=f"{LOCAL}:{free_port()}", workers=2)
        result = ferryman_cli("run", "-c", str(config))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "address already in use" in lines[0], lines


def test_run_with_a_unix_listener_in_a_missing_directory(tmp_path: Path) -> None:
    sock_path = tmp_path / "missing" / "web.sock"
    config = tmp_path / "unix.toml"
    config.write_text(f'[listeners.web]\naddr = "unix:{sock_path}"\nupstream = "app"\n[upstreams.app]\nbackends = ["{LOCAL}:9"]\n')
    result = ferryman_cli("run", "-c", str(config))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"unix:{sock_path}" in lines[0] and f"directory {sock_path.parent} does not exist" in lines[0]


# --- run: serving ---------------------------------------------------------------------


def test_run_serves_http_through_the_tcp_listener_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port=port, demo_port=free_port(), grace="3s")
    with running(config) as proc:
        proc.wait_ready()
        status, body = http_get(port, "/")
        assert status == 200 and b"ferryman demo origin" in body
        status, body = http_get(port, "/bytes/1000000")
        assert status == 200 and len(body) == 1000000 and body == b"x" * 1000000
        start = time.monotonic()
        assert proc.stop(timeout=3) == 0
        assert time.monotonic() - start < 3
        assert "Traceback" not in proc.stderr
        assert connection_refused(port)


def test_unreachable_backend_closes_the_client_and_logs_one_warning(tmp_path: Path) -> None:
    with socket.socket() as dead:
        dead.bind((LOCAL, 0))  # bound, never listening: connecting to it is refused
        dead_port = dead.getsockname()[1]
        port, demo_port, good_port = free_port(), free_port(), free_port()
        config = write_config(
            tmp_path,
            port=port,
            backend=f"{LOCAL}:{dead_port}",
            demo_port=demo_port,
            extra=f'[listeners.good]\naddr = "{LOCAL}:{good_port}"\nupstream = "demo"\n'
            f'[upstreams.demo]\nbackends = ["{LOCAL}:{demo_port}"]\n',
        )
        with running(config) as proc:
            proc.wait_ready()
            with socket.create_connection((LOCAL, port), timeout=10) as client:
                client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    assert client.recv(1024) == b""
                except ConnectionResetError:
                    pass
            assert http_get(good_port, "/")[0] == 200  # still serving
            assert proc.stop(timeout=5) == 0
    warnings = [line for line in proc.lines if "WARNING" in line]
    assert len(warnings) == 1, warnings
    assert f"{LOCAL}:{dead_port}" in warnings[0] and "refused" in warnings[0]
    assert "Traceback" not in proc.stderr


def test_sigterm_drains_live_connections_and_refuses_new_ones(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port=port, demo_port=free_port(), grace="5s")
    with running(config) as proc:
        proc.wait_ready()
        live = http.client.HTTPConnection(LOCAL, port, timeout=10)
        try:
            live.request("GET", "/")
            response = live.getresponse()
            assert response.status == 200 and response.read()
            start = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            proc.wait_for("SIGTERM received")
            wait_until(lambda: connection_refused(port), 5, "new connections to be refused")
            live.request("GET", "/bytes/100000")  # same keep-alive connection, after SIGTERM
            response = live.getresponse()
            assert response.status == 200 and len(response.read()) == 100000
            assert proc.proc.poll() is None  # still draining while the connection is open
        finally:
            live.close()
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - start < 5  # done once the live connection closed, not at grace
        assert "Traceback" not in proc.stderr


def test_workers_serve_restart_and_stop(tmp_path: Path, http_origin: HttpOrigin) -> None:
    port = free_port()
    config = write_config(tmp_path, port=port, backend=f"{LOCAL}:{http_origin.port}", workers=2, grace="3s")
    stopped: list[int] = []

    def served_while_frozen(pid: int) -> None:
        """Freeze worker ``pid``: the request must be served by another one."""
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)
        wait_until(lambda: state(pid) == "T", 5, f"worker {pid} to stop")
        assert http_get(port, f"/without-{pid}") == (200, f"origin /without-{pid}".encode())
        os.kill(pid, signal.SIGCONT)
        stopped.remove(pid)

    with running(config) as proc:
        master = proc.pid
        proc.wait_ready()
        wait_until(lambda: len(children(master)) == 2, 10, "two workers")
        first, second = sorted(children(master))
        assert http_get(port, "/") == (200, b"origin /")
        try:
            served_while_frozen(first)  # so the other one serves
            served_while_frozen(second)  # and this one too

            os.kill(first, signal.SIGKILL)
            proc.wait_for(rf"worker \d \(pid {first}\) exited \(killed by SIGKILL\); starting a new one")
            wait_until(lambda: len(children(master) - {first, second}) == 1, 10, "a replacement worker")
            (replacement,) = children(master) - {first, second}
            assert children(master) == {second, replacement}
            served_while_frozen(second)  # the replacement serves on its own
            assert http_get(port, "/after") == (200, b"origin /after")
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        start = time.monotonic()
        assert proc.stop(timeout=5) == 0
        assert time.monotonic() - start < 3
        wait_until(lambda: gone(second) and gone(replacement), 5, "every worker to exit")
        assert connection_refused(port)
        assert "Traceback" not in proc.stderr


def socket_fds(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def test_workers_drain_a_connection_to_the_demo_origin_of_another_worker(tmp_path: Path) -> None:
    """The demo origin lives in worker 0; a connection proxied by worker 1 must still be
    answered while worker 1 drains, after worker 0 had nothing left to drain."""
    port = free_port()
    config = write_config(tmp_path, port=port, demo_port=free_port(), workers=2, grace="5s")
    with running(config) as proc:
        master = proc.pid
        proc.wait_ready()
        demo_pid = int(proc.wait_for(r"demo origin listening").split("[")[1].split("]")[0])
        wait_until(lambda: len(children(master)) == 2, 10, "two workers")
        (other,) = children(master) - {demo_pid}
        before = socket_fds(other)
        os.kill(demo_pid, signal.SIGSTOP)
        try:
            wait_until(lambda: state(demo_pid) == "T", 5, "worker 0 to stop")
            live = http.client.HTTPConnection(LOCAL, port, timeout=10)
            live.connect()
            # worker 0 is frozen, so the other worker accepts and dials the demo origin
            wait_until(lambda: socket_fds(other) >= before + 2, 5, "the other worker to take the connection")
        finally:
            os.kill(demo_pid, signal.SIGCONT)
        try:
            live.request("GET", "/")
            response = live.getresponse()
            assert response.status == 200 and response.read()
            proc.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: connection_refused(port), 5, "new connections to be refused")
            # worker 0 has drained its own (no) connections and now holds only the origin
            proc.wait_for(rf"\[{demo_pid}\] .*demo origin: waiting up to 5s for \d+ open connection")
            live.request("GET", "/bytes/100000")
            response = live.getresponse()
            assert response.status == 200 and len(response.read()) == 100000
        finally:
            live.close()
        assert proc.wait(timeout=5) == 0
        assert gone(demo_pid) and gone(other)
        assert "Traceback" not in proc.stderr


def test_run_serves_an_http_listener_with_forwarded_headers(tmp_path: Path) -> None:
    port, demo_port, http_port = free_port(), free_port(), free_port()
    config = write_config(
        tmp_path,
        port=port,
        demo_port=demo_port,
        extra=f'[listeners.http]\naddr = "{LOCAL}:{http_port}"\nprotocol = "http"\nupstream = "app"\n'
        'header_timeout = "5s"\nmax_body_size = "1m"\n',
    )
    with running(config) as proc:
        proc.wait_ready()
        status, body = http_get(http_port, "/echo")
        assert status == 200 and b"x-forwarded-for: 127.0.0.1" in body
        status, body = http_get(http_port, "/bytes/1000000")
        assert status == 200 and len(body) == 1000000
        assert proc.stop(timeout=5) == 0
        assert "Traceback" not in proc.stderr

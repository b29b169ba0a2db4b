"""Zero downtime under traffic: binary upgrades (SIGUSR2 / ``ferryman upgrade``), 20 reloads
and a killed worker. In an upgrade the old master hands its
listening sockets to a new one over SCM_RIGHTS, waits until it serves, then drains and exits.
Clients run throughout: HTTP on new connections, HTTP keep-alive, and TCP through an L4
listener. No connection may be refused or fail. A keep-alive request that finds its idle
connection closed by the draining process is retried once on a new connection, as HTTP
clients do for idempotent requests; those retries are counted, not hidden."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from support.process import LOCAL, children, ferryman_cli, free_port, gone, running, wait_until


def config(http_port: int, tcp_port: int, demo_port: int, pid_file: Path, workers: int, balance: str = "shared") -> str:
    return f"""
[server]
workers = {workers}
grace_period = "3s"
pid_file = "{pid_file}"

[demo]
addr = "{LOCAL}:{demo_port}"

[listeners.web]
addr = "{LOCAL}:{http_port}"
protocol = "http"
routes = ["all"]
balance = "{balance}"

[listeners.tcp]
addr = "{LOCAL}:{tcp_port}"
upstream = "demo"
balance = "{balance}"

[routes.all]
filters = ["answer"]

[filters.answer]
kind = "mock"
body = "ok"

[upstreams.demo]
backends = ["{LOCAL}:{demo_port}"]
"""


class Traffic:
    """Three client loops on threads; counts requests, failures and keep-alive retries."""

    def __init__(self, http_port: int, tcp_port: int) -> None:
        self.http_port, self.tcp_port = http_port, tcp_port
        self.stop = threading.Event()
        self.done = {"new": 0, "keepalive": 0, "tcp": 0}
        self.failures: list[str] = []
        self.retries = 0
        self.threads = [threading.Thread(target=loop, daemon=True) for loop in (self._new, self._keepalive, self._tcp)]

    def __enter__(self) -> "Traffic":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def _get(self, conn: http.client.HTTPConnection) -> None:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200 or body != b"ok":
            raise AssertionError(f"{response.status} {body!r}")

    def _new(self) -> None:
        while not self.stop.is_set():
            conn = http.client.HTTPConnection(LOCAL, self.http_port, timeout=10)
            try:
                self._get(conn)
                self.done["new"] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is recorded
                self.failures.append(f"new connection: {type(exc).__name__}: {exc}")
            finally:
                conn.close()

    def _keepalive(self) -> None:
        conn = http.client.HTTPConnection(LOCAL, self.http_port, timeout=10)
        while not self.stop.is_set():
            try:
                self._get(conn)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()  # the idle connection was closed by a draining process: retry once
                self.retries += 1
                conn = http.client.HTTPConnection(LOCAL, self.http_port, timeout=10)
                try:
                    self._get(conn)
                except Exception as exc:  # noqa: BLE001
                    self.failures.append(f"keep-alive retry: {type(exc).__name__}: {exc}")
                    continue
            except Exception as exc:  # noqa: BLE001
                self.failures.append(f"keep-alive: {type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(LOCAL, self.http_port, timeout=10)
                continue
            self.done["keepalive"] += 1
        conn.close()

    def _tcp(self) -> None:
        while not self.stop.is_set():
            try:
                with socket.create_connection((LOCAL, self.tcp_port), timeout=10) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := sock.recv(4096):
                        data += chunk
                if not data.startswith(b"HTTP/1.1 200") or not data.endswith(b"ok\n"):
                    raise AssertionError(repr(data[:80]))
                self.done["tcp"] += 1
            except Exception as exc:  # noqa: BLE001
                self.failures.append(f"tcp: {type(exc).__name__}: {exc}")


def get_ok(port: int) -> bool:
    conn = http.client.HTTPConnection(LOCAL, port, timeout=10)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read() == b"ok"
    finally:
        conn.close()


def master_pid(pid_file: Path) -> int:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize(("workers", "balance"), [(1, "shared"), (2, "shared"), (2, "kernel"), (2, "least_conn")])
def test_three_binary_upgrades_under_traffic_lose_nothing(tmp_path: Path, workers: int, balance: str) -> None:
    http_port, tcp_port, demo_port = free_port(), free_port(), free_port()
    pid_file = tmp_path / "ferryman.pid"
    path = tmp_path / "ferryman.toml"
    path.write_text(config(http_port, tcp_port, demo_port, pid_file, workers, balance))
    masters: list[int] = []
    try:
        with running(path) as proc:
            proc.wait_ready("tcp")
            wait_until(lambda: master_pid(pid_file) == proc.pid, 10, "the pid file")
            assert get_ok(http_port)  # serving, so the signal handlers are installed
            masters.append(proc.pid)
            with Traffic(http_port, tcp_port) as traffic:
                wait_until(lambda: all(traffic.done.values()), 10, "traffic of every kind")
                for round_ in range(3):
                    old = masters[-1]
                    if round_ == 1:  # once through the CLI, which validates first
                        result = ferryman_cli("upgrade", "-c", str(path))
                        assert result.returncode == 0, result.stderr
                    else:
                        os.kill(old, signal.SIGUSR2)
                    wait_until(lambda: master_pid(pid_file) not in (0, old), 30, "a new master in the pid file")
                    masters.append(master_pid(pid_file))
                    wait_until(lambda: gone(old), 15, f"the old master {old} to drain and exit")
                    before = dict(traffic.done)
                    wait_until(lambda: all(traffic.done[k] > before[k] for k in before), 10, "traffic through the new master")
            assert not traffic.failures, traffic.failures[:5]
            assert all(count > 0 for count in traffic.done.values()), traffic.done
            assert traffic.retries <= 3 * 2, traffic.retries  # at most a couple of idle-close races per upgrade
            if workers > 1:  # least_conn: plus the balancing process
                assert len(children(masters[-1])) == workers + (balance == "least_conn")
            os.kill(masters[-1], signal.SIGTERM)
            wait_until(lambda: gone(masters[-1]), 15, "the last master to stop")
            assert not pid_file.exists()
    finally:
        for pid in masters[1:]:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_failed_upgrade_keeps_the_old_master_serving(tmp_path: Path) -> None:
    http_port, tcp_port, demo_port = free_port(), free_port(), free_port()
    pid_file = tmp_path / "ferryman.pid"
    path = tmp_path / "ferryman.toml"
    path.write_text(config(http_port, tcp_port, demo_port, pid_file, 1))
    with running(path) as proc:
        proc.wait_ready("tcp")
        assert get_ok(http_port)  # answered: the signal handlers are installed too
        path.write_text("[server]\nworkers = 1\n[listeners.web]\nprotocol = \"nope\"\n")  # the new one cannot start
        os.kill(proc.pid, signal.SIGUSR2)
        proc.wait_for(r"upgrade failed, still serving: .* is not valid", timeout=30)
        proc.wait_for(r"listeners.web.protocol: Input should be")
        assert get_ok(http_port)
        assert master_pid(pid_file) == proc.pid
        assert proc.stop(10) == 0


@pytest.mark.parametrize("balance", ["shared", "least_conn"])
def test_twenty_reloads_and_a_killed_worker_under_traffic(tmp_path: Path, balance: str) -> None:
    """Two workers, traffic of every kind: 20 SIGHUP reloads (each changes the config) lose
    nothing; a worker killed with SIGKILL is replaced and traffic goes on (only that worker's
    own connections may fail)."""
    http_port, tcp_port, demo_port = free_port(), free_port(), free_port()
    pid_file = tmp_path / "ferryman.pid"
    path = tmp_path / "ferryman.toml"
    text = config(http_port, tcp_port, demo_port, pid_file, 2, balance)
    path.write_text(text)
    with running(path) as proc:
        proc.wait_ready("tcp")
        assert get_ok(http_port)
        with Traffic(http_port, tcp_port) as traffic:
            wait_until(lambda: all(traffic.done.values()), 10, "traffic of every kind")
            for generation in range(1, 21):
                path.write_text(text.replace('body = "ok"', f'body = "ok"\nheaders = {{ "x-generation" = "{generation}" }}'))
                os.kill(proc.pid, signal.SIGHUP)
                proc.wait_for(rf"generation {generation + 1} applied", timeout=10)  # both workers log it; one is enough here
                before = dict(traffic.done)
                wait_until(lambda: all(traffic.done[k] > before[k] for k in before), 10, "traffic after the reload")
            assert not traffic.failures, traffic.failures[:5]
            reload_retries = traffic.retries
            processes = len(children(proc.pid))
            victim = min(children(proc.pid))  # a worker, or with least_conn maybe the balancer
            os.kill(victim, signal.SIGKILL)
            try:
                wait_until(lambda: gone(victim) and len(children(proc.pid)) == processes, 20, "a replacement process")
            except AssertionError as exc:  # say what the process tree and the log looked like
                raise AssertionError(f"{exc}; before: {processes} children, now {sorted(children(proc.pid))}, victim {victim} "
                                     f"gone={gone(victim)}; log tail:\n" + "\n".join(proc.lines[-30:])) from None
            before = dict(traffic.done)
            wait_until(lambda: all(traffic.done[k] > before[k] + 20 for k in before), 15, "traffic after the kill")
            if balance == "least_conn":  # the balancing process dies too: the master restarts it
                balancer = int(re.search(r"balancer (\d+):", proc.wait_for(r"balancer \d+: passing")).group(1))
                os.kill(balancer, signal.SIGKILL)
                wait_until(lambda: gone(balancer) and len(children(proc.pid)) == processes, 10, "a new balancer")
                before = dict(traffic.done)
                wait_until(lambda: all(traffic.done[k] > before[k] + 20 for k in before), 15, "traffic after the balancer's restart")
        assert reload_retries <= 2, reload_retries  # reloads close no connection; keep-alive ones stay
        assert proc.stop(10) == 0

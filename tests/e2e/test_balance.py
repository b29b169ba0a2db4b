"""Accept balancing across workers, per listener mode, on a real two-worker ferryman: which
worker served each connection is read from the access log (``$pid``, ``$remote_port``)."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections import Counter
from pathlib import Path

import pytest
from support.process import LOCAL, children, free_port, running, wait_until


def config(port: int, log: Path, balance: str) -> str:
    return f"""
[server]
workers = 2
grace_period = "2s"

[listeners.web]
addr = "{LOCAL}:{port}"
protocol = "http"
routes = ["all"]
balance = "{balance}"
balance_worker = 1
access_log = "{log}"
access_log_format = ["pid", "remote_port"]

[routes.all]
filters = ["answer"]

[filters.answer]
kind = "mock"
body = "ok"
"""


def get(port: int) -> tuple[bytes, int]:
    """One GET on a new connection (from a kernel-chosen port): (the whole response, that port)."""
    with socket.create_connection((LOCAL, port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data, sock.getsockname()[1]


def one_request(port: int) -> int:
    """A new connection and one request that must succeed; returns the client port."""
    data, client_port = get(port)
    assert data.startswith(b"HTTP/1.1 200"), data
    return client_port


def tcp_origin(handler: type) -> socketserver.ThreadingTCPServer:
    """A threaded TCP origin on 127.0.0.1:0 running ``handler`` (stop: shutdown, server_close)."""
    origin = socketserver.ThreadingTCPServer((LOCAL, 0), handler)
    origin.daemon_threads = True
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    return origin


def served(log: Path, count: int) -> list[tuple[int, int]]:
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= count, 10, f"{count} access log lines")
    return [(line["pid"], line["remote_port"]) for line in map(json.loads, log.read_text().splitlines())]


@pytest.mark.parametrize("balance", ["shared", "kernel", "port", "fixed", "least_conn"])
def test_each_balance_mode_spreads_connections_as_it_says(tmp_path: Path, balance: str) -> None:
    port, log = free_port(), tmp_path / "access.log"
    path = tmp_path / "ferryman.toml"
    path.write_text(config(port, log, balance))
    with running(path) as proc:
        proc.wait_ready()
        processes = 3 if balance == "least_conn" else 2  # least_conn: plus the balancing process
        wait_until(lambda: len(children(proc.pid)) == processes, 10, "the workers")
        workers = sorted(children(proc.pid))
        for _ in range(40):
            one_request(port)
        lines = served(log, 40)
        assert proc.stop(10) == 0
    spread = Counter(pid for pid, _ in lines)
    assert set(spread) <= set(workers)
    if balance == "fixed":
        assert len(spread) == 1  # balance_worker only
    elif balance == "port":
        by_parity = {parity: {pid for pid, p in lines if p % 2 == parity} for parity in (0, 1)}
        assert all(len(pids) == 1 for pids in by_parity.values() if pids), by_parity  # port % 2 picks the worker
        if by_parity[0] and by_parity[1]:
            assert by_parity[0] != by_parity[1]
    elif balance == "kernel":
        assert len(spread) == 2  # the 4-tuple hash spreads 40 connections over both
    elif balance == "least_conn":
        # loads are equal between connections (each closes before the next), so the winner
        # rotates; a worker's report can lag a connection, so not strictly 20/20
        assert len(spread) == 2 and min(spread.values()) >= 10, spread


@pytest.mark.parametrize("worker", [0, 1])
def test_source_port_affinity_connects_from_ports_of_the_workers_residue(tmp_path: Path, worker: int) -> None:
    """Only ``balance_worker`` serves the listener, so every upstream connection is its own:
    each must come from a local port p with p % 2 == worker."""
    seen: list[int] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            seen.append(self.client_address[1])
            self.request.sendall(b"hi")

    origin = tcp_origin(Handler)
    port = free_port()
    path = tmp_path / "ferryman.toml"
    path.write_text(f"""
[server]
workers = 2
grace_period = "1s"

[listeners.tcp]
addr = "{LOCAL}:{port}"
upstream = "origin"
balance = "fixed"
balance_worker = {worker}

[upstreams.origin]
backends = ["{LOCAL}:{origin.server_address[1]}"]
source_port_affinity = true
""")
    try:
        with running(path) as proc:
            proc.wait_ready("tcp")
            for _ in range(10):
                with socket.create_connection((LOCAL, port), timeout=10) as sock:
                    assert sock.recv(2) == b"hi"
            assert proc.stop(10) == 0
    finally:
        origin.shutdown()
        origin.server_close()
    assert len(seen) == 10
    assert {p % 2 for p in seen} == {worker}, seen


def test_least_conn_passes_tcp_connections_to_the_least_busy_worker(tmp_path: Path) -> None:
    """Connections held open pile up on no worker: the balancing process sends each new one
    to the worker with fewer live connections."""
    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(4096):
                self.request.sendall(data)

    origin = tcp_origin(Echo)
    port = free_port()
    path = tmp_path / "ferryman.toml"
    path.write_text(f"""
[server]
workers = 2
grace_period = "1s"

[listeners.tcp]
addr = "{LOCAL}:{port}"
upstream = "origin"
balance = "least_conn"

[upstreams.origin]
backends = ["{LOCAL}:{origin.server_address[1]}"]
""")
    held = []
    try:
        with running(path) as proc:
            proc.wait_ready("tcp")
            proc.wait_for(r"balancer \d+: passing connections of tcp")
            wait_until(lambda: len(children(proc.pid)) == 3, 10, "two workers and the balancer")
            for i in range(8):
                sock = socket.create_connection((LOCAL, port), timeout=10)
                sock.sendall(b"ping %d" % i)
                assert sock.recv(100) == b"ping %d" % i
                held.append(sock)
            workers = children(proc.pid)
            per_worker = {pid: _established(pid, port) for pid in workers}
            assert sorted(per_worker.values()) == [0, 4, 4], per_worker  # the balancer holds none
            for sock in held:
                sock.close()
            assert proc.stop(10) == 0
    finally:
        for sock in held:
            sock.close()
        origin.shutdown()
        origin.server_close()


def _established(pid: int, port: int) -> int:
    """Sockets of process ``pid`` that are client connections accepted on ``port``."""
    import os

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:  # ESTABLISHED
                count += 1
    return count


def test_a_rate_limit_holds_for_the_whole_proxy_across_workers(tmp_path: Path) -> None:
    """Connections spread over two workers (kernel balancing); the workers share the limit's
    counts, so a client gets its rate once, not once per worker."""
    port, log = free_port(), tmp_path / "access.log"
    path = tmp_path / "ferryman.toml"
    path.write_text(config(port, log, "kernel").replace('filters = ["answer"]', 'filters = ["limit", "answer"]') + """
[filters.limit]
kind = "ratelimit"
rate = "10/m"
""")
    statuses = []
    with running(path) as proc:
        proc.wait_ready()
        for _ in range(40):
            statuses.append(int(get(port)[0].split(b" ", 2)[1]))
        lines = served(log, 40)
        assert proc.stop(10) == 0
    assert len({pid for pid, _ in lines}) == 2  # both workers answered
    assert statuses.count(200) in (10, 11), statuses  # 11: a same-instant race between workers
    assert statuses.count(429) == 40 - statuses.count(200)


def test_one_health_checker_serves_every_worker(tmp_path: Path) -> None:
    """Worker 0 alone probes; the other worker follows its verdicts: a failing backend is taken
    out of both workers' rotation, and the check's "down" line is logged once, not per worker."""
    import http.server

    class Origin(http.server.BaseHTTPRequestHandler):
        healthy = True

        def do_GET(self) -> None:  # noqa: N802
            ok = type(self).healthy or self.path != "/health"
            body = self.server.name.encode()  # type: ignore[attr-defined]
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    class Healthy(Origin):
        healthy = True

    class Sick(Origin):
        healthy = True

    origins = []
    for name, handler in (("good", Healthy), ("sick", Sick)):
        server = http.server.ThreadingHTTPServer((LOCAL, 0), handler)
        server.name = name  # type: ignore[attr-defined]
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        origins.append(server)
    port = free_port()
    path = tmp_path / "ferryman.toml"
    path.write_text(f"""
[server]
workers = 2
grace_period = "1s"

[listeners.web]
addr = "{LOCAL}:{port}"
protocol = "http"
upstream = "app"
balance = "kernel"

[upstreams.app]
backends = ["{LOCAL}:{origins[0].server_address[1]}", "{LOCAL}:{origins[1].server_address[1]}"]
health_check = {{ kind = "http", path = "/health", interval = "0.1s", timeout = "1s", rise = 1, fall = 2 }}
""")

    def names(count: int) -> set[bytes]:
        seen = set()
        for _ in range(count):
            seen.add(get(port)[0].rpartition(b"\r\n\r\n")[2])
        return seen

    try:
        with running(path) as proc:
            proc.wait_ready()
            assert names(20) == {b"good", b"sick"}
            Sick.healthy = False
            proc.wait_for(r"backend .* down: status 503")
            proc.wait_for(r"down \(upstream app, checked by worker 0\)")  # the follower applied it
            assert names(30) == {b"good"}  # out of rotation in both workers
            Sick.healthy = True
            proc.wait_for(r"up \(upstream app, checked by worker 0\)")
            wait_until(lambda: names(10) == {b"good", b"sick"}, 10, "the backend back in rotation")
            assert proc.stop(10) == 0
            assert len([line for line in proc.lines if "down: status 503" in line]) == 1  # one checker
    finally:
        for server in origins:
            server.shutdown()
            server.server_close()

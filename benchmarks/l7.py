#!/usr/bin/env python3
"""HTTP/1.1 benchmark: ferryman vs nginx vs haproxy (reverse proxies) vs a direct baseline.

One command, from the repo root::

    python benchmarks/l7.py [--rounds N] [--duration S] [--quick] [--contenders a,b]
                            [--scenarios a,b] [--write-results]

An nginx origin serves ``/small`` (100-byte body) and ``/1m`` (a 1 MiB file) for the whole
benchmark; every contender is a reverse proxy with one worker and a keep-alive pool to the
origin. Before measuring, one GET of each path through each contender must return 200 and
the exact body, else that contender is reported as failed and skipped. Rounds are interleaved
(round -> scenario -> contender, contender order rotated each round); ratios are medians of
per-round paired ratios.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # keep benchmarks/ free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))

# imported after the sys.path tweak that makes it importable
from common import (
    SMALL_BODY,
    Contender,
    Harness,
    ProcessGroup,
    Scenario,
    Service,
    entry,
    free_ports,
    http_get,
    nginx_http_block,
    nginx_main_block,
    run_wrk,
    settle_contenders,
    start_ferryman,
    start_haproxy,
    start_nginx,
    start_origin_nginx,
)
from common import main as run_main

CONTENDERS = ("direct", "ferryman", "nginx", "haproxy")
TOOLS = ("nginx", "haproxy", "wrk")
INSTALL_HINT = "apt-get install -y nginx haproxy wrk   (or: bash benchmarks/install.sh)"
LARGE_BODY = bytes(range(256)) * 4096  # 1 MiB, served at /1m
EXPECTED = {"/small": SMALL_BODY.encode(), "/1m": LARGE_BODY}

# scenario -> (path, wrk connections, Connection: close)
WRK_RUNS = {
    "small-keepalive": ("/small", 50, False),
    "large": ("/1m", 10, False),
    "new-conn": ("/small", 50, True),
}
SCENARIOS = {
    "small-keepalive": Scenario(
        f"wrk -t1 -c50, GET /small ({len(SMALL_BODY)}-byte body), keep-alive", "req/s"
    ),
    "large": Scenario(
        "wrk -t1 -c10, GET /1m (1 MiB body), keep-alive", "req/s",
        extra=(("median MB/s", "mb_s"),),
    ),
    "new-conn": Scenario(
        "wrk -t1 -c50 -H 'Connection: close', GET /small: a new client connection per "
        "request (the proxy may reuse its upstream connections)",
        "req/s",
    ),
}
NOTES = (
    (
        "Targets (issue): small-keepalive ≥ 0.8x nginx; large (1 MiB) and new-conn: see the "
        "issue (the ratios are below)."
    ),
    (
        "Proxies: nginx `proxy_pass` to an `upstream` with `keepalive 64`, HTTP/1.1, "
        "`proxy_buffering on`; haproxy `mode http`, `http-reuse always`; ferryman one http "
        "listener, one upstream. MB/s is wrk's bytes read (headers included)."
    ),
)


# --------------------------------------------------------------------------- setup


def start_nginx_proxy(group: ProcessGroup, workdir: Path, origin: int) -> Contender:
    (port,) = free_ports(1)
    body = f"""
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 64;
        keepalive_requests 100000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    conf = nginx_main_block(workdir, "nginx") + nginx_http_block(workdir, "nginx", body)
    return Contender("nginx", port, [start_nginx(group, workdir, "nginx", conf)])


def start_haproxy_http(group: ProcessGroup, workdir: Path, origin: int) -> Contender:
    (port,) = free_ports(1)
    # http-reuse always: like nginx's keepalive pool, the first request of a client
    # connection may use an idle server connection too ("safe" opens a new one for it).
    conf = f"""
global
    nbthread 1
    maxconn 8000

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    maxconn 8000

frontend http_in
    bind 127.0.0.1:{port}
    default_backend origin

backend origin
    server origin 127.0.0.1:{origin}
"""
    return Contender("haproxy", port, [start_haproxy(group, workdir, conf)])


def start_ferryman_http(group: ProcessGroup, workdir: Path, origin: int) -> Contender:
    (port,) = free_ports(1)
    conf = f"""
[server]
workers = 1
log_level = "warning"

[listeners.http]
addr = "127.0.0.1:{port}"
protocol = "http"
upstream = "origin"

[upstreams.origin]
backends = ["127.0.0.1:{origin}"]
"""
    return Contender("ferryman", port, [start_ferryman(group, workdir, conf)])


def verify(c: Contender) -> str | None:
    """One GET of each path through ``c``: None if every answer is 200 with the exact body."""
    for path, expected in EXPECTED.items():
        try:
            status, body = http_get(c.ports, path)
        except (OSError, ValueError) as exc:
            return f"GET {path} through it failed: {type(exc).__name__}: {exc}"
        if status != 200 or body != expected:
            return (f"GET {path} through it gave status {status} and a {len(body)}-byte body "
                    f"(expected 200 and the {len(expected)}-byte origin body)")
    return None


def start(
    group: ProcessGroup, workdir: Path, names: list[str]
) -> tuple[list[Contender], list[Service]]:
    """Start the origin and every requested contender; wait for them and check they proxy."""
    www = workdir / "www"
    www.mkdir()
    (www / "1m").write_bytes(LARGE_BODY)
    (origin_port,) = free_ports(1)
    locations = f"""
        location = /1m {{
            root {www};
            default_type application/octet-stream;
        }}"""
    origin = start_origin_nginx(group, workdir, origin_port, locations)
    starters = {
        "direct": lambda: Contender("direct", origin_port),
        "nginx": lambda: start_nginx_proxy(group, workdir, origin_port),
        "haproxy": lambda: start_haproxy_http(group, workdir, origin_port),
        "ferryman": lambda: start_ferryman_http(group, workdir, origin_port),
    }
    contenders = [starters[n]() for n in names]
    settle_contenders(contenders, lambda c: [c.ports], verify)
    return contenders, [origin]


def measure(scenario: str, c: Contender, duration: int) -> dict[str, Any]:
    path, conns, close = WRK_RUNS[scenario]
    return run_wrk(f"http://127.0.0.1:{c.ports}{path}", duration, conns, close=close)


HARNESS = Harness(
    name="http",
    title="HTTP benchmark",
    heading="## HTTP",
    reference="nginx",
    contenders=CONTENDERS,
    scenarios=SCENARIOS,
    tools=TOOLS,
    install_hint=INSTALL_HINT,
    start=start,
    measure=measure,
    notes=NOTES,
    meta={"wrk": {"threads": 1, "runs": WRK_RUNS}},
)


def main(argv: list[str] | None = None) -> int:
    return run_main(HARNESS, argv)


if __name__ == "__main__":
    entry(HARNESS)

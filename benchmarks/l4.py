#!/usr/bin/env python3
"""L4 (TCP) benchmark: ferryman vs nginx stream vs haproxy vs a direct baseline.

One command, from the repo root::

    python benchmarks/l4.py [--rounds N] [--duration S] [--quick] [--contenders a,b]
                            [--python PATH|optimized] [--write-results]

An nginx origin (``/small``, ~100-byte body) and an ``iperf3 -s`` server run for the whole
benchmark; every contender is a TCP forwarder with one listener per origin port. Rounds are
interleaved (round -> scenario -> contender, contender order rotated each round) so drift on
a shared machine hits everyone alike. Ratios are medians of per-round paired ratios.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # keep benchmarks/ free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))

# imported after the sys.path tweak that makes it importable
from common import (
    SMALL_BODY,
    Contender,
    Harness,
    Interpreter,
    ProcessGroup,
    Scenario,
    Service,
    entry,
    find_tool,
    free_ports,
    nginx_main_block,
    run_bounded,
    run_wrk,
    settle_contenders,
    start_ferryman,
    start_haproxy,
    start_nginx,
    start_origin_nginx,
    wait_ready,
)
from common import main as run_main

CONTENDERS = ("direct", "ferryman", "nginx-stream", "haproxy")
TOOLS = ("nginx", "haproxy", "wrk", "iperf3")
INSTALL_HINT = (
    "apt-get install -y nginx libnginx-mod-stream haproxy wrk iperf3"
    "   (or: bash benchmarks/install.sh)"
)
WRK_THREADS, WRK_CONNS = 1, 50

SCENARIOS = {
    "bulk": Scenario("iperf3 -P 1, one stream client→server", "MB/s", "CPU-s/GB", 1e9),
    "small-keepalive": Scenario(
        f"wrk -t{WRK_THREADS} -c{WRK_CONNS}, GET /small ({len(SMALL_BODY)}-byte body), keep-alive",
        "req/s",
    ),
    "new-conn": Scenario(
        f"wrk -t{WRK_THREADS} -c{WRK_CONNS} -H 'Connection: close': a new TCP connection "
        "through the proxy per request",
        "req/s",
    ),
}


@dataclass
class Ports:
    """Where a client connects for each scenario family."""

    http: int
    iperf: int


# --------------------------------------------------------------------------- setup


def nginx_stream_module(nginx: str) -> str | None:
    """The ``load_module`` line nginx needs for ``stream {}`` ('' if built in), None if absent."""
    out = run_bounded([nginx, "-V"], timeout=10).stderr
    if re.search(r"--with-stream(\s|$)", out):
        return ""
    if "--with-stream=dynamic" in out:
        m = re.search(r"--modules-path=(\S+)", out)
        mod_dir = Path(m.group(1)) if m else Path("/usr/lib/nginx/modules")
        so = mod_dir / "ngx_stream_module.so"
        if so.exists():
            return f"load_module {so};"
    return None


def check(names: list[str], python: Interpreter) -> str | None:
    if "nginx-stream" in names and nginx_stream_module(find_tool("nginx") or "nginx") is None:
        return f"nginx has no stream module\ninstall with: {INSTALL_HINT}"
    return None


def start_origin(group: ProcessGroup, workdir: Path) -> tuple[Ports, list[Service]]:
    """nginx serving /small and an iperf3 server, each on a free port."""
    http_port, iperf_port = free_ports(2)
    nginx = start_origin_nginx(group, workdir, http_port)
    iperf = group.start(
        "origin-iperf3",
        [find_tool("iperf3") or "iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf_port)],
    )
    wait_ready(iperf, iperf_port)
    return Ports(http_port, iperf_port), [nginx, iperf]


def start_nginx_stream(group: ProcessGroup, workdir: Path, origin: Ports) -> Contender:
    p_http, p_iperf = free_ports(2)
    load_line = nginx_stream_module(find_tool("nginx") or "nginx") or ""
    conf = load_line + "\n" + nginx_main_block(workdir, "nginx-stream") + f"""
stream {{
    server {{ listen 127.0.0.1:{p_http} backlog=4096; proxy_pass 127.0.0.1:{origin.http}; }}
    server {{ listen 127.0.0.1:{p_iperf}; proxy_pass 127.0.0.1:{origin.iperf}; }}
}}
"""
    svc = start_nginx(group, workdir, "nginx-stream", conf)
    return Contender("nginx-stream", Ports(p_http, p_iperf), [svc])


def start_haproxy_tcp(group: ProcessGroup, workdir: Path, origin: Ports) -> Contender:
    p_http, p_iperf = free_ports(2)
    conf = f"""
global
    nbthread 1
    maxconn 8000

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    maxconn 8000

frontend http_in
    bind 127.0.0.1:{p_http}
    default_backend http_out

backend http_out
    server origin 127.0.0.1:{origin.http}

frontend iperf_in
    bind 127.0.0.1:{p_iperf}
    default_backend iperf_out

backend iperf_out
    server origin 127.0.0.1:{origin.iperf}
"""
    return Contender("haproxy", Ports(p_http, p_iperf), [start_haproxy(group, workdir, conf)])


def start_ferryman_tcp(group: ProcessGroup, workdir: Path, origin: Ports) -> Contender:
    p_http, p_iperf = free_ports(2)
    conf = f"""
[server]
workers = 1

[listeners.http]
addr = "127.0.0.1:{p_http}"
protocol = "tcp"
upstream = "origin_http"

[listeners.iperf]
addr = "127.0.0.1:{p_iperf}"
protocol = "tcp"
upstream = "origin_iperf"

[upstreams.origin_http]
backends = ["127.0.0.1:{origin.http}"]

[upstreams.origin_iperf]
backends = ["127.0.0.1:{origin.iperf}"]
"""
    return Contender("ferryman", Ports(p_http, p_iperf), [start_ferryman(group, workdir, conf)])


def start(
    group: ProcessGroup, workdir: Path, names: list[str]
) -> tuple[list[Contender], list[Service]]:
    """Start the origin and every requested contender, then wait until their listeners accept."""
    origin, origin_services = start_origin(group, workdir)
    starters = {
        "direct": lambda: Contender("direct", origin),
        "nginx-stream": lambda: start_nginx_stream(group, workdir, origin),
        "haproxy": lambda: start_haproxy_tcp(group, workdir, origin),
        "ferryman": lambda: start_ferryman_tcp(group, workdir, origin),
    }
    contenders = [starters[n]() for n in names]
    settle_contenders(contenders, lambda c: [c.ports.http, c.ports.iperf])
    return contenders, origin_services


# --------------------------------------------------------------------------- measurements

def run_bulk(port: int, duration: int) -> dict[str, Any]:
    """iperf3 one stream for ``duration`` s; value = MB/s received by the server."""
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(duration), "-P", "1", "-J"]
    for attempt in range(3):
        proc = run_bounded(argv, timeout=duration + 30)
        try:
            data = json.loads(proc.stdout)
        except json.JSONDecodeError:
            data = {"error": (proc.stdout + proc.stderr).strip()[-300:] or f"rc={proc.returncode}"}
        err = data.get("error")
        if err and "busy" in str(err) and attempt < 2:  # server still finishing a previous test
            time.sleep(1.0)
            continue
        break
    if err:
        return {"value": None, "error": f"iperf3: {err}"}
    recv = data["end"]["sum_received"]
    return {
        "value": recv["bits_per_second"] / 8 / 1e6,
        "units": recv["bytes"],  # CPU is reported per GB of payload
        "seconds": recv["seconds"],
        "retransmits": data["end"].get("sum_sent", {}).get("retransmits"),
        "error": None,
    }


def measure(scenario: str, c: Contender, duration: int) -> dict[str, Any]:
    if scenario == "bulk":
        return run_bulk(c.ports.iperf, duration)
    return run_wrk(f"http://127.0.0.1:{c.ports.http}/small", duration, WRK_CONNS, WRK_THREADS,
                   close=scenario == "new-conn")


HARNESS = Harness(
    name="l4",
    title="L4 benchmark",
    heading="## L4 (TCP)",
    reference="nginx-stream",
    contenders=CONTENDERS,
    scenarios=SCENARIOS,
    tools=TOOLS,
    install_hint=INSTALL_HINT,
    start=start,
    measure=measure,
    check=check,
    meta={"wrk": {"threads": WRK_THREADS, "connections": WRK_CONNS}},
)


def main(argv: list[str] | None = None) -> int:
    return run_main(HARNESS, argv)


if __name__ == "__main__":
    entry(HARNESS)

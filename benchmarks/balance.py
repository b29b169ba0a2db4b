#!/usr/bin/env python3
"""Per-worker spread of connections and requests under load, for each accept balancing mode.

    python benchmarks/balance.py [--workers 2] [--duration 3]

For each ``balance`` mode, ferryman runs with ``workers`` workers and one http listener whose
route answers by itself (a ``mock`` filter: no origin, so only the proxy's accept path is
measured), logging ``$pid`` and ``$remote_port`` as JSON. wrk then runs twice: keep-alive
(-c50: the spread of 50 long connections matters) and a new connection per request (-c50
with ``Connection: close``: the spread of a stream of connections). The spread is counted from
the access log: requests and distinct client connections per worker.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ProcessGroup, find_tool, free_ports, run_bounded, start_ferryman, wait_ready  # noqa: E402

MODES = ("shared", "kernel", "port", "least_conn")


def conf(port: int, log: Path, mode: str, workers: int) -> str:
    return f"""
[server]
workers = {workers}
log_level = "warning"

[listeners.web]
addr = "127.0.0.1:{port}"
protocol = "http"
routes = ["all"]
balance = "{mode}"
access_log = "{log}"
access_log_format = ["pid", "remote_port"]

[routes.all]
filters = ["answer"]

[filters.answer]
kind = "mock"
body = "ok"
"""


def spread(log: Path) -> tuple[Counter, Counter]:
    """(requests per pid, distinct client connections per pid), shares of the total."""
    requests: Counter = Counter()
    connections: dict[int, set[int]] = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        requests[entry["pid"]] += 1
        connections.setdefault(entry["pid"], set()).add(entry["remote_port"])
    return requests, Counter({pid: len(ports) for pid, ports in connections.items()})


def shares(counts: Counter, workers: int) -> str:
    total = sum(counts.values()) or 1
    parts = sorted((100.0 * n / total for n in counts.values()), reverse=True)
    parts += [0.0] * (workers - len(parts))
    return " / ".join(f"{p:.0f}%" for p in parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=int, default=3)
    args = parser.parse_args()
    wrk = find_tool("wrk")
    if wrk is None:
        print("wrk is missing: bash benchmarks/install.sh", file=sys.stderr)
        return 2
    rows = []
    workdir = Path(f"/tmp/ferryman-balance-{int(time.time())}")
    workdir.mkdir(parents=True)
    for mode in MODES:
        for scenario, extra in (("keep-alive", []), ("new connection", ["-H", "Connection: close"])):
            (port,) = free_ports(1)
            log = workdir / f"{mode}-{scenario.replace(' ', '-')}.log"
            group = ProcessGroup(workdir)
            try:
                svc = start_ferryman(group, workdir, conf(port, log, mode, args.workers), name=f"balance-{mode}")
                wait_ready(svc, port)
                time.sleep(0.5)  # every worker up
                run_bounded([wrk, "-t1", "-c50", f"-d{args.duration}s", *extra, f"http://127.0.0.1:{port}/"], args.duration + 30)
            finally:
                group.stop_all()  # SIGTERM: the access log writers flush and close
            requests, connections = spread(log)
            rows.append((mode, scenario, sum(requests.values()), shares(requests, args.workers), sum(connections.values()), shares(connections, args.workers)))
    print(f"\n{args.workers} workers, wrk -t1 -c50 -d{args.duration}s\n")
    print("| balance | traffic | requests | requests per worker | connections | connections per worker |")
    print("|:---|:---|---:|:---|---:|:---|")
    for mode, scenario, total, req_share, conns, conn_share in rows:
        print(f"| {mode} | {scenario} | {total:,} | {req_share} | {conns:,} | {conn_share} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

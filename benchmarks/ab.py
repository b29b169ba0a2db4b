#!/usr/bin/env python3
"""Paired A/B of ferryman's CPU per request: two interpreters, or two source trees.

Both versions serve at once (each `ferryman run` on its own port, one upstream to an nginx
origin); short wrk runs alternate between them, and each run is measured by the CPU time
of its own proxy process. On a shared, noisy machine this pairs every measurement of A with
one of B taken seconds apart, which is what makes a 5-10% difference visible::

    python benchmarks/ab.py --a PYTHON[:SRC] --b PYTHON[:SRC] [--rounds 20] [--duration 2]

``PYTHON`` is an interpreter (``optimized``: the venv of ``install.sh --with-optimized-python``);
``SRC`` a source tree to import ferryman from (default: this checkout's ``src``), e.g. a
``git worktree`` of the commit to compare with. Prints each side's median CPU µs/request and
the median of the paired ratios B/A. Needs nginx and wrk (``bash benchmarks/install.sh``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the sys.path tweak
    REPO_DIR,
    ProcessGroup,
    free_ports,
    resolve_python,
    start_origin_nginx,
    wait_listening,
)

CONFIG = """[server]
workers = 1
log_level = "warning"
[listeners.bench]
addr = "127.0.0.1:{port}"
protocol = "http"
upstream = "origin"
[upstreams.origin]
backends = ["127.0.0.1:{origin}"]
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, seconds: int) -> int:
    out = subprocess.run(["wrk", "-t1", "-c50", f"-d{seconds}s", f"http://127.0.0.1:{port}/small"],
                         capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    return int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="PYTHON[:SRC] of version A")
    parser.add_argument("--b", required=True, help="PYTHON[:SRC] of version B")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--duration", type=int, default=2, help="seconds per wrk run")
    args = parser.parse_args(argv)
    sides = []
    for spec in (args.a, args.b):
        python, _, src = spec.partition(":")
        sides.append((resolve_python(python).path, Path(src or REPO_DIR / "src").resolve()))
    group = ProcessGroup(Path(os.environ.get("TMPDIR", "/tmp")) / f"ferryman-ab-{os.getpid()}")
    group.workdir.mkdir(parents=True, exist_ok=True)
    try:
        (origin,) = free_ports(1)
        start_origin_nginx(group, group.workdir, origin)
        procs = []
        for name, (python, src) in zip("ab", sides):
            (port,) = free_ports(1)
            config = group.workdir / f"{name}.toml"
            config.write_text(CONFIG.format(port=port, origin=origin))
            env = dict(os.environ, PYTHONPATH=str(src))
            proc = subprocess.Popen([python, "-m", "ferryman", "run", "-c", str(config)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append((proc, port))
        try:
            for proc, port in procs:
                wait_listening(port, timeout=15.0, alive=lambda p=proc: p.poll() is None)
                wrk(port, 1)  # warm: pool, code paths
            results: list[list[float]] = [[], []]
            for round_ in range(args.rounds):
                for index in (0, 1) if round_ % 2 == 0 else (1, 0):
                    proc, port = procs[index]
                    before = cpu_seconds(proc.pid)
                    requests = wrk(port, args.duration)
                    results[index].append((cpu_seconds(proc.pid) - before) / requests * 1e6)
        finally:
            for proc, _ in procs:
                proc.terminate()
                proc.wait(timeout=10)
    finally:
        group.stop_all()
    for name, spec, values in zip("AB", (args.a, args.b), results):
        print(f"{name} {spec}: median {statistics.median(values):.1f} CPU µs/request over {len(values)} runs")
    ratio = statistics.median(b / a for a, b in zip(*results))
    print(f"paired ratio B/A (median of {args.rounds}): {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

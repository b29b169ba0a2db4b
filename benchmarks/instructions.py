#!/usr/bin/env python3
"""Instructions per request of one proxy process, counted by callgrind: a measure that the
machine's noise does not move (about 1% between runs), for changes too small for the
interleaved req/s and CPU-time harnesses to see::

    python benchmarks/instructions.py --python PYTHON[:SRC] [--floor] [--mode h1|h2|conn|tls] [--requests N]

The proxy (``ferryman run`` importing from ``SRC``, default this checkout's ``src``; or
``floor_proxy.py`` with ``--floor``) runs under ``valgrind --tool=callgrind`` with one
upstream, an nginx origin. After a warm-up of a quarter of ``N`` requests the counters are
zeroed, ``N`` requests are made with h2load, and the counters are dumped:

- ``h1``: HTTP/1.1 keep-alive, ``h2load --h1 -c10``, GET /small;
- ``h2``: HTTP/2 over TLS, ``h2load -c10 -m10`` (what ``tls.py``'s h2-small runs);
- ``conn``: a new connection per request (batches of ten h2load clients, one request each);
- ``tls``: the same over TLS: a handshake per request.

Prints the instructions per request and the dump's path (``callgrind_annotate`` reads it).
Instructions are not time (a cache miss costs more than an instruction; crypto runs many
per cycle): compare like with like, and confirm with ``tls.py``/``l7.py``/``ab.py``. Needs
valgrind, nginx and h2load (nghttp2-client).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the sys.path tweak
    BENCH_DIR,
    REPO_DIR,
    ProcessGroup,
    free_ports,
    resolve_python,
    start_origin_nginx,
    wait_listening,
)
from ab import CONFIG  # noqa: E402 - the same one-listener config as the paired A/B
from tls import make_certificate  # noqa: E402


def config(port: int, origin: int, tls: tuple[Path, Path] | None) -> str:
    """``ab.py``'s config; with ``tls`` (certificate, key), its listener terminates TLS."""
    text = CONFIG.format(port=port, origin=origin)
    if tls is None:
        return text
    text = text.replace('upstream = "origin"\n', 'upstream = "origin"\ntls = ["bench"]\n', 1)
    return text + f'[certificates.bench]\ncert = "{tls[0]}"\nkey = "{tls[1]}"\n'


def load(mode: str, port: int, count: int) -> int:
    """Make ``count`` requests; returns how many succeeded."""
    if mode in ("tls", "conn"):
        scheme = "https" if mode == "tls" else "http"
        return sum(load_once(["--h1", "-c10", "-n10"], f"{scheme}://127.0.0.1:{port}/small") for _ in range(count // 10))
    if mode == "h2":
        return load_once(["-c10", "-m10", f"-n{count}"], f"https://127.0.0.1:{port}/small")
    return load_once(["--h1", "-c10", f"-n{count}"], f"http://127.0.0.1:{port}/small")


def load_once(options: list[str], url: str) -> int:
    out = subprocess.run(["h2load", "-t1", *options, url], capture_output=True, text=True, timeout=900).stdout
    found = re.search(r"(\d+) succeeded", out)
    return int(found.group(1)) if found else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", default="optimized", help="PYTHON[:SRC], as ab.py (default: optimized)")
    p.add_argument("--floor", action="store_true", help="count benchmarks/floor_proxy.py instead of ferryman")
    p.add_argument("--mode", choices=("h1", "h2", "conn", "tls"), default="h1")
    p.add_argument("--requests", type=int, default=2000, help="requests counted (default 2000)")
    args = p.parse_args()
    python, _, src = args.python.partition(":")
    interpreter = resolve_python(python).path
    workdir = Path(tempfile.mkdtemp(prefix="ferryman-instructions-"))
    group = ProcessGroup(workdir, python=str(interpreter))
    try:
        (origin,) = free_ports(1)
        start_origin_nginx(group, workdir, origin)
        (port,) = free_ports(1)
        cert, key, _ = make_certificate(workdir)
        if args.floor:
            argv = [str(interpreter), str(BENCH_DIR / "floor_proxy.py"), "--listen", f"127.0.0.1:{port}", "--origin", f"127.0.0.1:{origin}"]
            if args.mode in ("h2", "tls"):
                argv += ["--cert", str(cert), "--key", str(key)]
            env = dict(os.environ)
        else:
            path = workdir / "ferryman.toml"
            path.write_text(config(port, origin, (cert, key) if args.mode in ("h2", "tls") else None))
            argv = [str(interpreter), "-m", "ferryman", "run", "-c", str(path)]
            env = dict(os.environ, PYTHONPATH=src or str(REPO_DIR / "src"))
        dump = workdir / "callgrind.out"
        svc = group.start("proxy", ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}.%p", *argv], env=env, cwd=workdir)
        wait_listening(port, timeout=120.0)
        load(args.mode, port, max(200, args.requests // 4))
        time.sleep(1)
        subprocess.run(["callgrind_control", "-z", str(svc.proc.pid)], capture_output=True, check=True)
        done = load(args.mode, port, args.requests)
        subprocess.run(["callgrind_control", "-d", str(svc.proc.pid)], capture_output=True, check=True)
        time.sleep(1)
        (part,) = workdir.glob("callgrind.out.*.1")
        total = next(int(line.split()[1]) for line in part.read_text().splitlines() if line.startswith(("summary:", "totals:")))
        name = "floor_proxy.py" if args.floor else f"ferryman ({src or 'src'})"
        print(f"{args.mode}: {name}: {done} requests, {total / max(done, 1):,.0f} instructions per request  ({part})")
        return 0 if done else 1
    finally:
        group.stop_all()


if __name__ == "__main__":
    sys.exit(main())

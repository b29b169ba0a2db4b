#!/usr/bin/env python3
"""HTTP/1.1 benchmark: ferryman vs nginx vs haproxy (reverse proxies) vs a direct baseline.

One command, from the repo root::

    python benchmarks/l7.py [--rounds N] [--duration S] [--quick] [--contenders a,b]
                            [--scenarios a,b] [--with-floor] [--with-mitmproxy]
                            [--with-ferryman-2w] [--with-nginx-2w] [--with-floor-2w]
                            [--python PATH|optimized] [--write-results]

An nginx origin serves ``/small`` (100-byte body) and ``/1m`` (a 1 MiB file) for the whole
benchmark; every contender is a reverse proxy with one worker and a keep-alive pool to the
origin. Before measuring, one GET of each path through each contender must return 200 and
the exact body, else that contender is reported as failed and skipped. Rounds are interleaved
(round -> scenario -> contender, contender order rotated each round); ratios are medians of
per-round paired ratios. The origin's ``stub_status`` counters, read around each run, give
the connections it accepted and the share of requests that came on a reused connection.

Two contenders run in small-keepalive only: ``ferryman-routes`` (the config-driven gateway
with three routes and a ``headers`` filter, against the single-upstream ``ferryman``) and,
with ``--with-mitmproxy``, ``mitmdump`` in reverse mode, on ferryman's interpreter.

With ``--with-floor``, ``python-floor`` (``floor_proxy.py``: the least a Python proxy spends
per request on this interpreter) runs in every scenario, on ferryman's interpreter, and gets
a table of its own: how much ferryman costs above that floor, and how far the floor is from
nginx. ``--python`` chooses that interpreter (``optimized``: the distribution's PGO+LTO build,
see ``install.sh --with-optimized-python``).

Two workers, small-keepalive only: ``--with-ferryman-2w`` (``workers = 2``, reuseport
balancing), ``--with-nginx-2w`` (``worker_processes 2``) and ``--with-floor-2w``
(``python-floor-2w``: ``floor_proxy.py --workers 2``, one SO_REUSEPORT socket per process),
each with a table against nginx-2w: whether ferryman, and any Python proxy at all, reaches
nginx with two workers here.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # keep benchmarks/ free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))

# imported after the sys.path tweak that makes it importable
from common import (
    OPTIMIZED_VENV,
    SMALL_BODY,
    Comparison,
    Contender,
    CostComparison,
    Harness,
    Interpreter,
    ProcessGroup,
    Scenario,
    Service,
    entry,
    find_tool,
    fmt_int,
    fmt_pct,
    free_ports,
    http_get,
    http_get_full,
    interpreter_info,
    nginx_http_block,
    nginx_main_block,
    run_wrk,
    settle_contenders,
    start_ferryman,
    start_floor_proxy,
    start_haproxy,
    start_nginx,
    start_origin_nginx,
    tool_version,
)
from common import main as run_main

CONTENDERS = ("direct", "ferryman", "nginx", "haproxy", "ferryman-routes")
TOOLS = ("nginx", "haproxy", "wrk")
INSTALL_HINT = "apt-get install -y nginx haproxy wrk   (or: bash benchmarks/install.sh)"
LARGE_BODY = bytes(range(256)) * 4096  # 1 MiB, served at /1m
EXPECTED = {"/small": SMALL_BODY.encode(), "/1m": LARGE_BODY}
STATUS_PATH = "/__origin_status"  # the origin's stub_status (connection and request counters)
# mitmdump: $MITMDUMP, else the one on PATH or in the venvs `install.sh --with-mitmproxy`
# creates (of python3; with --with-optimized-python, of /usr/bin/python3) whose interpreter is
# ferryman's
MITM_VENV = Path(os.environ.get("MITMPROXY_VENV", "/tmp/ferryman-bench-mitmproxy"))
MITM_OPTIMIZED_VENV = Path(
    os.environ.get("MITMPROXY_OPTIMIZED_VENV", "/tmp/ferryman-bench-mitmproxy-optimized"))
MITM_HINT = "bash benchmarks/install.sh --with-mitmproxy   (a venv of its own: its pins " \
    "conflict with ferryman's dependencies)"
# contenders measured in one scenario only, for one comparison
ONLY_SMALL = ("small-keepalive",)

# scenario -> (path, wrk connections, Connection: close)
WRK_RUNS = {
    "small-keepalive": ("/small", 50, False),
    "large": ("/1m", 10, False),
    "new-conn": ("/small", 50, True),
}
# origin-side columns: new connections it accepted during the run, and the share of its
# requests that came on an already open connection (upstream reuse; for direct: wrk's own)
ORIGIN_COLS = (("origin conns", "origin_conns", fmt_int), ("upstream reuse", "reuse", fmt_pct))
CPU = {"cpu_unit": "CPU µs/req", "cpu_per": 1e6}
SCENARIOS = {
    "small-keepalive": Scenario(
        f"wrk -t1 -c50, GET /small ({len(SMALL_BODY)}-byte body), keep-alive", "req/s",
        extra=ORIGIN_COLS, **CPU,
    ),
    "large": Scenario(
        "wrk -t1 -c10, GET /1m (1 MiB body), keep-alive", "req/s",
        extra=(("median MB/s", "mb_s"), *ORIGIN_COLS), **CPU,
    ),
    "new-conn": Scenario(
        "wrk -t1 -c50 -H 'Connection: close', GET /small: a new client connection per "
        "request (the proxy may reuse its upstream connections)",
        "req/s", extra=ORIGIN_COLS, **CPU,
    ),
}
NOTES = (
    (
        "Targets (issue): small-keepalive ≥ 0.8x nginx; ferryman ≥ 20x mitmproxy "
        "(--with-mitmproxy); large (1 MiB) and new-conn: see the issue (the ratios are below)."
    ),
    (
        "Proxies: nginx `proxy_pass` to an `upstream` with `keepalive 64`, HTTP/1.1, "
        "`proxy_buffering on`; haproxy `mode http`, `http-reuse always`; ferryman one http "
        "listener, one upstream (`upstream = ...`); ferryman-routes (small-keepalive only) the "
        "same listener with `routes = [...]`, see its table; python-floor (--with-floor) "
        "`benchmarks/floor_proxy.py`, see its table (python-floor-2w, --with-floor-2w: the "
        "same with `--workers 2`, small-keepalive only). MB/s is wrk's bytes read "
        "(headers included)."
    ),
    (
        "origin conns: connections the origin accepted during the run (median); upstream "
        "reuse: 1 − origin connections / origin requests (from its `stub_status`)."
    ),
)
ROUTES_NOTE = (
    "ferryman-routes: `ferryman run -c CONFIG`, one http listener with `routes = [\"api\", "
    "\"assets\", \"site\"]`: `api` (path `/api`, methods GET/POST), `assets` (path "
    "`~^/assets/.+\\.(css|js)$`), `site` (path `/`, `filters = [\"hdr\"]`, a `headers` filter "
    "with one `request_set` and one `response_add`); /small matches `site`. ferryman: the "
    "same listener with `upstream = \"origin\"` instead of routes."
)
MITM_NOTE = (
    "mitmproxy: `mitmdump --mode reverse:http://127.0.0.1:ORIGIN --listen-host 127.0.0.1 "
    "--listen-port PORT -q --set confdir=TMP` (in a venv of its own, "
    "`bash benchmarks/install.sh --with-mitmproxy`, of ferryman's interpreter: see the "
    "Versions line); only with `--with-mitmproxy`. Issue target: ferryman ≥ 20x mitmproxy."
)
WORKERS_NOTE = (
    "ferryman-2w: `[server] workers = 2`, the listener `balance = \"kernel\"` (one SO_REUSEPORT "
    "socket per worker); nginx-2w: `worker_processes 2`. Both only with --with-ferryman-2w "
    "--with-nginx-2w. Issue target: ferryman-2w ≥ 1.0x nginx-2w. wrk, the origin and the "
    "proxies share the machine's 2 cores."
)
FLOOR_NOTE = (
    "python-floor: `benchmarks/floor_proxy.py` on ferryman's interpreter, only with "
    "`--with-floor`: uvloop, asyncio Protocols, httptools request and response parsers, one "
    "LIFO keep-alive pool to the origin, response bytes passed through as received; no hooks, "
    "routing, filters, timeouts, logging or validation beyond llhttp's. It is the floor of a "
    "Python proxy on this interpreter, not a product: `ferryman CPU µs/req above python-floor` is "
    "what ferryman's features cost per request above it, `python-floor vs nginx` how close "
    "any Python proxy on this interpreter can come to nginx."
)
FLOOR_WORKERS_NOTE = (
    "python-floor-2w: `benchmarks/floor_proxy.py --workers 2` on ferryman's interpreter, only "
    "with `--with-floor-2w`: two processes, each with its own SO_REUSEPORT socket on the same "
    "port (the kernel spreads connections, like ferryman's `balance = \"kernel\"`), event loop "
    "and keep-alive pool; proxy CPU counts both workers and their parent. Against nginx-2w "
    "(`--with-nginx-2w`) it shows whether any Python proxy with two processes reaches nginx with "
    "two workers on this machine, i.e. the most the ferryman-2w ≥ 1.0x nginx-2w target can "
    "get here. wrk, the origin and the proxies share the machine's 2 cores."
)
COMPARISONS = (
    CostComparison("ferryman vs the Python floor", "ferryman", "python-floor", "nginx",
                   (FLOOR_NOTE,)),
    Comparison("product gateway: routes + headers filter vs one upstream", "small-keepalive",
               "ferryman-routes", "ferryman", (ROUTES_NOTE,)),
    Comparison("ferryman vs mitmproxy (reverse mode)", "small-keepalive", "ferryman",
               "mitmproxy", (MITM_NOTE,)),
    Comparison("two workers: ferryman vs nginx", "small-keepalive", "ferryman-2w", "nginx-2w",
               (WORKERS_NOTE,)),
    Comparison("ferryman: two workers vs one", "small-keepalive", "ferryman-2w", "ferryman",
               (WORKERS_NOTE,)),
    Comparison("two workers: python-floor vs nginx", "small-keepalive", "python-floor-2w",
               "nginx-2w", (FLOOR_WORKERS_NOTE,)),
)


# --------------------------------------------------------------------------- setup


def start_nginx_proxy(group: ProcessGroup, workdir: Path, origin: int, workers: int = 1) -> Contender:
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
    name = "nginx" if workers == 1 else f"nginx-{workers}w"
    conf = nginx_main_block(workdir, name, workers) + nginx_http_block(workdir, name, body)
    return Contender(name, port, [start_nginx(group, workdir, name, conf)], scenarios=None if workers == 1 else ONLY_SMALL)


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


def ferryman_conf(port: int, origin: int, target: str, workers: int = 1) -> str:
    """A ferryman config: an http listener on ``port`` whose ``target`` lines (``upstream =
    ...`` or ``routes = [...]``) say where requests go; with workers, reuseport balancing."""
    return f"""
[server]
workers = {workers}
log_level = "warning"

[listeners.http]
addr = "127.0.0.1:{port}"
protocol = "http"
balance = "{'kernel' if workers > 1 else 'shared'}"
{target}

[upstreams.origin]
backends = ["127.0.0.1:{origin}"]
"""


# the product path: three routes, the matched one (`site`, for /small and /1m) with a filter
ROUTES = r"""routes = ["api", "assets", "site"]

[routes.api]
path = "/api"
methods = ["GET", "POST"]
upstream = "origin"

[routes.assets]
path = '~^/assets/.+\.(css|js)$'  # TOML literal string: no escapes
upstream = "origin"

[routes.site]
path = "/"
upstream = "origin"
filters = ["hdr"]

[filters.hdr]
kind = "headers"
request_set = { "X-Bench" = "1" }
response_add = { "X-Served-By" = "ferryman" }
"""
ROUTES_MARK = b"\r\nx-served-by: ferryman"  # the `site` route's filter ran


def start_ferryman_http(group: ProcessGroup, workdir: Path, origin: int) -> Contender:
    (port,) = free_ports(1)
    conf = ferryman_conf(port, origin, 'upstream = "origin"')
    return Contender("ferryman", port, [start_ferryman(group, workdir, conf)])


def start_ferryman_workers(group: ProcessGroup, workdir: Path, origin: int, workers: int) -> Contender:
    (port,) = free_ports(1)
    conf = ferryman_conf(port, origin, 'upstream = "origin"', workers)
    name = f"ferryman-{workers}w"
    return Contender(name, port, [start_ferryman(group, workdir, conf, name=name)], scenarios=ONLY_SMALL)


def start_ferryman_routes(group: ProcessGroup, workdir: Path, origin: int) -> Contender:
    (port,) = free_ports(1)
    conf = ferryman_conf(port, origin, ROUTES)
    svc = start_ferryman(group, workdir, conf, name="ferryman-routes")
    return Contender("ferryman-routes", port, [svc], scenarios=ONLY_SMALL)


def start_python_floor(group: ProcessGroup, origin: int, workers: int = 1) -> Contender:
    (port,) = free_ports(1)
    if workers == 1:
        return Contender("python-floor", port, [start_floor_proxy(group, port, origin)])
    # one service: the parent; cpu_seconds() sums its process tree, i.e. every worker too
    name = f"python-floor-{workers}w"
    svc = start_floor_proxy(group, port, origin, name=name, extra=("--workers", str(workers)))
    return Contender(name, port, [svc], scenarios=ONLY_SMALL)


def mitmdump_found() -> list[str]:
    """Every mitmdump there is: on PATH and in the two venvs ``install.sh`` makes."""
    paths = [find_tool("mitmdump"),
             *(str(venv / "bin" / "mitmdump") for venv in (MITM_VENV, MITM_OPTIMIZED_VENV))]
    return list(dict.fromkeys(p for p in paths if p and os.access(p, os.X_OK)))


def script_python(script: str) -> str | None:
    """The interpreter of a pip-installed console script, from its ``#!`` line."""
    try:
        with open(script, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    words = first[2:].decode(errors="replace").split() if first.startswith(b"#!") else []
    return words[0] if words and "python" in Path(words[0]).name else None


def same_interpreter(a: str | None, b: str) -> bool:
    """Whether interpreters ``a`` and ``b`` run the same binary (venvs seen through)."""
    if a is None:
        return False
    ia, ib = interpreter_info(a), interpreter_info(b)
    return "error" not in ia and "error" not in ib and \
        ia["base_executable"] == ib["base_executable"]


def choose_mitmdump(python: Interpreter) -> tuple[str | None, str | None]:
    """(mitmdump, None) or (None, why not). $MITMDUMP if set; else the first mitmdump whose
    interpreter is ferryman's; else, if ``--python`` was not given, the first found.

    With ``--python``, mitmproxy and ferryman must run on the same interpreter: the CPU a
    Python proxy spends depends a lot on the CPython build.
    """
    if os.environ.get("MITMDUMP"):
        return os.environ["MITMDUMP"], None
    found = mitmdump_found()
    for path in found:
        if same_interpreter(script_python(path), python.path):
            return path, None
    if found and not python.explicit:
        return found[0], None
    if Path(python.path) == OPTIMIZED_VENV / "bin" / "python":
        hint = "bash benchmarks/install.sh --with-optimized-python --with-mitmproxy"
    else:
        hint = (f"PYTHON={python.path} MITMPROXY_VENV=DIR bash benchmarks/install.sh "
                "--with-mitmproxy, then run with the same MITMPROXY_VENV (or set MITMDUMP)")
    seen = ", ".join(f"{p} ({script_python(p) or 'interpreter unknown'})" for p in found)
    return None, (f"mitmproxy requested but no mitmdump runs on ferryman's interpreter "
                  f"{python.path}{' (found: ' + seen + ')' if seen else ''}\n"
                  f"install with: {hint}")


def start_mitmproxy(group: ProcessGroup, workdir: Path, origin: int) -> Contender:
    (port,) = free_ports(1)
    # check() refused an explicit --python without a matching mitmdump: same choice here
    mitmdump, _ = choose_mitmdump(Interpreter(group.python))
    argv = [mitmdump or "mitmdump", "--mode", f"reverse:http://127.0.0.1:{origin}",
            "--listen-host", "127.0.0.1", "--listen-port", str(port), "-q",
            "--set", f"confdir={workdir / 'mitmproxy'}"]  # its CA files stay in the temp dir
    return Contender("mitmproxy", port, [group.start("mitmproxy", argv)], scenarios=ONLY_SMALL)


def verify_routes(c: Contender) -> str | None:
    """:func:`verify`, and the matched route's ``headers`` filter must have run."""
    problem = verify(c)
    if problem:
        return problem
    try:
        _status, head, _body = http_get_full(c.ports, "/small")
    except (OSError, ValueError) as exc:
        return f"GET /small through it failed: {type(exc).__name__}: {exc}"
    if ROUTES_MARK not in head.lower():
        return f"GET /small: no X-Served-By from the `site` route's filter in {head[:300]!r}"
    return None


def check_verify(c: Contender) -> str | None:
    return verify_routes(c) if c.name == "ferryman-routes" else verify(c)


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
        }}
        location = {STATUS_PATH} {{
            stub_status;
        }}"""
    origin = start_origin_nginx(group, workdir, origin_port, locations)
    ORIGIN["port"] = origin_port
    starters = {
        "direct": lambda: Contender("direct", origin_port),
        "nginx": lambda: start_nginx_proxy(group, workdir, origin_port),
        "haproxy": lambda: start_haproxy_http(group, workdir, origin_port),
        "ferryman": lambda: start_ferryman_http(group, workdir, origin_port),
        "ferryman-routes": lambda: start_ferryman_routes(group, workdir, origin_port),
        "mitmproxy": lambda: start_mitmproxy(group, workdir, origin_port),
        "python-floor": lambda: start_python_floor(group, origin_port),
        "ferryman-2w": lambda: start_ferryman_workers(group, workdir, origin_port, 2),
        "nginx-2w": lambda: start_nginx_proxy(group, workdir, origin_port, 2),
        "python-floor-2w": lambda: start_python_floor(group, origin_port, 2),
    }
    contenders = [starters[n]() for n in names]
    settle_contenders(contenders, lambda c: [c.ports], check_verify)
    return contenders, [origin]


ORIGIN: dict[str, int] = {}  # "port" of the running origin, set by start()
STUB_COUNTERS = re.compile(rb"requests\s+(\d+)\s+(\d+)\s+(\d+)")


def origin_counters() -> tuple[int, int]:
    """(connections accepted, requests) so far, from the origin's stub_status; each read is
    one connection and one request itself."""
    status, body = http_get(ORIGIN["port"], STATUS_PATH)
    m = STUB_COUNTERS.search(body)
    if status != 200 or not m:
        raise ValueError(f"origin stub_status: {status} {body[:200]!r}")
    return int(m.group(1)), int(m.group(3))


def measure(scenario: str, c: Contender, duration: int) -> dict[str, Any]:
    path, conns, close = WRK_RUNS[scenario]
    accepts0, requests0 = origin_counters()
    rec = run_wrk(f"http://127.0.0.1:{c.ports}{path}", duration, conns, close=close)
    accepts1, requests1 = origin_counters()
    # minus the second status read's own connection and request
    new_conns, requests = accepts1 - accepts0 - 1, requests1 - requests0 - 1
    rec.update(origin_conns=new_conns, origin_requests=requests, reuse=reuse(new_conns, requests))
    return rec


def reuse(new_conns: int, requests: int) -> float | None:
    """Share of ``requests`` that came on an already open connection. At least 0: with a
    connection per request (direct new-conn) wrk's address probe and the connections cut at
    the end of the run, accepted without a request, would push it just below."""
    return max(0.0, 1 - new_conns / requests) if requests > 0 else None


def check(names: list[str], python: Interpreter) -> str | None:
    """Why the requested contenders cannot run here (no mitmdump on ferryman's
    interpreter), or None."""
    if "mitmproxy" not in names:
        return None
    mitmdump, problem = choose_mitmdump(python)
    if mitmdump is None and problem is None:
        return f"mitmproxy requested but no mitmdump found\ninstall with: {MITM_HINT}"
    return problem


def extra_versions(names: list[str], python: Interpreter) -> dict[str, str]:
    """mitmproxy's version and the interpreter its mitmdump runs on."""
    if "mitmproxy" not in names:
        return {}
    mitmdump = choose_mitmdump(python)[0] or "mitmdump"
    version = tool_version([mitmdump, "--version"])
    py = script_python(mitmdump)
    info = interpreter_info(py) if py else {"error": "no #! line"}
    if "error" in info:
        return {"mitmproxy": f"{version} (`{mitmdump}`, its interpreter unknown)"}
    same = same_interpreter(py, python.path)
    return {"mitmproxy": (
        f"{version} (`{mitmdump}` on {info['base_executable']}, {info['implementation']} "
        f"{info['version']}: "
        f"{'the same interpreter as ferryman' if same else 'NOT the interpreter of ferryman'})")}


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
    check=check,
    notes=NOTES,
    meta={"wrk": {"threads": 1, "runs": WRK_RUNS}, "ferryman_routes": ROUTES},
    optional={
        "mitmproxy": "mitmdump in reverse mode, small-keepalive only",
        "ferryman-2w": "ferryman with 2 workers (reuseport balancing), small-keepalive only",
        "nginx-2w": "nginx with 2 worker processes, small-keepalive only",
        "python-floor": "benchmarks/floor_proxy.py, the floor of a Python proxy on ferryman's "
                        "interpreter, in every scenario",
        "python-floor-2w": "benchmarks/floor_proxy.py --workers 2 (an SO_REUSEPORT socket per "
                           "process), small-keepalive only; its table is against nginx-2w",
    },
    optional_flags={"python-floor": "floor", "python-floor-2w": "floor-2w"},
    comparisons=COMPARISONS,
    extra_versions=extra_versions,
)


def main(argv: list[str] | None = None) -> int:
    return run_main(HARNESS, argv)


if __name__ == "__main__":
    entry(HARNESS)

#!/usr/bin/env python3
"""L4 (TCP) benchmark: ferryman vs nginx stream vs haproxy vs a direct baseline.

One command, from the repo root::

    python benchmarks/l4.py [--rounds N] [--duration S] [--quick] [--contenders a,b]
                            [--write-results]

An nginx origin (``/small``, ~100-byte body) and an ``iperf3 -s`` server run for the whole
benchmark; every contender is a TCP forwarder with one listener per origin port. Rounds are
interleaved (round -> scenario -> contender, contender order rotated each round) so drift on
a shared machine hits everyone alike. Ratios are medians of per-round paired ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # keep benchmarks/ free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the sys.path tweak that makes it importable
    BENCH_DIR,
    REPO_DIR,
    ProcessGroup,
    Service,
    command_line,
    cpu_seconds,
    find_tool,
    fmt_num,
    fmt_ratio,
    free_ports,
    machine_info,
    markdown_table,
    median,
    missing_tools,
    paired_ratio,
    replace_section,
    run_bounded,
    save_json,
    today,
    tool_version,
    wait_listening,
)

CONTENDERS = ("direct", "ferryman", "nginx-stream", "haproxy")
SCENARIOS = ("bulk", "small-keepalive", "new-conn")
TOOLS = ("nginx", "haproxy", "wrk", "iperf3")
INSTALL_HINT = (
    "apt-get install -y nginx libnginx-mod-stream haproxy wrk iperf3"
    "   (or: bash benchmarks/install.sh)"
)
WRK_THREADS, WRK_CONNS = 1, 50
SMALL_BODY = "ferryman-benchmark-" + "x" * 80 + "\n"  # 100 bytes
SETTLE_S = 0.5  # pause between measurements so the previous run's sockets finish closing
RESULTS_HEADING = "## L4 (TCP)"

SCENARIO_INFO = {
    "bulk": ("iperf3 -P 1, one stream client→server", "MB/s", "CPU-s/GB"),
    "small-keepalive": (
        f"wrk -t{WRK_THREADS} -c{WRK_CONNS}, GET /small ({len(SMALL_BODY)}-byte body), keep-alive",
        "req/s",
        "CPU-s/1k req",
    ),
    "new-conn": (
        f"wrk -t{WRK_THREADS} -c{WRK_CONNS} -H 'Connection: close': a new TCP connection "
        "through the proxy per request",
        "req/s",
        "CPU-s/1k req",
    ),
}


class SetupError(RuntimeError):
    """A server or contender could not be started."""


@dataclass
class Ports:
    """Where a client connects for each scenario family."""

    http: int
    iperf: int


@dataclass
class Contender:
    """A forwarder under test; ``services`` are the processes whose CPU is the proxy's CPU."""

    name: str
    ports: Ports
    services: list[Service] = field(default_factory=list)

    def dead(self) -> Service | None:
        return next((s for s in self.services if not s.alive()), None)


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


def nginx_main_block(workdir: Path, name: str) -> str:
    """Top of an nginx.conf for a foreground, single-worker instance living in ``workdir``."""
    return f"""
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log warn;
events {{ worker_connections 8192; }}
"""


def start_nginx(group: ProcessGroup, workdir: Path, name: str, conf: str) -> Service:
    path = workdir / f"{name}.conf"
    path.write_text(conf)
    nginx = find_tool("nginx") or "nginx"
    return group.start(
        name, [nginx, "-p", str(workdir), "-c", str(path), "-e", f"{workdir}/{name}-error.log"]
    )


def start_origin(group: ProcessGroup, workdir: Path) -> tuple[Ports, list[Service]]:
    """nginx serving /small and an iperf3 server, each on a free port."""
    http_port, iperf_port = free_ports(2)
    tmp = workdir / "origin-tmp"
    tmp.mkdir()
    conf = nginx_main_block(workdir, "origin") + f"""
http {{
    access_log off;
    keepalive_requests 100000;
    keepalive_timeout 60s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{http_port} backlog=4096;
        location = /small {{
            default_type text/plain;
            return 200 "{SMALL_BODY.rstrip(chr(10))}\\n";
        }}
    }}
}}
"""
    nginx = start_nginx(group, workdir, "origin", conf)
    iperf = group.start(
        "origin-iperf3",
        [find_tool("iperf3") or "iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf_port)],
    )
    ports = Ports(http_port, iperf_port)
    wait_ready(nginx, ports.http)
    wait_ready(iperf, ports.iperf)
    return ports, [nginx, iperf]


def start_nginx_stream(
    group: ProcessGroup, workdir: Path, origin: Ports, load_line: str
) -> Contender:
    p_http, p_iperf = free_ports(2)
    conf = load_line + "\n" + nginx_main_block(workdir, "nginx-stream") + f"""
stream {{
    server {{ listen 127.0.0.1:{p_http} backlog=4096; proxy_pass 127.0.0.1:{origin.http}; }}
    server {{ listen 127.0.0.1:{p_iperf}; proxy_pass 127.0.0.1:{origin.iperf}; }}
}}
"""
    svc = start_nginx(group, workdir, "nginx-stream", conf)
    return Contender("nginx-stream", Ports(p_http, p_iperf), [svc])


def start_haproxy(group: ProcessGroup, workdir: Path, origin: Ports) -> Contender:
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
    path = workdir / "haproxy.cfg"
    path.write_text(conf)
    svc = group.start("haproxy", [find_tool("haproxy") or "haproxy", "-db", "-f", str(path)])
    return Contender("haproxy", Ports(p_http, p_iperf), [svc])


def start_ferryman(group: ProcessGroup, workdir: Path, origin: Ports) -> Contender:
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
    path = workdir / "ferryman.toml"
    path.write_text(conf)
    env = dict(os.environ)
    src = str(REPO_DIR / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    svc = group.start(
        "ferryman", [sys.executable, "-m", "ferryman", "run", "-c", str(path)], env=env
    )
    return Contender("ferryman", Ports(p_http, p_iperf), [svc])


def wait_ready(svc: Service, port: int, timeout: float = 15.0) -> None:
    try:
        wait_listening(port, timeout=timeout, alive=svc.alive)
    except RuntimeError as exc:
        raise SetupError(f"{svc.name}: {exc}\n--- {svc.log_path} ---\n{svc.log_tail()}") from exc


def start_contenders(
    group: ProcessGroup, workdir: Path, names: list[str], origin: Ports, load_line: str
) -> list[Contender]:
    """Start every requested contender, then wait until all their listeners accept."""
    out = []
    for name in names:
        if name == "direct":
            out.append(Contender("direct", origin))
        elif name == "nginx-stream":
            out.append(start_nginx_stream(group, workdir, origin, load_line))
        elif name == "haproxy":
            out.append(start_haproxy(group, workdir, origin))
        elif name == "ferryman":
            out.append(start_ferryman(group, workdir, origin))
    for c in out:
        for svc in c.services:
            wait_ready(svc, c.ports.http)
            wait_ready(svc, c.ports.iperf)
    return out


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


WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def run_wrk(port: int, duration: int, close: bool) -> dict[str, Any]:
    """wrk against /small; value = req/s; socket errors and non-2xx/3xx counts are kept."""
    argv = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNS}", f"-d{duration}s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}/small")
    proc = run_bounded(argv, timeout=duration + 30)
    out = proc.stdout
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if proc.returncode != 0 or not rps or not total:
        return {"value": None, "error": f"wrk rc={proc.returncode}: {(out + proc.stderr)[-300:]}"}
    m = WRK_ERRORS.search(out)
    socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m \
        else {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    return {
        "value": float(rps.group(1)),
        "units": int(total.group(1)),  # CPU is reported per 1000 requests
        "socket_errors": socket_errors,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "error": None,
    }


def measure(scenario: str, port_set: Ports, duration: int) -> dict[str, Any]:
    if scenario == "bulk":
        return run_bulk(port_set.iperf, duration)
    return run_wrk(port_set.http, duration, close=scenario == "new-conn")


def describe_errors(rec: dict[str, Any]) -> str:
    """Non-zero wrk error counters of one measurement, e.g. 'read 3, non-2xx 1' ('' if none)."""
    parts = [f"{k} {v}" for k, v in rec.get("socket_errors", {}).items() if v]
    if rec.get("non2xx"):
        parts.append(f"non-2xx {rec['non2xx']}")
    return ", ".join(parts)


def run_rounds(
    contenders: list[Contender],
    origin_services: list[Service],
    scenarios: list[str],
    rounds: int,
    duration: int,
) -> list[dict[str, Any]]:
    records = []
    n = len(contenders)
    origin_pids = [s.pid for s in origin_services]
    for rnd in range(1, rounds + 1):
        order = contenders[(rnd - 1) % n :] + contenders[: (rnd - 1) % n]
        for scenario in scenarios:
            for c in order:
                dead = c.dead() or next((s for s in origin_services if not s.alive()), None)
                pids = [s.pid for s in c.services]
                if dead:
                    rec: dict[str, Any] = {
                        "value": None,
                        "error": f"{dead.name} exited: {dead.log_tail(5)}",
                    }
                    cpu = origin_cpu = None
                else:
                    time.sleep(SETTLE_S)
                    cpu0, ocpu0 = cpu_seconds(pids), cpu_seconds(origin_pids)
                    try:
                        rec = measure(scenario, c.ports, duration)
                    except Exception as exc:  # noqa: BLE001 - a failed run is reported, not fatal
                        rec = {"value": None, "error": f"{type(exc).__name__}: {exc}"}
                    cpu = cpu_seconds(pids) - cpu0 if pids else None
                    origin_cpu = cpu_seconds(origin_pids) - ocpu0
                rec.update(
                    round=rnd,
                    scenario=scenario,
                    contender=c.name,
                    proxy_cpu_s=cpu,
                    origin_cpu_s=origin_cpu,
                )
                records.append(rec)
                print_progress(rec)
    return records


def print_progress(rec: dict[str, Any]) -> None:
    unit = SCENARIO_INFO[rec["scenario"]][1]
    head = f"  round {rec['round']} {rec['scenario']:<15} {rec['contender']:<13}"
    if rec["value"] is None:
        print(f"{head} FAILED: {rec['error']}", flush=True)
        return
    cpu = "" if rec["proxy_cpu_s"] is None else f"  proxy CPU {rec['proxy_cpu_s']:.2f}s"
    errs = describe_errors(rec)
    print(f"{head} {fmt_num(rec['value']):>10} {unit}{cpu}{'  ERRORS: ' + errs if errs else ''}",
          flush=True)


# --------------------------------------------------------------------------- report


def cpu_per_unit(rec: dict[str, Any]) -> float | None:
    """Proxy CPU-seconds per GB (bulk) or per 1000 requests (wrk scenarios)."""
    if rec["value"] is None or rec.get("proxy_cpu_s") is None or not rec.get("units"):
        return None
    per = 1e9 if rec["scenario"] == "bulk" else 1000
    return rec["proxy_cpu_s"] / (rec["units"] / per)


def scenario_table(
    records: list[dict[str, Any]], scenario: str, names: list[str], rounds: int
) -> str:
    _, unit, cpu_unit = SCENARIO_INFO[scenario]
    by: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rec in records:
        if rec["scenario"] == scenario:
            by[rec["contender"]].append(rec)
    values = {
        n: [next((r["value"] for r in by[n] if r["round"] == k), None)
            for k in range(1, rounds + 1)]
        for n in names
    }
    rows = []
    for n in names:
        vals = [v for v in values[n] if v is not None]
        failed = sum(1 for r in by[n] if r["value"] is None)
        errors = describe_totals(by[n])
        if failed:
            errors = f"FAILED {failed}/{len(by[n])}" + (f"; {errors}" if errors else "")
        rows.append([
            n,
            fmt_num(median(vals)),
            f"{fmt_num(min(vals))}–{fmt_num(max(vals))}" if vals else "—",
            fmt_ratio(paired_ratio(values, n, "nginx-stream")),
            fmt_ratio(paired_ratio(values, n, "direct")),
            fmt_num(median([c for c in map(cpu_per_unit, by[n]) if c is not None])),
            errors or "0",
        ])
    headers = ["contender", f"median {unit}", "min–max", "vs nginx-stream", "vs direct",
               f"proxy {cpu_unit}", "errors"]
    return markdown_table(headers, rows)


def describe_totals(recs: list[dict[str, Any]]) -> str:
    """wrk error counters summed over rounds, non-zero ones only."""
    totals: dict[str, int] = {}
    for rec in recs:
        for k, v in rec.get("socket_errors", {}).items():
            totals[k] = totals.get(k, 0) + v
        totals["non-2xx"] = totals.get("non-2xx", 0) + rec.get("non2xx", 0)
    return ", ".join(f"{k} {v}" for k, v in totals.items() if v)


def report(
    records: list[dict[str, Any]], scenarios: list[str], names: list[str], rounds: int
) -> str:
    parts = []
    for scenario in scenarios:
        desc, unit, _ = SCENARIO_INFO[scenario]
        parts.append(f"### {scenario} — {desc} ({unit})\n")
        parts.append(scenario_table(records, scenario, names, rounds) + "\n")
        failures = [r for r in records if r["scenario"] == scenario and r["value"] is None]
        for r in failures:
            parts.append(f"- round {r['round']} {r['contender']}: {r['error']}")
        if failures:
            parts.append("")
    return "\n".join(parts)


def results_section(meta: dict[str, Any], tables: str, json_path: Path) -> str:
    m = meta["machine"]
    return f"""{RESULTS_HEADING} — {today()}

- Command: `{meta['command']}`
- Rounds: {meta['rounds']} × {meta['duration']} s per measurement, interleaved
  (round → scenario → contender, contender order rotated each round); ratios are medians of
  per-round paired ratios; proxy CPU = user+system CPU-seconds of the proxy's processes.
- Machine: {m['nproc']} cores ({m['cpu']}), kernel {m['kernel']}; load generator, origin and
  proxy share these cores.
- Versions: nginx {m['nginx']}, haproxy {m['haproxy']}, wrk {m['wrk']}, iperf3 {m['iperf3']},
  Python {m['python']}, uvloop {m['uvloop']}.
- Contenders: {', '.join(meta['contenders'])}; each proxy runs 1 worker process/thread.
- Raw data: `{json_path.relative_to(REPO_DIR)}` (not committed).

{tables}"""


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick: 1)")
    p.add_argument("--duration", type=int,
                   help="whole seconds per measurement (default 5; --quick: 2)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 round of 2 s")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help=f"comma-separated subset of {','.join(CONTENDERS)}")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--write-results", action="store_true",
                   help="replace the L4 section of benchmarks/RESULTS.md with this run")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (2 if args.quick else 5)
    args.contenders = split_choice(p, args.contenders, CONTENDERS, "--contenders")
    args.scenarios = split_choice(p, args.scenarios, SCENARIOS, "--scenarios")
    if args.rounds < 1 or args.duration <= 0:
        p.error("--rounds must be >= 1 and --duration > 0")
    return args


def split_choice(
    p: argparse.ArgumentParser, raw: str, allowed: tuple[str, ...], flag: str
) -> list[str]:
    names = [n.strip() for n in raw.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        p.error(f"{flag}: unknown {bad or 'empty'}; choose from {','.join(allowed)}")
    return list(dict.fromkeys(names))


def preflight(args: argparse.Namespace) -> str | None:
    """Check tools; print what is missing and return None, else the nginx load_module line."""
    missing = missing_tools(TOOLS)
    if missing:
        print(f"missing tools: {', '.join(missing)}\ninstall with: {INSTALL_HINT}",
              file=sys.stderr)
        return None
    load_line = nginx_stream_module(find_tool("nginx") or "nginx")
    if "nginx-stream" in args.contenders and load_line is None:
        print(f"nginx has no stream module\ninstall with: {INSTALL_HINT}", file=sys.stderr)
        return None
    if "ferryman" in args.contenders and not (REPO_DIR / "src/ferryman/__main__.py").exists():
        print("ferryman is not runnable yet (no src/ferryman/__main__.py); "
              "try --contenders direct,nginx-stream,haproxy", file=sys.stderr)
        return None
    return load_line or ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_line = preflight(args)
    if load_line is None:
        return 2
    meta: dict[str, Any] = {
        "command": command_line(),
        "rounds": args.rounds,
        "duration": args.duration,
        "contenders": args.contenders,
        "scenarios": args.scenarios,
        "wrk": {"threads": WRK_THREADS, "connections": WRK_CONNS},
        "machine": machine_info({
            "nginx": tool_version([find_tool("nginx") or "nginx", "-v"]),
            "haproxy": tool_version([find_tool("haproxy") or "haproxy", "-v"]),
            "wrk": tool_version(["wrk", "-v"]),
            "iperf3": tool_version(["iperf3", "-v"]),
        }),
    }
    m = meta["machine"]
    print(f"L4 benchmark: {args.rounds} round(s) × {args.duration} s; contenders "
          f"{','.join(args.contenders)}; {m['nproc']} cores, kernel {m['kernel']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ferryman-l4-") as tmp:
        group = ProcessGroup(Path(tmp))
        try:
            origin, origin_services = start_origin(group, Path(tmp))
            contenders = start_contenders(group, Path(tmp), args.contenders, origin, load_line)
            records = run_rounds(
                contenders, origin_services, args.scenarios, args.rounds, args.duration
            )
        except SetupError as exc:
            print(f"setup failed: {exc}", file=sys.stderr)
            return 1
        finally:
            group.stop_all()
    tables = report(records, args.scenarios, args.contenders, args.rounds)
    json_path = save_json({"meta": meta, "records": records}, "l4")
    print()
    print(tables)
    print(f"raw results: {json_path.relative_to(REPO_DIR)}")
    if args.write_results:
        replace_section(BENCH_DIR / "RESULTS.md", RESULTS_HEADING,
                        results_section(meta, tables, json_path))
        print("updated benchmarks/RESULTS.md")
    return 1 if any(r["value"] is None for r in records) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; all started processes stopped", file=sys.stderr)
        sys.exit(130)

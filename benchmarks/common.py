"""Reusable pieces for the benchmark harnesses: processes, ports, CPU accounting, servers,
wrk runs, interleaved rounds, reporting and the command-line flow.

Used by ``l4.py``, ``l7.py`` and ``tls.py``. Standard library only, Linux only (CPU
accounting reads ``/proc``). Python contenders (ferryman, the floor proxy) run on the
interpreter ``--python`` names (default: the harness's own); what it is and how it was built
goes into the report.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import datetime as _dt
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- tools


def missing_tools(tools: Iterable[str]) -> list[str]:
    """Return the names in ``tools`` that are not on PATH (nor in /usr/sbin, /sbin)."""
    return [t for t in tools if find_tool(t) is None]


def find_tool(name: str) -> str | None:
    """Locate an executable; Debian puts nginx/haproxy in /usr/sbin, often off a user's PATH."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin:/usr/local/sbin"
    return shutil.which(name, path=path)


def tool_version(argv: Sequence[str], pattern: str = r"\d+\.\d+(?:\.\d+)?") -> str:
    """First version-looking token of a tool's ``--version``-style output, or 'unknown'."""
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(0) if m else "unknown"


# --------------------------------------------------------------------------- interpreter

# `--python optimized`: the venv `install.sh --with-optimized-python` makes from the
# distribution's /usr/bin/python3 (Debian/Ubuntu build theirs with PGO and LTO)
OPTIMIZED_VENV = Path(os.environ.get("FERRYMAN_BENCH_PY_VENV", "/tmp/ferryman-bench-py"))
OPTIMIZED_HINT = "bash benchmarks/install.sh --with-optimized-python"
PYTHON_MODULES = ("ferryman", "uvloop", "httptools")  # what the Python contenders import
# what ferryman runs from: this checkout's src, or with --compiled a copy of it with the
# compiled core built in (scripts/build_compiled.sh; $FERRYMAN_BENCH_COMPILED)
SRC_DIR = REPO_DIR / "src"
COMPILED_DIR = Path(os.environ.get("FERRYMAN_BENCH_COMPILED", "/tmp/ferryman-bench-compiled"))

# run by the interpreter under study (with src on PYTHONPATH): what it is, how it was built
_PROBE = r"""
import json, os, platform, sys, sysconfig

def version(name):
    try:
        return getattr(__import__(name), "__version__", "?")
    except Exception:
        return None

def compiled():
    try:
        return __import__("ferryman").compiled_core()
    except Exception:
        return None

var = sysconfig.get_config_var
print(json.dumps({
    "executable": sys.executable,
    "real_executable": os.path.realpath(sys.executable),
    "base_executable": os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
    "implementation": platform.python_implementation(),
    "version": platform.python_version(),
    "sys_version": sys.version,
    "prefix": sys.prefix,
    "base_prefix": sys.base_prefix,
    "config_args": var("CONFIG_ARGS") or "",
    "cflags_nodist": var("PY_CFLAGS_NODIST") or "",
    "ldflags_nodist": var("PY_LDFLAGS_NODIST") or "",
    "modules": {name: version(name) for name in MODULES},
    "compiled_core": compiled(),
}))
""".replace("MODULES", repr(PYTHON_MODULES))


@dataclass(frozen=True)
class Interpreter:
    """The Python that runs ferryman and the floor proxy: ``--python``, else the harness's."""

    path: str
    explicit: bool = False  # chosen with --python


def resolve_python(arg: str | None) -> Interpreter:
    """``--python`` as an :class:`Interpreter`: None = this one, ``optimized`` = the venv
    made by ``install.sh --with-optimized-python``, else a path or a name on PATH.

    Raises ValueError saying what to do when it does not exist. A venv's ``python`` is kept
    as given, not resolved: through the symlink it would lose the venv's site-packages.
    """
    if arg is None:
        return Interpreter(sys.executable)
    if arg == "optimized":
        path = OPTIMIZED_VENV / "bin" / "python"
        if not os.access(path, os.X_OK):
            raise ValueError(f"--python optimized: no {path}; create it with: {OPTIMIZED_HINT}"
                             " (or set FERRYMAN_BENCH_PY_VENV to an existing venv)")
        return Interpreter(str(path), explicit=True)
    found = arg if os.sep in arg else shutil.which(arg)
    if not found or not os.access(found, os.X_OK) or os.path.isdir(found):
        raise ValueError(f"--python {arg}: not an executable interpreter")
    return Interpreter(os.path.abspath(found), explicit=True)


_PROBED: dict[str, dict[str, Any]] = {}


def interpreter_info(python: str) -> dict[str, Any]:
    """What ``python`` is (version, real binary, build flags, module versions) plus
    ``build``: whether it was built with PGO/LTO, as far as can be told. Memoised; an
    ``error`` key if it could not be run."""
    if python not in _PROBED:
        try:
            out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True,
                                 timeout=60, env=ferryman_env(), cwd=REPO_DIR, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            info = {"executable": python, "error": f"{type(exc).__name__}: {exc}"}
        else:
            try:
                info = json.loads(out.stdout)
                info["build"] = describe_build(info)
            except (ValueError, KeyError, TypeError):
                err = out.stderr.strip().splitlines()[-1:] or [f"exit status {out.returncode}"]
                info = {"executable": python, "error": err[0]}
        _PROBED[python] = info
    return _PROBED[python]


def describe_build(info: dict[str, Any]) -> str:
    """'PGO+LTO', 'PGO', 'LTO' or 'no PGO/LTO', and how that is known.

    The configure flags say it for builds made with ``--enable-optimizations`` /
    ``--with-lto`` (python.org, pyenv with PYTHON_CONFIGURE_OPTS, most standalone builds).
    Debian and Ubuntu drive PGO and LTO from their packaging instead, so their sysconfig
    does not show it: a binary owned by their ``pythonX.Y-minimal`` package counts as
    PGO+LTO, named with the package version.
    """
    flags = " ".join((info["config_args"], info["cflags_nodist"], info["ldflags_nodist"]))
    pgo = "--enable-optimizations" in flags or "-fprofile-use" in flags
    lto = "--with-lto" in flags or "-flto" in flags
    if pgo or lto:
        kind = "+".join(k for k, on in (("PGO", pgo), ("LTO", lto)) if on)
        return f"{kind} (its configure flags)"
    package = debian_package(info["base_executable"])
    if package:
        return (f"PGO+LTO (Debian/Ubuntu package {package}: built with PGO and LTO by the "
                "distribution's packaging, which its sysconfig does not show)")
    return "no PGO/LTO (its configure flags: neither --enable-optimizations nor --with-lto)"


def debian_package(binary: str) -> str | None:
    """'python3.11-minimal 3.11.2-6+deb12u6' if dpkg owns ``binary``, else None."""
    if not binary.startswith("/usr/bin/") or not find_tool("dpkg-query"):
        return None
    try:
        owner = subprocess.run(["dpkg-query", "-S", binary], capture_output=True, text=True,
                               timeout=10, check=False).stdout
        m = re.match(r"(python3[\w.]*-minimal):", owner)  # not -dbg builds
        if not m:
            return None
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", m.group(1)],
                                 capture_output=True, text=True, timeout=10,
                                 check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return f"{m.group(1)} {version}".strip()


def interpreter_summary(info: dict[str, Any]) -> str:
    """One line for a report: path, version, the binary behind it, the build."""
    if "error" in info:
        return f"`{info['executable']}` (could not be run: {info['error']})"
    real = info["base_executable"]
    via = "" if real == info["executable"] else f" → {real}"
    core = {True: "; ferryman's compiled core", False: "; ferryman in pure Python"}.get(info.get("compiled_core"), "")
    return (f"`{info['executable']}`{via}, {info['implementation']} {info['version']}, "
            f"{info['build']}{core}")


# --------------------------------------------------------------------------- ports


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Pick ``n`` distinct free TCP ports: bind port 0, read it, close (all held until the end)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_listening(
    port: int,
    timeout: float = 10.0,
    host: str = "127.0.0.1",
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll-connect until ``host:port`` accepts; raise RuntimeError at the deadline or if
    ``alive()`` turns False (the server process died)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            last = exc
        if alive is not None and not alive():
            raise RuntimeError(f"process serving {host}:{port} exited before listening")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{host}:{port} not accepting after {timeout}s: {last}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- /proc


def _read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the ``(comm)`` field (index 0 = state), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    st = _read_stat(pid)
    return int(st[19]) if st else None


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (found through the ppid of every /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _read_stat(int(entry))
        if st:
            children.setdefault(int(st[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _read_stat(pid) is None:
            continue
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(roots: Iterable[int]) -> float:
    """CPU-seconds (user+system) used so far by the trees under ``roots``.

    Counts utime+stime of every live process plus cutime+cstime (reaped children), so the
    difference of two samples is the CPU spent in between even if a child exited meanwhile.
    """
    ticks = 0
    for root in roots:
        for pid in process_tree(root):
            st = _read_stat(pid)
            if st:
                ticks += int(st[11]) + int(st[12]) + int(st[13]) + int(st[14])
    return ticks / CLK_TCK


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGTERM the child if the harness dies (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass


@dataclass
class Service:
    """A long-running process started by the harness (server, proxy)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class ProcessGroup:
    """Owns every service the harness starts and stops them all, by PID, exactly once.

    ``stop_all`` runs from ``finally`` blocks and from ``atexit``; SIGTERM/SIGHUP are turned
    into KeyboardInterrupt so the ``finally`` blocks run for them too. ``python`` is the
    interpreter the Python services (ferryman, the floor proxy) are started with.
    """

    workdir: Path
    services: list[Service] = field(default_factory=list)
    python: str = sys.executable

    def __post_init__(self) -> None:
        atexit.register(self.stop_all)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _raise_interrupt)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Service:
        """Start ``argv`` in its own session with stdout+stderr to ``<workdir>/<name>.log``."""
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # Ctrl-C reaches the harness only; it stops them in order
                preexec_fn=_die_with_parent,
            )
        svc = Service(name, proc, log_path)
        self.services.append(svc)
        return svc

    def stop_all(self, timeout: float = 5.0) -> None:
        """SIGTERM each service (newest first), wait, SIGKILL stragglers and their leftovers."""
        while self.services:
            stop_service(self.services.pop(), timeout)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_service(svc: Service, timeout: float = 5.0) -> None:
    """Terminate ``svc`` by PID; kill it after ``timeout``; then kill any descendant it left."""
    leftovers = [(p, _start_time(p)) for p in process_tree(svc.pid) if p != svc.pid]
    if svc.proc.poll() is None:
        try:
            svc.proc.terminate()
            svc.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            svc.proc.kill()
            svc.proc.wait(timeout)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid, started in leftovers:
        while _start_time(pid) == started and started is not None:
            if time.monotonic() >= deadline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            time.sleep(0.02)


def run_bounded(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a client to completion; it is killed (and TimeoutExpired raised) after ``timeout``."""
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )


# --------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def paired_ratio(
    values: dict[str, list[float | None]], name: str, reference: str
) -> float | None:
    """Median over rounds of ``values[name][r] / values[reference][r]`` (rounds where both ran)."""
    if name not in values or reference not in values:
        return None
    ratios = [
        a / b
        for a, b in zip(values[name], values[reference])
        if a is not None and b is not None and b > 0
    ]
    return statistics.median(ratios) if ratios else None


# --------------------------------------------------------------------------- reporting


def fmt_num(value: float | None, digits: int = 3) -> str:
    """Human number with ``digits`` significant digits (no scientific notation), '—' if None."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))  # 0 for 1..9.99, -2 for 0.01..0.099
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def fmt_int(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def fmt_pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals (0.99975 -> '99.98%'), '—' if None."""
    return "—" if value is None else f"{value:.2%}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; numeric-looking columns right-aligned."""
    def numeric(col: int) -> bool:
        cells = [r[col] for r in rows if r[col] not in ("—", "")]
        return bool(cells) and all(re.match(r"^[\d,.x%\s–-]+$", c) for c in cells)

    aligns = ["---:" if numeric(i) else ":---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def machine_info(
    extra: dict[str, str] | None = None, python: dict[str, Any] | None = None
) -> dict[str, str]:
    """Facts needed to compare runs: cores, CPU model, kernel, Python, uvloop (+ ``extra``).

    Python and uvloop are those of ``python`` (:func:`interpreter_info` of the interpreter
    that runs ferryman) when given, else the harness's own.
    """
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import uvloop  # noqa: PLC0415 - optional, only its version is reported

        uv = uvloop.__version__
    except ImportError:
        uv = "not installed"
    info = {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uv,
        "harness_python": sys.executable,
    }
    if python and "error" not in python:
        info["python"] = python["version"]
        info["uvloop"] = python["modules"]["uvloop"] or "not installed"
        info["httptools"] = python["modules"]["httptools"] or "not installed"
    info.update(extra or {})
    return info


def now_stamp() -> str:
    """UTC timestamp usable in file names, e.g. 20250101T120000Z."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")


def command_line() -> str:
    """The command that started this run, as one could retype it from the repo root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO_DIR)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


def save_json(data: object, name_prefix: str) -> Path:
    """Write raw results to ``benchmarks/results/<prefix>-<stamp>.json`` and return the path."""
    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{name_prefix}-{now_stamp()}.json"
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def replace_section(path: Path, heading_prefix: str, section: str) -> None:
    """Put ``section`` (starting with a ``## `` heading) into ``path``, replacing the existing
    section whose heading starts with ``heading_prefix`` (up to the next ``## ``), else append."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(
        r"^" + re.escape(heading_prefix) + r".*?(?=^## |\Z)", re.MULTILINE | re.DOTALL
    )
    body = section.rstrip("\n") + "\n\n"
    if pattern.search(text):
        text = pattern.sub(lambda _m: body, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text.rstrip("\n") + "\n")


# --------------------------------------------------------------------------- servers

SMALL_BODY = "ferryman-benchmark-" + "x" * 80 + "\n"  # 100 bytes, served at /small
SETTLE_S = 0.5  # pause between measurements so the previous run's sockets finish closing


class SetupError(RuntimeError):
    """A server or contender could not be started."""


@dataclass
class Contender:
    """A proxy under test; ``services`` are the processes whose CPU is the proxy's CPU.

    ``ports`` says where clients connect (an int, or a harness's own record); ``failed`` holds
    why the contender is unusable (did not start, did not proxy): it is then never measured.
    ``scenarios`` limits it to those scenarios (None: all), for a contender that is only
    worth one comparison.
    """

    name: str
    ports: Any
    services: list[Service] = field(default_factory=list)
    failed: str | None = None
    scenarios: tuple[str, ...] | None = None

    def runs(self, scenario: str) -> bool:
        return self.scenarios is None or scenario in self.scenarios

    def dead(self) -> Service | None:
        return next((s for s in self.services if not s.alive()), None)


def nginx_main_block(workdir: Path, name: str, workers: int = 1) -> str:
    """Top of an nginx.conf for a foreground, single-worker instance living in ``workdir``.

    Run as root, nginx would switch its worker to ``nobody``, which cannot enter the private
    ``workdir`` (files, proxy temp files): keep the worker as root then.
    """
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 16384;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log warn;
events {{ worker_connections 8192; }}
"""


def nginx_http_block(workdir: Path, name: str, body: str) -> str:
    """``http {}`` with logging off, long keep-alive and temp paths inside ``workdir``."""
    tmp = workdir / f"{name}-tmp"
    tmp.mkdir(exist_ok=True)
    temps = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
http {{
    access_log off;
    keepalive_requests 100000;
    keepalive_timeout 60s;
{temps}
{body}
}}
"""


def start_nginx(group: ProcessGroup, workdir: Path, name: str, conf: str) -> Service:
    path = workdir / f"{name}.conf"
    path.write_text(conf)
    nginx = find_tool("nginx") or "nginx"
    return group.start(
        name, [nginx, "-p", str(workdir), "-c", str(path), "-e", f"{workdir}/{name}-error.log"]
    )


def start_origin_nginx(
    group: ProcessGroup, workdir: Path, port: int, locations: str = ""
) -> Service:
    """The origin: nginx serving ``/small`` (SMALL_BODY) plus ``locations``; waits until ready."""
    server = f"""
    sendfile on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /small {{
            default_type text/plain;
            return 200 "{SMALL_BODY.rstrip(chr(10))}\\n";
        }}
{locations}
    }}"""
    conf = nginx_main_block(workdir, "origin") + nginx_http_block(workdir, "origin", server)
    svc = start_nginx(group, workdir, "origin", conf)
    wait_ready(svc, port)
    return svc


def start_haproxy(group: ProcessGroup, workdir: Path, conf: str) -> Service:
    path = workdir / "haproxy.cfg"
    path.write_text(conf)
    return group.start("haproxy", [find_tool("haproxy") or "haproxy", "-db", "-f", str(path)])


def use_compiled(python: str) -> None:
    """``--compiled``: build this checkout's compiled core for ``python`` (mypyc; it needs mypy
    and a C compiler) and run ferryman from that copy. A failed build is a SetupError."""
    global SRC_DIR
    build = subprocess.run(["bash", str(REPO_DIR / "scripts" / "build_compiled.sh"), python, str(COMPILED_DIR)],
                           capture_output=True, text=True, check=False)
    if build.returncode != 0:
        raise SetupError(f"--compiled: the build failed:\n{build.stderr[-2000:]}")
    SRC_DIR = COMPILED_DIR / "src"
    _PROBED.clear()


def ferryman_env() -> dict[str, str]:
    """The environment with ferryman's source (:data:`SRC_DIR`) first on PYTHONPATH."""
    env = dict(os.environ)
    src = str(SRC_DIR)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start_ferryman(
    group: ProcessGroup, workdir: Path, toml: str, name: str = "ferryman"
) -> Service:
    """``python -m ferryman run`` on ``toml`` with ``src`` on PYTHONPATH, on the group's
    interpreter; ``name`` names its config and log files (several instances can run side by
    side).

    cwd is the repo root, so ``-m`` finds the checked-out package.
    """
    path = workdir / f"{name}.toml"
    path.write_text(toml)
    return group.start(
        name, [group.python, "-m", "ferryman", "run", "-c", str(path)],
        env=ferryman_env(), cwd=REPO_DIR,
    )


def start_floor_proxy(group: ProcessGroup, port: int, origin: int,
                      name: str = "python-floor", extra: Sequence[str] = ()) -> Service:
    """``benchmarks/floor_proxy.py`` on the group's interpreter: 127.0.0.1:``port`` to the
    origin on 127.0.0.1:``origin`` (``extra``: more arguments, e.g. ``--cert``/``--key``)."""
    argv = [group.python, str(BENCH_DIR / "floor_proxy.py"),
            "--listen", f"127.0.0.1:{port}", "--origin", f"127.0.0.1:{origin}", *extra]
    return group.start(name, argv, cwd=REPO_DIR)


def wait_ready(svc: Service, port: int, timeout: float = 15.0) -> None:
    """Wait until ``svc`` accepts on ``port``; SetupError with its log tail otherwise."""
    try:
        wait_listening(port, timeout=timeout, alive=svc.alive)
    except RuntimeError as exc:
        raise SetupError(f"{svc.name}: {exc}\n--- {svc.log_path} ---\n{svc.log_tail()}") from exc


def settle_contenders(
    contenders: list[Contender],
    ports_of: Callable[[Contender], list[int]],
    verify: Callable[[Contender], str | None] | None = None,
) -> None:
    """Wait for every contender's listeners, then ``verify`` it (None = fine, else why not).

    A contender that fails either step gets ``failed`` set and a message on stderr; the others
    are still measured.
    """
    for c in contenders:
        try:
            for svc in c.services:
                for port in ports_of(c):
                    wait_ready(svc, port)
            c.failed = verify(c) if verify else None
        except SetupError as exc:
            c.failed = f"did not start: {exc}"
        if c.failed:
            print(f"contender {c.name} FAILED: {c.failed}", file=sys.stderr, flush=True)


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One ``GET path`` to 127.0.0.1:port with ``Connection: close``: (status, body).

    A raw socket: the check wants the exact bytes, with no client-side decoding.
    The body is everything after the head (no chunked decoding: the caller checks its length).
    """
    status, _head, body = http_get_full(port, path, timeout)
    return status, body


def http_get_full(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes, bytes]:
    """Like :func:`http_get`, with the response head too: (status, head, body)."""
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req.encode("ascii"))
        while data := s.recv(1 << 16):
            chunks.append(data)
    head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if not m or not sep:
        raise ValueError(f"not an HTTP response: {head[:80]!r}")
    return int(m.group(1)), head, body


# --------------------------------------------------------------------------- wrk

WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)([KMGT]?B) read")
_TIME = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def run_wrk(
    url: str, duration: int, connections: int, threads: int = 1, close: bool = False
) -> dict[str, Any]:
    """wrk for ``duration`` s; value = req/s. Also: requests ('units'), MB/s read (wrk's count,
    headers included), socket errors and non-2xx/3xx responses."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    proc = run_bounded(argv, timeout=duration + 30)
    out = proc.stdout
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    total = WRK_TOTAL.search(out)
    if proc.returncode != 0 or not rps or not total:
        return {"value": None, "error": f"wrk rc={proc.returncode}: {(out + proc.stderr)[-300:]}"}
    m = WRK_ERRORS.search(out)
    counts = map(int, m.groups()) if m else (0, 0, 0, 0)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    seconds = float(total.group(2)) * _TIME[total.group(3)]
    read = float(total.group(4)) * _SIZE[total.group(5)]
    return {
        "value": float(rps.group(1)),
        "units": int(total.group(1)),  # CPU is reported per 1000 requests
        "seconds": seconds,
        "mb_s": read / seconds / 1e6 if seconds else None,
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"), counts)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "error": None,
    }


def describe_errors(rec: dict[str, Any]) -> str:
    """Non-zero wrk error counters of one measurement, e.g. 'read 3, non-2xx 1' ('' if none)."""
    return describe_totals([rec])


def describe_totals(recs: list[dict[str, Any]]) -> str:
    """wrk error counters summed over measurements, non-zero ones only."""
    totals: dict[str, int] = {}
    for rec in recs:
        for k, v in rec.get("socket_errors", {}).items():
            totals[k] = totals.get(k, 0) + v
        totals["non-2xx"] = totals.get("non-2xx", 0) + rec.get("non2xx", 0)
    return ", ".join(f"{k} {v}" for k, v in totals.items() if v)


# --------------------------------------------------------------------------- rounds


@dataclass(frozen=True)
class Scenario:
    """How one scenario is described and reported."""

    desc: str
    unit: str  # of the measured value, e.g. "req/s"
    cpu_unit: str = "CPU-s/1k req"
    cpu_per: float = 1000  # proxy CPU is divided by (record["units"] / cpu_per)
    # more columns, medians over rounds: (header, record key) or (header, record key, format)
    extra: tuple[tuple[Any, ...], ...] = ()


Measure = Callable[[str, Contender, int], dict[str, Any]]


def run_rounds(
    contenders: list[Contender],
    origin_services: list[Service],
    scenarios: dict[str, Scenario],
    rounds: int,
    duration: int,
    measure: Measure,
) -> list[dict[str, Any]]:
    """Round -> scenario -> contender, the contender order rotated each round; one record
    per measurement with the proxy's and the origin's CPU-seconds."""
    records = []
    n = len(contenders)
    origin_pids = [s.pid for s in origin_services]
    for rnd in range(1, rounds + 1):
        order = contenders[(rnd - 1) % n :] + contenders[: (rnd - 1) % n]
        for scenario, sc in scenarios.items():
            for c in order:
                if not c.runs(scenario):
                    continue
                dead = c.dead() or next((s for s in origin_services if not s.alive()), None)
                pids = [s.pid for s in c.services]
                cpu = origin_cpu = None
                if c.failed:
                    rec: dict[str, Any] = {"value": None, "error": c.failed.splitlines()[0]}
                elif dead:
                    rec = {"value": None, "error": f"{dead.name} exited: {dead.log_tail(5)}"}
                else:
                    time.sleep(SETTLE_S)
                    cpu0, ocpu0 = cpu_seconds(pids), cpu_seconds(origin_pids)
                    try:
                        rec = measure(scenario, c, duration)
                    except Exception as exc:  # noqa: BLE001 - a failed run is reported, not fatal
                        rec = {"value": None, "error": f"{type(exc).__name__}: {exc}"}
                    cpu = cpu_seconds(pids) - cpu0 if pids else None
                    origin_cpu = cpu_seconds(origin_pids) - ocpu0
                rec.update(round=rnd, scenario=scenario, contender=c.name,
                           proxy_cpu_s=cpu, origin_cpu_s=origin_cpu)
                records.append(rec)
                print_progress(rec, sc.unit)
    return records


def print_progress(rec: dict[str, Any], unit: str) -> None:
    head = f"  round {rec['round']} {rec['scenario']:<15} {rec['contender']:<15}"
    if rec["value"] is None:
        print(f"{head} FAILED: {rec['error']}", flush=True)
        return
    cpu = "" if rec["proxy_cpu_s"] is None else f"  proxy CPU {rec['proxy_cpu_s']:.2f}s"
    errs = describe_errors(rec)
    print(f"{head} {fmt_num(rec['value']):>10} {unit}{cpu}{'  ERRORS: ' + errs if errs else ''}",
          flush=True)


# --------------------------------------------------------------------------- tables


def cpu_per_unit(rec: dict[str, Any], sc: Scenario) -> float | None:
    """Proxy CPU-seconds per ``sc.cpu_per`` units (bytes, requests) of one measurement."""
    if rec["value"] is None or rec.get("proxy_cpu_s") is None or not rec.get("units"):
        return None
    return rec["proxy_cpu_s"] / (rec["units"] / sc.cpu_per)


def scenario_table(
    records: list[dict[str, Any]],
    scenario: str,
    sc: Scenario,
    names: list[str],
    rounds: int,
    reference: str,
) -> str:
    """One row per contender measured in ``scenario``: median, min–max, paired ratios to
    ``reference`` and ``direct`` (those among ``names``), the ``sc.extra`` medians, proxy CPU per
    unit and the error counts."""
    by: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rec in records:
        if rec["scenario"] == scenario and rec["contender"] in by:
            by[rec["contender"]].append(rec)
    values = {
        n: [next((r["value"] for r in by[n] if r["round"] == k), None)
            for k in range(1, rounds + 1)]
        for n in names
    }
    with_direct, with_ref = "direct" in names, reference in names
    rows = []
    for n in names:
        if not by[n]:  # not measured in this scenario
            continue
        vals = [v for v in values[n] if v is not None]
        failed = sum(1 for r in by[n] if r["value"] is None)
        errors = describe_totals(by[n])
        if failed:
            errors = f"FAILED {failed}/{len(by[n])}" + (f"; {errors}" if errors else "")
        ok = [r for r in by[n] if r["value"] is not None]
        rows.append([
            n,
            fmt_num(median(vals)),
            f"{fmt_num(min(vals))}–{fmt_num(max(vals))}" if vals else "—",
            *([fmt_ratio(paired_ratio(values, n, reference))] if with_ref else []),
            *([fmt_ratio(paired_ratio(values, n, "direct"))] if with_direct else []),
            *((ex[2] if len(ex) > 2 else fmt_num)(
                median([r[ex[1]] for r in ok if r.get(ex[1]) is not None]))
              for ex in sc.extra),
            fmt_num(median([c for c in (cpu_per_unit(r, sc) for r in by[n]) if c is not None])),
            errors or "0",
        ])
    headers = ["contender", f"median {sc.unit}", "min–max",
               *([f"vs {reference}"] if with_ref else []),
               *(["vs direct"] if with_direct else []),
               *(ex[0] for ex in sc.extra), f"proxy {sc.cpu_unit}", "errors"]
    return markdown_table(headers, rows)


def report(
    records: list[dict[str, Any]],
    scenarios: dict[str, Scenario],
    names: list[str],
    rounds: int,
    reference: str,
) -> str:
    """A ``###`` table per scenario, each followed by the list of its failed measurements."""
    parts = []
    for scenario, sc in scenarios.items():
        parts.append(f"### {scenario} — {sc.desc} ({sc.unit})\n")
        parts.append(scenario_table(records, scenario, sc, names, rounds, reference) + "\n")
        failures = [r for r in records if r["scenario"] == scenario and r["value"] is None]
        for r in failures:
            parts.append(f"- round {r['round']} {r['contender']}: {r['error']}")
        if failures:
            parts.append("")
    return "\n".join(parts)


@dataclass(frozen=True)
class Comparison:
    """A short table of its own: ``name`` against ``reference`` in one scenario (paired
    ratios), e.g. a contender that is only run for that one comparison."""

    title: str
    scenario: str
    name: str
    reference: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CostComparison:
    """A table of its own across every scenario where both ran: ``name`` against
    ``reference`` (e.g. ferryman against the Python floor): both rates, their paired ratio,
    the reference's ratio to ``baseline``, both CPU costs, their paired ratio and paired
    difference (what ``name`` spends above ``reference`` per unit)."""

    title: str
    name: str
    reference: str
    baseline: str = "nginx"
    notes: tuple[str, ...] = ()


def per_round(
    records: list[dict[str, Any]], scenario: str, name: str, rounds: int,
    value: Callable[[dict[str, Any]], float | None],
) -> list[float | None]:
    """``value(record)`` of ``name`` in ``scenario`` for rounds 1..rounds (None: no record)."""
    by_round = {r["round"]: r for r in records
                if r["scenario"] == scenario and r["contender"] == name}
    return [value(by_round[k]) if k in by_round else None for k in range(1, rounds + 1)]


def cost_table(
    records: list[dict[str, Any]],
    cmp: CostComparison,
    scenarios: dict[str, Scenario],
    rounds: int,
) -> str:
    """The ``###`` section of ``cmp``: one row per scenario where both sides were measured."""
    a, b, base = cmp.name, cmp.reference, cmp.baseline
    measured = {(r["scenario"], r["contender"]) for r in records}
    names = [s for s in scenarios if {(s, a), (s, b)} <= measured]
    if not names:
        return ""
    units = {(scenarios[s].unit, scenarios[s].cpu_unit) for s in names}
    unit, cpu_unit = next(iter(units)) if len(units) == 1 else ("", "CPU")
    with_base = any((s, base) in measured for s in names)
    rows = []
    for s in names:
        sc = scenarios[s]
        rate = {n: per_round(records, s, n, rounds, lambda r: r["value"]) for n in (a, b, base)}
        cpu = {n: per_round(records, s, n, rounds, lambda r, sc=sc: cpu_per_unit(r, sc))
               for n in (a, b)}
        above = [x - y for x, y in zip(cpu[a], cpu[b]) if x is not None and y is not None]
        label = s if len(units) == 1 else f"{s} ({sc.unit}; {sc.cpu_unit})"
        rows.append([
            label,
            fmt_num(median(rate[a])), fmt_num(median(rate[b])),
            fmt_ratio(paired_ratio(rate, a, b)),
            *([fmt_ratio(paired_ratio(rate, b, base))] if with_base else []),
            fmt_num(median(cpu[a])), fmt_num(median(cpu[b])),
            fmt_ratio(paired_ratio(cpu, a, b)),
            fmt_num(median(above)),
        ])
    headers = ["scenario", f"{a} {unit}".strip(), f"{b} {unit}".strip(), f"{a} vs {b}",
               *([f"{b} vs {base}"] if with_base else []),
               f"{a} {cpu_unit}", f"{b} {cpu_unit}", f"{a} CPU vs {b}",
               f"{a} {cpu_unit} above {b}"]
    notes = "".join(f"- {n}\n" for n in cmp.notes)
    return (f"### {cmp.title}\n\n{notes}{chr(10) if notes else ''}"
            f"{markdown_table(headers, rows)}\n")


def comparison_tables(
    records: list[dict[str, Any]],
    comparisons: Iterable[Comparison | CostComparison],
    scenarios: dict[str, Scenario],
    rounds: int,
) -> str:
    """A ``###`` table per comparison whose two contenders were both measured ('' if none)."""
    parts = []
    for cmp in comparisons:
        if isinstance(cmp, CostComparison):
            table = cost_table(records, cmp, scenarios, rounds)
            if table:
                parts.append(table)
            continue
        measured = {r["contender"] for r in records if r["scenario"] == cmp.scenario}
        if cmp.scenario not in scenarios or not {cmp.name, cmp.reference} <= measured:
            continue
        sc = scenarios[cmp.scenario]
        parts.append(f"### {cmp.title} — {cmp.scenario} ({sc.unit})\n")
        parts.extend(f"- {n}" for n in cmp.notes)
        if cmp.notes:
            parts.append("")
        table = scenario_table(records, cmp.scenario, sc, [cmp.name, cmp.reference], rounds,
                               cmp.reference)
        parts.append(table + "\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- command line


@dataclass
class Harness:
    """What a benchmark script plugs into ``main``: its contenders, scenarios, servers and
    the way it measures one scenario against one contender."""

    name: str  # raw JSON prefix, e.g. "l4"
    title: str  # banner, e.g. "L4 benchmark"
    heading: str  # its RESULTS.md section, e.g. "## L4 (TCP)"
    reference: str  # contender the ratios are taken against (besides direct)
    contenders: tuple[str, ...]
    scenarios: dict[str, Scenario]
    tools: tuple[str, ...]
    install_hint: str
    # (group, workdir, contender names) -> (contenders, origin services); SetupError if the
    # origin cannot start. Contenders that do not work are returned with ``failed`` set.
    start: Callable[[ProcessGroup, Path, list[str]], tuple[list[Contender], list[Service]]]
    measure: Measure
    # why the contenders cannot run here on this interpreter, or None
    check: Callable[[list[str], Interpreter], str | None] = lambda names, python: None
    notes: tuple[str, ...] = ()  # printed under the banner and listed in RESULTS.md
    meta: dict[str, Any] = field(default_factory=dict)  # extra facts for the raw JSON
    # contenders run only when asked for (--with-NAME or --contenders): name -> help text
    optional: dict[str, str] = field(default_factory=dict)
    # an optional contender's flag when it is not --with-NAME: name -> flag suffix
    optional_flags: dict[str, str] = field(default_factory=dict)
    # extra tables, shown when both sides ran
    comparisons: tuple[Comparison | CostComparison, ...] = ()
    # versions of tools the requested contenders need beyond ``tools``:
    # (names, interpreter) -> {tool: version}
    extra_versions: Callable[[list[str], Interpreter], dict[str, str]] = (
        lambda names, python: {})


def on_python(name: str) -> bool:
    """Whether contender ``name`` runs on the chosen interpreter (ferryman*, python-*)."""
    return name.startswith(("ferryman", "python-"))


def parse_args(h: Harness, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=f"{h.title}: ferryman vs {', '.join(h.contenders)}")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick: 1)")
    p.add_argument("--duration", type=int,
                   help="whole seconds per measurement (default 5; --quick: 2)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 round of 2 s")
    allowed = (*h.contenders, *h.optional)
    p.add_argument("--contenders", default=",".join(h.contenders),
                   help=f"comma-separated subset of {','.join(allowed)}")
    for name, text in h.optional.items():
        p.add_argument(f"--with-{h.optional_flags.get(name, name)}", action="append_const",
                       const=name, dest="extra", help=f"also run {name}: {text}")
    p.add_argument("--python", metavar="PATH",
                   help="the interpreter that runs the Python contenders (ferryman; l7.py's "
                        "python-floor): a path, a name on PATH, or 'optimized' = $FERRYMAN_BENCH_PY_VENV/bin/python (default "
                        f"{OPTIMIZED_VENV}), a venv of the distribution's PGO+LTO python3 made "
                        f"by `{OPTIMIZED_HINT}`; default: the one running this script")
    p.add_argument("--scenarios", default=",".join(h.scenarios),
                   help=f"comma-separated subset of {','.join(h.scenarios)}")
    p.add_argument("--compiled", action="store_true",
                   help="run ferryman with its compiled core (setup.py FERRYMAN_COMPILE=1, built by "
                        "scripts/build_compiled.sh for --python into $FERRYMAN_BENCH_COMPILED, default "
                        f"{COMPILED_DIR}; needs mypy there)")
    p.add_argument("--write-results", action="store_true",
                   help=f"replace the '{h.heading}' section of benchmarks/RESULTS.md")
    p.set_defaults(extra=None)
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (2 if args.quick else 5)
    args.contenders = split_choice(p, args.contenders, allowed, "--contenders")
    args.contenders += [n for n in dict.fromkeys(args.extra or ()) if n not in args.contenders]
    args.scenarios = split_choice(p, args.scenarios, tuple(h.scenarios), "--scenarios")
    if args.rounds < 1 or args.duration <= 0:
        p.error("--rounds must be >= 1 and --duration > 0")
    try:
        args.python = resolve_python(args.python)
        if args.compiled:
            use_compiled(args.python.path)
    except (ValueError, SetupError) as exc:
        p.error(str(exc))
    return args


def split_choice(
    p: argparse.ArgumentParser, raw: str, allowed: tuple[str, ...], flag: str
) -> list[str]:
    names = [n.strip() for n in raw.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        p.error(f"{flag}: unknown {bad or 'empty'}; choose from {','.join(allowed)}")
    return list(dict.fromkeys(names))


def preflight(h: Harness, names: list[str], python: Interpreter) -> str | None:
    """Why this run cannot start (missing tools, ferryman not runnable, an interpreter without
    the modules, ...), or None."""
    missing = missing_tools(h.tools)
    if missing:
        return f"missing tools: {', '.join(missing)}\ninstall with: {h.install_hint}"
    if (any(n.startswith("ferryman") for n in names)
            and not (REPO_DIR / "src/ferryman/__main__.py").exists()):
        others = ",".join(n for n in h.contenders if not n.startswith("ferryman"))
        return ("ferryman is not runnable yet (no src/ferryman/__main__.py); "
                f"try --contenders {others}")
    needs = {m for n in names if on_python(n)
             for m in (PYTHON_MODULES if n.startswith("ferryman") else PYTHON_MODULES[1:])}
    if needs:
        info = interpreter_info(python.path)
        if "error" in info:
            return f"interpreter {python.path} cannot be run: {info['error']}"
        missing = sorted(m for m in needs if info["modules"].get(m) is None)
        if missing:
            return (f"interpreter {python.path} cannot import {', '.join(missing)}; install "
                    f"the project into it: {python.path} -m pip install -e {REPO_DIR}"
                    f"\n(for --python optimized: {OPTIMIZED_HINT})")
    return h.check(names, python)


def results_section(h: Harness, meta: dict[str, Any], tables: str, json_path: Path) -> str:
    m = meta["machine"]
    versions = ", ".join(f"{t} {m[t]}" for t in (*h.tools, *meta.get("extra_tools", ())))
    notes = "".join(f"- {n}\n" for n in h.notes)
    on_py = [n for n in meta["contenders"] if on_python(n)]
    interp = meta.get("interpreter", {})
    interp_line = "" if not on_py or not interp else (
        f"- Interpreter ({', '.join(on_py)}): {interpreter_summary(interp)}"
        + ("" if "error" in interp else
           f"; uvloop {m['uvloop']}, httptools {m.get('httptools', '?')}") + ".\n")
    return f"""{h.heading} — {today()}

- Command: `{meta['command']}`
- Rounds: {meta['rounds']} × {meta['duration']} s per measurement, interleaved
  (round → scenario → contender, contender order rotated each round); ratios are medians of
  per-round paired ratios; proxy CPU = user+system CPU-seconds of the proxy's processes.
- Machine: {m['nproc']} cores ({m['cpu']}), kernel {m['kernel']}; load generator, origin and
  proxy share these cores.
- Versions: {versions},
  Python {m['python']}, uvloop {m['uvloop']}.
{interp_line}- Contenders: {', '.join(meta['contenders'])}; each proxy runs 1 worker process/thread.
{notes}- Raw data: `{json_path.relative_to(REPO_DIR)}` (not committed).

{tables}"""


def main(h: Harness, argv: list[str] | None = None) -> int:
    """Parse flags, start everything, run the rounds, stop everything, report.

    Exit status: 0 all measured, 1 a measurement or contender failed, 2 cannot run here.
    """
    args = parse_args(h, argv)
    python: Interpreter = args.python
    problem = preflight(h, args.contenders, python)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    scenarios = {s: h.scenarios[s] for s in args.scenarios}
    meta: dict[str, Any] = {
        "command": command_line(),
        "rounds": args.rounds,
        "duration": args.duration,
        "contenders": args.contenders,
        "scenarios": args.scenarios,
        **h.meta,
    }
    interp = interpreter_info(python.path)
    meta["interpreter"] = {**interp, "explicit": python.explicit}
    extra = h.extra_versions(args.contenders, python)
    meta["extra_tools"] = list(extra)
    meta["machine"] = machine_info({
        **{t: tool_version([find_tool(t) or t, "-v"]) for t in h.tools},
        **extra,
    }, interp)
    m = meta["machine"]
    print(f"{h.title}: {args.rounds} round(s) × {args.duration} s; contenders "
          f"{','.join(args.contenders)}; {m['nproc']} cores, kernel {m['kernel']}", flush=True)
    if any(on_python(n) for n in args.contenders):
        print(f"  interpreter: {interpreter_summary(interp)}", flush=True)
    for tool in extra:
        print(f"  {tool}: {extra[tool]}", flush=True)
    for note in h.notes:
        print(f"  {note}", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"ferryman-{h.name}-") as tmp:
        group = ProcessGroup(Path(tmp), python=python.path)
        try:
            contenders, origin_services = h.start(group, Path(tmp), args.contenders)
            records = run_rounds(
                contenders, origin_services, scenarios, args.rounds, args.duration, h.measure
            )
        except SetupError as exc:
            print(f"setup failed: {exc}", file=sys.stderr)
            return 1
        finally:
            group.stop_all()
    tables = report(records, scenarios, args.contenders, args.rounds, h.reference)
    extra_tables = comparison_tables(records, h.comparisons, scenarios, args.rounds)
    if extra_tables:
        tables = tables.rstrip("\n") + "\n\n" + extra_tables
    json_path = save_json({"meta": meta, "records": records}, h.name)
    print()
    print(tables)
    print(f"raw results: {json_path.relative_to(REPO_DIR)}")
    if args.write_results:
        replace_section(BENCH_DIR / "RESULTS.md", h.heading,
                        results_section(h, meta, tables, json_path))
        print("updated benchmarks/RESULTS.md")
    return 1 if any(r["value"] is None for r in records) else 0


def entry(h: Harness) -> None:
    """``if __name__ == "__main__"`` body: run ``main`` and exit with its status."""
    try:
        sys.exit(main(h))
    except KeyboardInterrupt:
        print("interrupted; all started processes stopped", file=sys.stderr)
        sys.exit(130)

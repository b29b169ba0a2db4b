"""Reusable pieces for the benchmark harnesses: processes, ports, CPU accounting, servers,
wrk runs, interleaved rounds, reporting and the command-line flow.

Used by ``l4.py`` and ``http.py``. Standard library only, Linux only (CPU accounting reads
``/proc``).
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import datetime as _dt
import http.client
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
    into KeyboardInterrupt so the ``finally`` blocks run for them too.
    """

    workdir: Path
    services: list[Service] = field(default_factory=list)

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


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; numeric-looking columns right-aligned."""
    def numeric(col: int) -> bool:
        cells = [r[col] for r in rows if r[col] not in ("—", "")]
        return bool(cells) and all(re.match(r"^[\d,.x\s–-]+$", c) for c in cells)

    aligns = ["---:" if numeric(i) else ":---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def machine_info(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Facts needed to compare runs: cores, CPU model, kernel, Python, uvloop (+ ``extra``)."""
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
    }
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

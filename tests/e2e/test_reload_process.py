"""Reload as an operator drives it, on real processes: ``server.watch`` picks up edits, a
worker restarted after a reload serves the reloaded config, and SIGUSR1 reopens access logs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from support.process import LOCAL, children, free_port, gone, http_get, running, wait_until


def site(port: int, body: str, *, workers: int = 1, watch: bool = False, access_log: str = "off") -> str:
    return f"""
[server]
workers = {workers}
grace_period = "2s"
watch = {str(watch).lower()}

[listeners.web]
addr = "{LOCAL}:{port}"
protocol = "http"
routes = ["all"]
access_log = "{access_log}"

[routes.all]
filters = ["answer"]

[filters.answer]
kind = "mock"
body = "{body}"
"""


def body(port: int) -> bytes:
    return http_get(port, "/")[1]


def test_a_watched_config_file_reloads_itself_and_refuses_a_bad_edit(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "ferryman.toml"
    path.write_text(site(port, "first", watch=True))
    with running(path) as proc:
        proc.wait_ready()
        assert body(port) == b"first"
        path.write_text(site(port, "second", watch=True))
        wait_until(lambda: body(port) == b"second", 10, "the edit to be served")
        path.write_text(site(port, "third", watch=True).replace('kind = "mock"', 'kind = "nope"'))
        proc.wait_for(r"reload refused", timeout=10)
        assert body(port) == b"second"  # the old config serves on
        assert proc.stop(10) == 0


def test_a_worker_restarted_after_a_reload_serves_the_reloaded_config(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "ferryman.toml"
    path.write_text(site(port, "old", workers=2))
    with running(path) as proc:
        proc.wait_ready()
        wait_until(lambda: len(children(proc.pid)) == 2, 10, "two workers")
        path.write_text(site(port, "new", workers=2))
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: all(body(port) == b"new" for _ in range(10)), 10, "both workers to reload")
        for victim in sorted(children(proc.pid)):  # every worker is replaced, one by one
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: gone(victim) and len(children(proc.pid)) == 2, 10, "a replacement worker")
        answers = {body(port) for _ in range(20)}
        assert answers == {b"new"}, answers
        assert proc.stop(10) == 0


def test_sigusr1_reopens_the_access_log_after_it_was_moved(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "access.log"
    path = tmp_path / "ferryman.toml"
    path.write_text(site(port, "x", access_log=str(log_path)))
    with running(path) as proc:
        proc.wait_ready()
        http_get(port, "/before")
        wait_until(lambda: log_path.exists() and b"/before" in log_path.read_bytes(), 10, "the first line")
        rotated = tmp_path / "access.log.1"
        log_path.rename(rotated)
        os.kill(proc.pid, signal.SIGUSR1)
        proc.wait_for(r"SIGUSR1: reopening log files")
        wait_until(lambda: (http_get(port, "/after") and log_path.exists() and b"/after" in log_path.read_bytes()), 10, "a line in the new file")
        assert b"/after" not in rotated.read_bytes()
        assert proc.stop(10) == 0

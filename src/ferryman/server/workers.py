"""A master process that forks ``n`` workers, restarts the ones that die, and stops them all.

Listening sockets are bound by the master before forking and inherited by the workers.
The master runs no event loop: it waits for signals with ``sigwaitinfo``, so a SIGCHLD,
SIGTERM or SIGINT is handled in order and none is lost.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2}
RESTART_BACKOFF = 1.0  # a worker that dies within this many seconds of starting is restarted after a pause


def run_workers(
    n: int,
    worker_main: Callable[[int], None],
    grace_period: float,
    on_stop: Callable[[], None] | None = None,
    *,
    on_reload: Callable[[], None] | None = None,
    changed: Callable[[], bool] | None = None,
    on_upgrade: Callable[[], bool] | None = None,
    on_started: Callable[[], None] | None = None,
    balancer_main: Callable[[], None] | None = None,
) -> int:
    """Fork ``n`` workers running ``worker_main(index)``; supervise until told to stop.

    ``on_stop`` runs in the master when a stop signal arrives, before the workers are told:
    it closes the master's copies of the listening sockets, so that once the workers close
    theirs new connections are refused instead of waiting in a backlog nobody accepts from.
    ``on_reload`` runs in the master on SIGHUP before the workers are told, so a worker
    started later (after a crash) starts from the reloaded config; ``changed`` is polled
    about once a second and, when True, acts as a SIGHUP (``server.watch``). SIGUSR1 (reopen
    logs) is passed on to the workers. On SIGUSR2 ``on_upgrade`` starts a new master; when it
    returns True (the new one serves) this master stops as on SIGTERM. ``on_started`` runs
    once the first workers are forked (readiness). ``balancer_main`` runs in one more
    supervised process (index -1), the one that accepts for least_conn listeners.
    """
    if balancer_main is not None:
        worker_main = _with_balancer(worker_main, balancer_main)

    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    workers: dict[int, tuple[int, float]] = {}  # pid → (index, started)
    try:
        for index in range(n):
            _spawn(index, worker_main, workers)
        if balancer_main is not None:
            _spawn(-1, worker_main, workers)
        log.info("master %d: %d workers running", os.getpid(), n)
        if on_started is not None:
            on_started()
        stopping_since: float | None = None
        while workers:
            timeout = 1.0 if stopping_since is None else max(0.05, stopping_since + grace_period + 2 - time.monotonic())
            info = signal.sigtimedwait(_SIGNALS, timeout)
            if info is None:
                if stopping_since is not None and time.monotonic() > stopping_since + grace_period + 1:
                    for pid in workers:
                        _kill(pid, signal.SIGKILL)
                elif stopping_since is None and changed is not None and changed():
                    _reload(workers, on_reload)
                continue
            upgraded = False
            if info.si_signo == signal.SIGUSR2 and stopping_since is None and on_upgrade is not None:
                upgraded = on_upgrade()
            if (upgraded or info.si_signo in (signal.SIGTERM, signal.SIGINT)) and stopping_since is None:
                log.info("master: %s: stopping workers", "upgraded" if upgraded else signal.Signals(info.si_signo).name + " received")
                stopping_since = time.monotonic()
                if on_stop is not None:
                    on_stop()
                for pid in workers:
                    _kill(pid, signal.SIGTERM)
            elif info.si_signo == signal.SIGHUP and stopping_since is None:
                _reload(workers, on_reload)
            elif info.si_signo == signal.SIGUSR1:
                for pid in list(workers):
                    _kill(pid, signal.SIGUSR1)
            _reap(workers, worker_main, restart=stopping_since is None)
        return 0
    finally:
        for pid in workers:
            _kill(pid, signal.SIGKILL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


def _with_balancer(worker_main: Callable[[int], None], balancer_main: Callable[[], None]) -> Callable[[int], None]:
    """One entry point for every supervised process: index -1 is the balancer."""

    def main(index: int) -> None:
        if index < 0:
            balancer_main()
        else:
            worker_main(index)

    return main


def _reload(workers: dict[int, tuple[int, float]], on_reload: Callable[[], None] | None) -> None:
    if on_reload is not None:
        try:
            on_reload()
        except Exception:
            log.exception("master: reloading the config failed")
    log.info("master: telling %d workers to reload", len(workers))
    for pid in list(workers):
        _kill(pid, signal.SIGHUP)


def _spawn(index: int, worker_main: Callable[[int], None], workers: dict[int, tuple[int, float]]) -> None:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _die_with_parent()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            worker_main(index)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker %d crashed", index)
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)
    workers[pid] = (index, time.monotonic())


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the master dies (even by SIGKILL), so no worker is orphaned."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the master died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _reap(workers: dict[int, tuple[int, float]], worker_main: Callable[[int], None], *, restart: bool) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        index, started = workers.pop(pid, (None, 0.0))
        if index is None:
            continue
        if restart:
            log.warning("worker %d (pid %d) exited (%s); starting a new one", index, pid, _describe(status))
            if time.monotonic() - started < RESTART_BACKOFF:
                time.sleep(RESTART_BACKOFF)  # crash loop: do not spin
            _spawn(index, worker_main, workers)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass

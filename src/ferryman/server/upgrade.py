"""Binary upgrade (SIGUSR2 / ``ferryman upgrade``), as Pingora's ``--upgrade`` and nginx's USR2.

The old master starts a new one from the installed code and hands it every listening socket
over a Unix socket (SCM_RIGHTS, :class:`~ferryman.net.handoff.ListenerHandoff`). Both then
hold the same sockets, so no connection is refused or lost: whatever waits in a backlog is
accepted by whichever process takes it. Once the new master says it is ready, the old one
drains and exits. Readiness goes through an inherited pipe (``FERRYMAN_READY_FD``) and, when
systemd runs us (``NOTIFY_SOCKET``), through sd_notify too.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping

from ..net.handoff import ListenerHandoff

log = logging.getLogger(__name__)

UPGRADE_FROM = "FERRYMAN_UPGRADE_FROM"  # the handoff path a new master takes its listeners from
READY_FD = "FERRYMAN_READY_FD"
UPGRADE_TIMEOUT = 30.0


def upgrade(sockets: Mapping[str, socket.socket], config: str, timeout: float = UPGRADE_TIMEOUT) -> int | None:
    """Start a new master on ``config`` (``-c``: a file or an etcd URL) with our listeners;
    its pid once it is ready, None (and the new process stopped) when it failed or was not
    ready in ``timeout``."""
    problem = _config_problem(config)
    if problem is not None:  # the common failure, caught at once: the new process would refuse it
        log.error("upgrade failed, still serving: %s", problem)
        return None
    path = os.path.join(tempfile.gettempdir(), f"ferryman-upgrade-{os.getpid()}.sock")
    read_end, write_end = os.pipe()
    env = {**os.environ, UPGRADE_FROM: path, READY_FD: str(write_end)}
    argv = [sys.executable, "-m", "ferryman", "run", "-c", config]
    try:
        proc = subprocess.Popen(argv, env=env, pass_fds=(write_end,))
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        log.error("upgrade: cannot start %s: %s", " ".join(argv), exc)
        return None
    os.close(write_end)
    deadline = time.monotonic() + timeout
    try:
        ListenerHandoff().serve_blocking(path, sockets, timeout)
        if not _wait_ready(read_end, proc, deadline):
            raise TimeoutError(f"the new master (pid {proc.pid}) did not get ready within {timeout:g}s")
    except (OSError, TimeoutError) as exc:
        log.error("upgrade failed, still serving: %s", exc)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        return None
    finally:
        os.close(read_end)
    log.info("upgrade: new master pid %d is ready; this one (pid %d) drains and exits", proc.pid, os.getpid())
    return proc.pid


def _config_problem(config: str) -> str | None:
    """Why a new master could not start on ``config`` (None: it would): the file or the etcd
    keys are read and validated as ``ferryman check`` does."""
    from ..config.etcd import EtcdError, EtcdSource, is_etcd_url
    from ..config.load import load_file
    from ..errors import ConfigError

    try:
        if is_etcd_url(config):
            source = EtcdSource.parse(config)
            name = source.name
            source.load()
        else:
            name = config
            load_file(config)
    except ConfigError as exc:
        return f"{name} is not valid:\n{exc.render()}"
    except EtcdError as exc:
        return f"{name}: {exc}"
    except ValueError as exc:
        return f"bad etcd URL: {exc}"
    return None


def _wait_ready(fd: int, proc: subprocess.Popen, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        readable, _, _ = select.select([fd], [], [], min(0.2, max(0.0, deadline - time.monotonic())))
        if readable:
            return os.read(fd, 64).startswith(b"READY")
    return False


def take_listeners(timeout: float = 10.0) -> dict[str, socket.socket]:
    """In a new master started by :func:`upgrade`: the old master's sockets by name."""
    path = os.environ.pop(UPGRADE_FROM, "")
    if not path:
        return {}
    sockets = ListenerHandoff.receive_blocking(path, timeout)
    log.info("upgrade: took %d listening sockets from the old master", len(sockets))
    return sockets


def notify_ready() -> None:
    """Tell whoever waits that we serve: the old master (upgrade) and systemd (sd_notify)."""
    fd = os.environ.pop(READY_FD, "")
    if fd.isdigit():
        try:
            os.write(int(fd), b"READY\n")
            os.close(int(fd))
        except OSError as exc:
            log.warning("could not report readiness to the old master: %s", exc)
    sd_notify(f"READY=1\nMAINPID={os.getpid()}")


def sd_notify(message: str) -> bool:
    """Send ``message`` to systemd's notify socket when there is one (Type=notify units)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", address, exc)
        return False
    return True

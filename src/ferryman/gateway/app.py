"""``ferryman run``: bind a validated config's sockets (in the master when there are workers),
then serve it in one process or in a master with workers (and a balancing process)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from functools import partial
from pathlib import Path

from .. import __version__, compiled_core
from ..config.etcd import EtcdError, EtcdSource
from ..config.etcd_watch import EtcdWatchService, MasterWatch, RevisionSlot
from ..config.load import load_file
from ..config.model import Config, ListenerConfig
from ..demo.origin import DemoOrigin
from ..errors import ConfigError
from ..limits.shared_rate import RateBoard
from ..net.addr import Address
from ..net.balance import ConnectionDispatcher
from ..net.listener import bind_socket
from ..net.reuseport import attach_port_steering, bind_reuseport_group
from ..observability import sentry
from ..observability.board import Board
from ..observability.syslog import install_error_log, sink_from_config
from ..runtime import process
from ..server import Server, install_uvloop
from ..server.upgrade import notify_ready, take_listeners, upgrade
from ..server.watch import FileWatch, WatchService
from ..server.workers import run_workers
from ..upstream.health_board import HealthBoard
from .balancer import balance_main
from .runtime import ADMIN, DEMO, Runtime, SourceError, balance_mode

log = logging.getLogger(__name__)




def _take(handed: dict[str, socket.socket], name: str, address: Address, udp: bool) -> socket.socket | None:
    """A handed-over socket for ``name`` if it listens where the config says, else None."""
    sock = handed.pop(name, None)
    if sock is None:
        return None
    try:
        here = sock.getsockname()
    except OSError:
        here = None
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    same = sock.type == kind and (here == address.path if address.is_unix else isinstance(here, tuple) and here[1] == address.port)
    if not same:
        sock.close()
        return None
    return sock


class Gateway:
    """Sockets bound once (in the master when there are workers); services built per process."""

    def __init__(self, config: Config, path: str | Path | None = None, source: EtcdSource | None = None) -> None:
        self.config = config
        self.path = path  # re-read on reload (SIGHUP / ferryman reload)
        self.source = source  # or the etcd keys (-c etcd://...), re-read on reload and watched
        # with workers: which etcd revision the master's reload read, for the workers to read too
        self.slot = RevisionSlot() if source is not None and config.server.workers > 1 else None
        self.reload_by_watch = False  # the master's next reload comes from the etcd watch
        self.sockets: dict[str, socket.socket] = {}
        self.groups: dict[str, list[socket.socket]] = {}  # kernel / port balancing: one socket per worker
        # least_conn: the dispatcher (used by the balancing process) and each worker's channel end
        self.channels: dict[str, tuple[ConnectionDispatcher, list[socket.socket]]] = {}
        # rate limits counted across workers (created here, in the master, before the fork)
        self.rate_board = RateBoard(config.server.workers) if config.server.workers > 1 else None
        self.health_board = HealthBoard() if config.server.workers > 1 else None
        # every worker's metrics, for the worker that answers /metrics (mapped before the fork)
        self.metrics_board = Board.create(config.server.workers) if config.server.workers > 1 else None
        self.demo_sock: socket.socket | None = None
        self.admin_sock: socket.socket | None = None

    def bind(self, handed: dict[str, socket.socket] | None = None) -> None:
        """Bind every listener now, so a clash or a bad address fails before serving starts.
        ``handed``: sockets an old master passed on (binary upgrade), used where they match."""
        handed = dict(handed or {})
        try:
            if self.config.demo is not None:
                self.demo_sock = _take(handed, DEMO, self.config.demo.addr, False) or bind_socket(self.config.demo.addr)
            if self.config.admin is not None:
                self.admin_sock = _take(handed, ADMIN, self.config.admin.addr, False) or bind_socket(self.config.admin.addr)
            workers = self.config.server.workers
            for name, cfg in self.config.listeners.items():
                udp = cfg.protocol == "udp"
                mode = balance_mode(cfg, workers)
                if mode in ("kernel", "port"):
                    group = [_take(handed, f"{name}#{i}", cfg.addr, udp) for i in range(workers)]
                    if all(group):
                        self.groups[name] = group  # type: ignore[assignment]
                        continue
                    for sock in group:
                        if sock is not None:
                            sock.close()
                    group = self.groups[name] = bind_reuseport_group(cfg.addr, workers, backlog=cfg.backlog, udp=udp)  # type: ignore[assignment]
                    if mode == "port":
                        attach_port_steering(group[0], workers)  # type: ignore[arg-type]
                    continue
                self.sockets[name] = _take(handed, name, cfg.addr, udp) or bind_socket(cfg.addr, udp=udp, backlog=cfg.backlog, reuse_port=cfg.reuse_port)
                if mode == "least_conn":
                    self.channels[name] = ConnectionDispatcher.create(workers)
        except BaseException:
            self.close()
            raise
        finally:
            for sock in handed.values():  # listeners the new config no longer has
                sock.close()

    @property
    def config_arg(self) -> str | None:
        """``-c`` for a new master (binary upgrade): the file, or the etcd URL as given."""
        if self.source is not None:
            return self.source.text
        return str(self.path) if self.path is not None else None

    def master_sockets(self) -> dict[str, socket.socket]:
        """What a binary upgrade hands on when there are workers: the master's sockets."""
        out = {name: sock for name, sock in self.sockets.items() if sock.fileno() >= 0}
        for name, group in self.groups.items():
            out.update((f"{name}#{i}", sock) for i, sock in enumerate(group))
        if self.demo_sock is not None and self.demo_sock.fileno() >= 0:
            out[DEMO] = self.demo_sock
        if self.admin_sock is not None and self.admin_sock.fileno() >= 0:
            out[ADMIN] = self.admin_sock
        return out

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        for group in self.groups.values():
            for sock in group:
                sock.close()
        for dispatcher, ends in self.channels.values():
            dispatcher.close()
            for end in ends:
                end.close()
        for sock in (self.demo_sock, self.admin_sock):
            if sock is not None:
                sock.close()

    def channel_for(self, name: str, worker: int) -> socket.socket | None:
        """least_conn, in a worker: its end of the listener's channel (the other ends, and
        the dispatcher's, are closed here: the master keeps them)."""
        found = self.channels.get(name)
        if found is None:
            return None
        dispatcher, ends = found
        for sock in dispatcher.channels:
            sock.close()
        for index, end in enumerate(ends):
            if index != worker:
                end.close()
        return ends[worker]

    def socket_for(self, name: str, cfg: ListenerConfig, worker: int = 0) -> socket.socket:
        """This worker's socket for a listener: the one bound at start (its own member of a
        reuseport group, whose other members it closes); a listener added (or moved) by a
        reload since then is bound anew with SO_REUSEPORT, beside the other workers' ones."""
        group = self.groups.get(name)
        if group is not None and all(s.fileno() >= 0 for s in group):
            if self.config.server.workers > 1:  # a worker: the master keeps every member open
                for index, sock in enumerate(group):
                    if index != worker:
                        sock.close()
            return group[worker]
        sock = self.sockets.get(name)
        if sock is not None and sock.fileno() >= 0:
            return sock
        return bind_socket(cfg.addr, udp=cfg.protocol == "udp", backlog=cfg.backlog, reuse_port=True)

    def reload_config(self) -> None:
        """Master side of a reload (with workers): re-read the file so a worker started later
        (after a crash) starts from the config the others reloaded to; close the master's
        copies of sockets whose listener went away or moved."""
        if self.path is None and self.source is None:
            return
        try:
            config = load_file(self.path) if self.source is None else self._load_etcd()  # type: ignore[arg-type]
        except ConfigError as exc:
            log.error("master: reload refused (workers keep their config):\n%s", exc.render())
            return
        except EtcdError as exc:
            log.error("master: reload failed (workers keep their config): %s: %s", self.source.name if self.source else "", exc)
            return
        for table in (self.sockets, self.groups):
            for name in list(table):
                new = config.listeners.get(name)
                old = self.config.listeners.get(name)
                if new is None or old is None or (new.addr, new.protocol, new.balance) != (old.addr, old.protocol, old.balance):
                    held = table.pop(name)  # type: ignore[attr-defined]
                    for sock in held if isinstance(held, list) else [held]:
                        sock.close()
        self.config = config

    def _load_etcd(self) -> Config:
        """The master's read of a reload; the workers are told which revision it was."""
        assert self.source is not None
        by_watch, self.reload_by_watch = self.reload_by_watch, False
        revision = 0  # not read: the workers read the latest
        try:
            config = self.source.load()
            revision = self.source.revision
        except ConfigError:
            revision = self.source.revision  # read but refused: the workers refuse the same
            raise
        finally:
            if self.slot is not None:
                self.slot.put(revision, by_watch)
        return config

    def make_server(self, worker: int = 0) -> Server:
        """Everything one process serves: listeners, health checks, the demo origin."""
        config = self.config
        server = Server(grace_period=config.server.grace_period)
        runtime = (Runtime if self.source is None else EtcdRuntime)(self, server, worker)
        runtime.build(config)
        server.on_reload.append(runtime.reload)
        server.on_reopen.append(runtime.reopen_logs)
        if config.server.workers == 1:  # with workers, the master handles readiness and upgrades
            server.on_started.append(notify_ready)
            server.on_upgrade.append(runtime.upgrade)
        if config.server.watch and self.path is not None and config.server.workers == 1:

            def changed() -> None:  # the reload history names the file watch as the cause
                runtime.history.expect("file watch")
                server.request_reload()

            server.add_background(WatchService(self.path, changed))
        if self.source is not None and config.server.workers == 1:  # with workers, the master watches

            def etcd_changed() -> None:
                runtime.history.expect("etcd")
                server.request_reload()

            server.add_background(EtcdWatchService(self.source, etcd_changed))
        if self.demo_sock is not None:
            if worker == 0:
                server.add_background(DemoOrigin(self.demo_sock, grace_period=config.server.grace_period))
            else:
                # only worker 0 serves the origin; an inherited copy left open here would take
                # connections into a backlog nobody accepts from once worker 0 has stopped
                self.demo_sock.close()
        return server


class EtcdRuntime(Runtime):
    """A runtime whose reloads read the etcd keys (``-c etcd://...``) instead of a file."""

    def __init__(self, gateway: Gateway, server: Server, worker: int) -> None:
        super().__init__(gateway, server, worker)
        self.etcd_source = gateway.source  # the admin API shows and writes the keys through it

    async def read_config(self) -> tuple[Config, str]:
        source = self.etcd_source
        assert source is not None
        revision, by_watch = self.gateway.slot.get() if self.gateway.slot is not None else (None, False)
        if by_watch:  # with workers: the master's etcd watch caused this SIGHUP
            self.history.expect("etcd")
        try:
            config = await asyncio.to_thread(source.load, revision)
        except EtcdError as exc:
            raise SourceError(f"{source.name}: {exc}") from exc
        return config, f"{source.name} revision {source.revision}"


def serve(config: Config, path: str | Path | None = None, source: EtcdSource | None = None) -> int:
    """Run until SIGTERM/SIGINT (SIGHUP reloads ``path``, or the etcd keys of ``source``,
    which are also watched). Returns the process exit code."""
    try:
        setup_reporting(config)
    except ValueError as exc:  # e.g. no syslog socket at the configured path
        log.error("server.error_log_syslog: %s", exc)
        return 1
    gateway = Gateway(config, path, source)
    gateway.bind(take_listeners())
    pid_file = Path(config.server.pid_file) if config.server.pid_file else None
    etcd_watch: MasterWatch | None = None
    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")  # after an upgrade: replaces the old master's
    try:
        log.info("ferryman %s (%s)", __version__, "compiled core" if compiled_core() else "pure Python")
        if source is not None:
            log.info("config: %s at revision %d (watched: a change of its keys reloads)", source.name, source.revision)
        for name, cfg in config.listeners.items():
            target = f"upstream {cfg.upstream}" if cfg.upstream else f"routes {', '.join(cfg.routes)}"
            log.info("listener %s: %s %s → %s", name, cfg.protocol, cfg.addr, target)
        if config.server.workers == 1:
            install_uvloop()
            try:
                gateway.make_server().run()
            finally:
                sentry.flush()
            return 0
        watch = FileWatch(path) if config.server.watch and path is not None else None
        changed = watch.poll if watch is not None else None
        if source is not None:
            etcd_watch = MasterWatch(source)
            changed = partial(_etcd_changed, gateway, etcd_watch)
            etcd_watch.start()
        return run_workers(
            config.server.workers, lambda index: _worker(gateway, index), config.server.grace_period, on_stop=gateway.close,
            balancer_main=(lambda: balance_main(gateway)) if gateway.channels else None,
            on_reload=gateway.reload_config, changed=changed,
            on_upgrade=lambda: gateway.config_arg is not None and upgrade(gateway.master_sockets(), gateway.config_arg) is not None,
            on_started=notify_ready,
        )
    finally:
        if etcd_watch is not None:
            etcd_watch.stop()
        gateway.close()
        if pid_file is not None and _pid_in(pid_file) == os.getpid():  # not a successor's
            pid_file.unlink(missing_ok=True)


def _etcd_changed(gateway: Gateway, watch: MasterWatch) -> bool:
    """The master's poll: the etcd keys changed (the reload that follows says so to the workers)."""
    if watch.poll():
        gateway.reload_by_watch = True
        return True
    return False


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _worker(gateway: Gateway, index: int) -> None:
    """A forked worker: say which one this process is, then serve."""
    process.attach(index, gateway.config.server.workers, gateway.rate_board)
    install_uvloop()
    try:
        gateway.make_server(index).run()
    finally:
        sentry.flush()  # a worker ends with os._exit: no atexit handler would send what is pending


def setup_reporting(config: Config) -> None:
    """Before any fork: the error log to syslog (``server.error_log``) and Sentry (``[sentry]``)."""
    if config.server.error_log == "syslog":
        install_error_log(sink_from_config(config.server.error_log_syslog))
    if config.sentry is not None:
        sentry.setup_from_config(config.sentry)

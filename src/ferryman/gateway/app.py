"""``ferryman run``: turn a validated config into a running process (or a master + workers)."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from ..config.model import Config, ListenerConfig
from ..demo.origin import DemoOrigin
from ..net.connect import Connector
from ..net.listener import bind_socket
from ..net.pump import PipePool
from ..observability.accesslog import AccessLog
from ..runtime.upstreams import Upstream, build_upstreams
from ..server import Server, install_uvloop
from ..server.workers import run_workers
from .http import build_filters, build_http_service, build_router
from .l4 import build_listener_service

log = logging.getLogger(__name__)


class Gateway:
    """Sockets bound once (in the master when there are workers); services built per process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.sockets: dict[str, socket.socket] = {}
        self.demo_sock: socket.socket | None = None

    def bind(self) -> None:
        """Bind every listener now, so a clash or a bad address fails before serving starts."""
        try:
            if self.config.demo is not None:
                self.demo_sock = bind_socket(self.config.demo.addr)
            for name, cfg in self.config.listeners.items():
                shared = cfg.protocol == "tcp" or self.config.server.workers == 1
                sock = bind_socket(cfg.addr, udp=cfg.protocol == "udp", backlog=cfg.backlog, reuse_port=cfg.reuse_port or not shared)
                self.sockets[name] = sock
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        if self.demo_sock is not None:
            self.demo_sock.close()

    def make_server(self, worker: int = 0) -> Server:
        """Everything one process serves: listeners, health checks, the demo origin."""
        config = self.config
        server = Server(grace_period=config.server.grace_period)
        upstreams = build_upstreams(config)
        filters = build_filters(config)
        pipes, connector = PipePool(), Connector()
        for name, cfg in config.listeners.items():
            sock = self.sockets[name]
            if cfg.protocol == "http":
                access_log = AccessLog(cfg.access_log, cfg.access_log_format) if cfg.access_log != "off" else None
                if access_log is not None:
                    server.add_background(AccessLogService(access_log))
                router = build_router(config, cfg, upstreams, filters)
                server.add_service(build_http_service(name, cfg, router, sock, connector, _used_upstreams(config, cfg, upstreams), access_log))
                continue
            if cfg.protocol == "udp" and config.server.workers > 1 and worker > 0:
                # each worker has its own SO_REUSEPORT UDP socket: the kernel keeps a client on one worker
                self.sockets[name].close()  # worker 0's, inherited: unread here, it would only hold datagrams
                sock = bind_socket(cfg.addr, udp=True, reuse_port=True)
            server.add_service(build_listener_service(name, cfg, upstreams[cfg.upstream], pipes=pipes, connector=connector, sock=sock))
        for upstream in upstreams.values():
            if upstream.checker is not None:
                server.add_background(upstream.checker)
        if self.demo_sock is not None:
            if worker == 0:
                server.add_background(DemoOrigin(self.demo_sock, grace_period=config.server.grace_period))
            else:
                # only worker 0 serves the origin; an inherited copy left open here would take
                # connections into a backlog nobody accepts from once worker 0 has stopped
                self.demo_sock.close()
        return server


def _used_upstreams(config: Config, cfg: ListenerConfig, upstreams: dict[str, Upstream]) -> dict[str, Upstream]:
    names = [cfg.upstream] if cfg.upstream else [config.routes[r].upstream for r in cfg.routes]
    return {n: upstreams[n] for n in names if n}


class AccessLogService:
    """Background service: flushes and closes an access log when the server stops."""

    def __init__(self, log: AccessLog) -> None:
        self.log = log

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.log.close(timeout=5.0)


def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code."""
    gateway = Gateway(config)
    gateway.bind()
    pid_file = Path(config.server.pid_file) if config.server.pid_file else None
    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")
    try:
        for name, cfg in config.listeners.items():
            target = f"upstream {cfg.upstream}" if cfg.upstream else f"routes {', '.join(cfg.routes)}"
            log.info("listener %s: %s %s → %s", name, cfg.protocol, cfg.addr, target)
        if config.server.workers == 1:
            install_uvloop()
            gateway.make_server().run()
            return 0
        return run_workers(config.server.workers, lambda index: _worker(gateway, index), config.server.grace_period, on_stop=gateway.close)
    finally:
        gateway.close()
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)


def _worker(gateway: Gateway, index: int) -> None:
    install_uvloop()
    gateway.make_server(index).run()

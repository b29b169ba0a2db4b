"""One process's live objects for the current config generation, and hot reload."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..acme.service import AcmeService
from ..admin.api import AdminApi
from ..admin.history import ReloadHistory
from ..config.load import load_file
from ..config.model import Config, ListenerConfig
from ..config.tls import cert_store, refresh
from ..errors import ConfigError
from ..filters.base import Filter
from ..http.service import HttpProxyService
from ..net.connect import Connector
from ..net.listener import bind_socket
from ..net.pump import PipePool
from ..observability.accesslog import AccessLog
from ..observability.board import MetricsPublisher
from ..observability.metrics import Registry
from ..observability.syslog import error_log_sink, sink_from_config
from ..observability.tracing import ExportService, Tracer, build_tracer
from ..runtime import process
from ..runtime.upstreams import Upstream, build_upstreams
from ..server import Server
from ..server.upgrade import upgrade
from ..upstream.health_board import HealthSync
from ..upstream.resolver import FirstResolution
from .http import build_filters, build_http_service, build_router, counts_connections
from .l4 import CountingGatewayL4, GatewayL4, build_listener_service

if TYPE_CHECKING:
    from .app import Gateway

log = logging.getLogger(__name__)


class SourceError(Exception):
    """The config source could not be read (an etcd cluster out of reach): the reload fails
    and the current config keeps serving."""

DEMO = "__demo__"  # the demo origin's socket in a binary upgrade's handoff
ADMIN = "__admin__"  # the admin listener's


class Listener:
    """One served listener: its config, its service and its access log."""

    __slots__ = ("cfg", "service", "access_log")

    def __init__(self, cfg: ListenerConfig, service: Any, access_log: AccessLog | None) -> None:
        self.cfg, self.service, self.access_log = cfg, service, access_log


class Runtime:
    """One process's live objects for the current config generation, and hot reload.

    A reload loads → validates → builds → swaps: unchanged upstreams (health state, pools,
    balancer position) and filters (rate-limit counters) are kept; a listener whose own
    settings did not change keeps its service and socket and only gets a new router (one
    reference assignment: requests in flight keep the route they pinned); a changed listener
    gets a new service on the same socket; removed listeners drain and close.
    """

    def __init__(self, gateway: Gateway, server: Server, worker: int) -> None:
        self.gateway, self.server, self.worker = gateway, server, worker
        # with workers, worker 0 alone runs the active checks; the others follow its board
        self.checks_health = gateway.health_board is None or worker == 0
        self.registry = Registry()  # this process's metrics
        # with workers this takes the worker's slot of the board over (carrying a dead predecessor's counts)
        self.metrics = MetricsPublisher(gateway.metrics_board, worker, self.registry)
        self.metrics_text = self.metrics.exposition  # GET /metrics on the admin listener
        self.config: Config | None = None
        self.upstreams: dict[str, Upstream] = {}
        self.filters: dict[str, Filter] = {}
        self.listeners: dict[str, Listener] = {}
        self.pipes, self.connector = PipePool(), Connector()
        self.generation = 0
        # ACME certificates: worker 0 obtains and renews them; every process serves the new files
        self.acme = AcmeService(leader=worker == 0, refresh=self._refresh_certificates)
        self.history = ReloadHistory()  # shown by the admin API (the worker serving it sees every reload)
        self.tracer: Tracer | None = None  # [tracing]: read at start (each worker its own exporter thread)

    def build(self, config: Config) -> None:
        """The first generation: services are added to the server before it starts."""
        self.config = config
        self.acme.configure(config)  # before the listeners load the certificate files
        if config.tracing is not None:
            self.tracer = build_tracer(config.tracing)
            self.server.add_background(ExportService(self.tracer))
        self.upstreams = build_upstreams(config)
        self.filters = build_filters(config, metrics=self.registry)
        resolvers = [u.resolver for u in self.upstreams.values() if u.resolver is not None]
        if resolvers:
            # ahead of the listeners (Server.serve awaits each service's start() in order): they
            # open once every backend name has resolved, or after FIRST_RESOLUTION_TIMEOUT
            self.server.add_service(FirstResolution(resolvers))
        for name, cfg in config.listeners.items():
            if balance_mode(cfg, config.server.workers) == "fixed" and self.worker != cfg.balance_worker:
                self.gateway.sockets[name].close()  # another worker serves it
                continue
            sock = self.gateway.socket_for(name, cfg, self.worker)
            listener = self._make(name, cfg, sock, self.gateway.channel_for(name, self.worker))
            self.listeners[name] = listener
            self.server.add_service(listener.service)
        for upstream in self.upstreams.values():
            if upstream.checker is not None and self.checks_health:
                self.server.add_background(upstream.checker)
            if upstream.resolver is not None:
                self.server.add_background(upstream.resolver)
        if self.gateway.health_board is not None:
            self.server.add_background(HealthSync(self.gateway.health_board, lambda: self.upstreams, leader=self.worker == 0))
        self.registry.collect("runtime", self.gauges)
        self.registry.collect("telemetry", lambda: telemetry_counts(self.listeners, self.tracer))
        self.server.add_background(self.metrics)
        self.server.add_background(self.acme)
        self.server.on_started.append(self.acme.ready)
        self._serve_admin(config)
        self.generation = 1
        self.history.add("start", True, 1, f"serving {len(config.listeners)} listeners, {len(config.routes)} routes, {len(config.upstreams)} upstreams")

    def _serve_admin(self, config: Config) -> None:
        """The admin API, in worker 0 (the other workers close their copy of its socket)."""
        sock = self.gateway.admin_sock
        if sock is None or config.admin is None:
            return
        if self.worker != 0:
            sock.close()
            return
        forked = config.server.workers > 1 and process.CURRENT.workers > 1

        async def reload() -> bool:
            if forked:  # every process reloads: the master re-reads the file and tells them
                os.kill(os.getppid(), signal.SIGHUP)
                return True
            return await self.reload()

        api = AdminApi(
            self, self.gateway.path, token=config.admin.token, users=config.admin.users, reload=reload, metrics=self.metrics_text,
            snapshot=self.metrics.collect, history=self.history, workers=config.server.workers,
        )
        self.server.add_service(HttpProxyService("admin", sock, api, forwarded_headers=False, header_timeout=30.0, http2=False))

    def _make(self, name: str, cfg: ListenerConfig, sock: socket.socket, channel: socket.socket | None = None) -> Listener:
        config = self.config
        assert config is not None
        if cfg.protocol != "http":
            sni_routes = {pattern: self.upstreams[u] for pattern, u in cfg.sni_upstreams.items()}
            service = build_listener_service(
                name, cfg, self.upstreams[cfg.upstream], pipes=self.pipes, connector=self.connector, sock=sock, channel=channel,  # type: ignore[index]
                sni_routes=sni_routes, metrics=self.registry,
            )
            return Listener(cfg, service, None)
        sink = sink_from_config(cfg.access_log_syslog) if cfg.access_log == "syslog" else None
        access_log = AccessLog(cfg.access_log, cfg.access_log_format, sink=sink) if cfg.access_log != "off" else None
        if access_log is not None:
            self.server.add_background(AccessLogService(access_log))
        router = build_router(config, cfg, self.upstreams, self.filters, listener=name, metrics=self.registry)
        service = build_http_service(
            name, cfg, router, sock, self.connector, _used_upstreams(config, cfg, self.upstreams), access_log, channel, cert_store(config, cfg), metrics=self.registry, tracer=self.tracer
        )
        return Listener(cfg, service, access_log)

    async def upgrade(self) -> None:
        """SIGUSR2 in a single process: hand our listening sockets to a new ferryman started
        from the installed code; once it serves, drain and exit (a failure keeps us serving)."""
        config = self.gateway.config_arg
        if config is None:
            log.warning("upgrade: no config file or etcd URL to start a new process from")
            return
        sockets = {name: listener.service.sock for name, listener in self.listeners.items()}
        for name, sock in ((DEMO, self.gateway.demo_sock), (ADMIN, self.gateway.admin_sock)):
            if sock is not None and sock.fileno() >= 0:
                sockets[name] = sock
        pid = await asyncio.get_running_loop().run_in_executor(None, upgrade, sockets, config)
        if pid is not None:
            self.server.shutdown()

    def reopen_logs(self) -> None:
        for listener in self.listeners.values():
            if listener.access_log is not None:
                listener.access_log.reopen()

    async def reload(self) -> bool:
        """Re-read the config file and apply it; a bad one is refused and the old one serves on."""
        ok, message = await self._reload()
        self.registry.reloaded(ok)
        self.history.reloaded(ok, self.generation, message)
        return ok

    def gauges(self) -> Iterator[tuple[str, tuple[str, ...], int]]:
        """The metrics collector of this process's gauges (called at each snapshot)."""
        for name, listener in self.listeners.items():
            service = listener.service
            if hasattr(service, "relay"):  # udp: live sessions (no relay before the service starts)
                yield ("ferryman_connections_active", (name,), len(service.relay.sessions) if service.relay is not None else 0)
                continue
            yield ("ferryman_connections_active", (name,), len(service.connections))
            exchanges = getattr(service, "exchanges", None)  # http
            if exchanges is not None:
                yield ("ferryman_http_requests_in_flight", (name,), len(exchanges))
                yield ("ferryman_upstream_pool_idle_connections", (name,), service.pool_idle)
        for name, upstream in self.upstreams.items():
            if upstream.members:
                continue  # a nested upstream's backends are its members'
            for backend in upstream.balancer.backends:  # type: ignore[union-attr]
                yield ("ferryman_backend_healthy", (name, backend.key), 1 if backend.healthy else 0)
                yield ("ferryman_backend_active_connections", (name, backend.key), backend.active)
                yield ("ferryman_backend_requests_total", (name, backend.key), backend.requests)
                yield ("ferryman_backend_failures_total", (name, backend.key), backend.failures)

    async def _reload(self) -> tuple[bool, str]:
        """Whether it applied, and what to say about it (every error with its TOML path)."""
        try:
            read = await self.read_config()
        except ConfigError as exc:
            log.error("reload refused, still serving generation %d:\n%s", self.generation, exc.render())
            return False, f"refused, still serving generation {self.generation}:\n{exc.render()}"
        except SourceError as exc:
            log.error("reload failed, still serving generation %d: %s", self.generation, exc)
            return False, f"failed, still serving generation {self.generation}: {exc}"
        if read is None:
            log.warning("reload: no config file to read (started from an in-memory config)")
            return False, "no config file to read (started from an in-memory config)"
        config, name = read
        try:
            summary = await self.apply(config)
        except Exception as exc:
            log.exception("reload failed while applying %s; still serving generation %d", name, self.generation)
            return False, f"failed while applying, still serving generation {self.generation}: {exc!r}"
        return True, f"{name}: {summary}"

    async def read_config(self) -> tuple[Config, str] | None:
        """What a reload applies and what to call it (None: started from an in-memory
        config). Raises ConfigError for an invalid one, SourceError for an unreadable source."""
        path = self.gateway.path
        if path is None:
            return None
        return load_file(path), str(path)

    async def apply(self, config: Config) -> str:
        """Swap ``config`` in (see the class docstring); returns what changed, in a line."""
        if self.config is not None and (config.server, config.demo, config.admin, config.tracing, config.sentry) != (
                self.config.server, self.config.demo, self.config.admin, self.config.tracing, self.config.sentry):
            log.warning("reload: [server], [demo], [admin], [tracing] and [sentry] changes apply at the next restart")
        old_upstreams, old_filters, old_listeners = self.upstreams, self.filters, self.listeners
        upstreams = build_upstreams(config, old_upstreams)
        previous = {id(u) for u in old_upstreams.values()}
        fresh = [u.resolver for u in upstreams.values() if u.resolver is not None and id(u) not in previous]
        for resolver in fresh:
            resolver.start()
            self.server.add_background(resolver)
        if fresh:  # new names resolve before a router points at them (bounded by FIRST_RESOLUTION_TIMEOUT)
            await asyncio.gather(*(resolver.resolve_now() for resolver in fresh))
        filters = build_filters(config, old_filters, self.config, self.registry)
        self.config, self.upstreams, self.filters = config, upstreams, filters
        self.acme.configure(config)
        listeners: dict[str, Listener] = {}
        changed, added = [], []
        for name, cfg in config.listeners.items():
            old = old_listeners.get(name)
            if old is not None and self._swap(old, cfg):
                listeners[name] = old
                continue
            sock = self._socket_for(cfg, old)
            listener = self._make(name, cfg, sock)
            await _start(listener.service)
            self.server.add_service(listener.service)
            listeners[name] = listener
            (changed if old is not None else added).append(name)
        self.listeners = listeners
        retired = [old_listeners[n] for n in changed] + [l for n, l in old_listeners.items() if n not in config.listeners]
        for listener in retired:
            asyncio.get_running_loop().create_task(self._retire(listener))
        kept = {id(u) for u in upstreams.values()}
        for upstream in upstreams.values():
            if upstream.checker is not None and not upstream.checker.running and self.checks_health:
                upstream.checker.start()
        for upstream in old_upstreams.values():
            if id(upstream) in kept:
                continue
            if upstream.checker is not None:
                await upstream.checker.stop()
            if upstream.passive is not None:
                upstream.passive.stop()
            if upstream.resolver is not None:
                await upstream.resolver.stop()
                if upstream.resolver in self.server.background:
                    self.server.background.remove(upstream.resolver)
        for name, old_filter in old_filters.items():
            if filters.get(name) is not old_filter:
                old_filter.close()
        self.generation += 1
        removed = [n for n in old_listeners if n not in config.listeners]
        summary = "generation %d applied (listeners added %s, changed %s, removed %s; upstreams kept %d of %d)" % (
            self.generation, ", ".join(added) or "-", ", ".join(changed) or "-", ", ".join(removed) or "-",
            len(kept & {id(u) for u in old_upstreams.values()}), len(upstreams))
        log.info("reload: %s", summary)
        return summary

    def _refresh_certificates(self) -> None:
        """An ACME certificate file changed (issued here or by worker 0): every TLS listener
        re-reads its certificates; established connections keep theirs."""
        for name, listener in self.listeners.items():
            store = getattr(listener.service, "tls", None)
            if store is not None and self.config is not None:
                try:
                    refresh(store, self.config, listener.cfg)
                except ValueError as exc:
                    log.error("listener %s: certificates not swapped, still serving the old ones: %s", name, exc)

    def _swap(self, old: Listener, cfg: ListenerConfig) -> bool:
        """Point an unchanged listener at the new generation; False when it must be rebuilt."""
        if old.cfg.model_dump(exclude={"routes", "upstream"}) != cfg.model_dump(exclude={"routes", "upstream"}):
            if getattr(old.service, "channel", None) is None:
                return False
            # a least_conn listener's channel comes from before the fork: keep the service
            log.warning("reload: listener settings of least_conn listener %r apply at the next restart", cfg.addr)
        service = old.service
        if cfg.protocol == "http":
            service.app.router = build_router(self.config, cfg, self.upstreams, self.filters, listener=service.name, metrics=self.registry)  # type: ignore[arg-type]
            if service.tls is not None:
                refresh(service.tls, self.config, cfg)  # type: ignore[arg-type]
        else:
            upstream = self.upstreams[cfg.upstream]  # type: ignore[index]
            app = (CountingGatewayL4 if counts_connections(upstream.balancer) else GatewayL4)(upstream, self.registry.l4(service.name, upstream.name))
            if type(app) is not type(service.app):
                return False
            service.app = app
        old.cfg = cfg
        return True

    def _socket_for(self, cfg: ListenerConfig, old: Listener | None) -> socket.socket:
        """The old listener's socket (duplicated) when the address is the same, else a new bind."""
        if old is not None and old.cfg.addr == cfg.addr and old.cfg.protocol == cfg.protocol:
            sock = old.service.sock
            return socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        shared = self.config is not None and self.config.server.workers > 1
        return bind_socket(cfg.addr, udp=cfg.protocol == "udp", backlog=cfg.backlog, reuse_port=cfg.reuse_port or shared)

    async def _retire(self, listener: Listener) -> None:
        service = listener.service
        service.stop_accepting()
        try:
            await service.drain(self.server.grace_period)
        finally:
            if service in self.server.services:
                self.server.services.remove(service)
            log_ = listener.access_log
            if log_ is not None:  # its writer thread, file or syslog socket go with it
                self.server.background[:] = [b for b in self.server.background if getattr(b, "log", None) is not log_]
                await asyncio.to_thread(log_.close, 5.0)


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


async def _start(service: Any) -> None:
    started = service.start()
    if inspect.isawaitable(started):
        await started


def balance_mode(cfg: ListenerConfig, workers: int) -> str:
    """How connections of a listener reach workers; one process needs no balancing. UDP
    defaults to kernel: a shared datagram socket would scatter a client's datagrams."""
    if workers == 1 or cfg.addr.is_unix:
        return "shared"
    if cfg.protocol == "udp" and cfg.balance == "shared":
        return "kernel"
    return cfg.balance


def telemetry_counts(listeners: dict[str, Listener], tracer: Tracer | None) -> Iterator[tuple[str, tuple[str, ...], int]]:
    """Metrics collector: log lines lost (access logs, the syslog error log) and trace spans."""
    for name, listener in listeners.items():
        if listener.access_log is not None:
            yield ("ferryman_log_lines_dropped_total", ("access", name), listener.access_log.lost)
    sink = error_log_sink()
    if sink is not None:
        yield ("ferryman_log_lines_dropped_total", ("error", ""), sink.dropped)
    if tracer is not None and tracer.exporter is not None:
        yield ("ferryman_trace_spans_total", ("exported",), tracer.exporter.exported)
        yield ("ferryman_trace_spans_total", ("dropped",), tracer.exporter.dropped)


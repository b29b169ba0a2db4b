"""The config-driven L4 app, and the service ``ferryman run`` builds for each listener."""

from __future__ import annotations

import socket
from typing import Any

from ..config.model import ListenerConfig
from ..errors import ProxyError
from ..l4.hooks import ProxyL4
from ..l4.session import L4Session
from ..l4.tcp import TcpProxyService
from ..l4.udp import UdpProxyService
from ..net.connect import Connector, Peer
from ..net.listener import bind_socket
from ..net.pump import PipePool
from ..observability.metrics import L4Metrics, Registry
from ..runtime.upstreams import Upstream
from ..upstream.backend import Backend
from .http import counts_connections


class _Pick:
    """Per-connection ctx: the backend chosen, whether its connection count was raised, and
    the counters of its upstream."""

    __slots__ = ("backend", "counted", "metrics")

    def __init__(self, backend: Backend, metrics: L4Metrics) -> None:
        self.backend = backend
        self.counted = False
        self.metrics = metrics


class GatewayL4(ProxyL4):
    """Pick backends from one upstream (see :class:`CountingGatewayL4` for least_conn / p2c)."""

    def __init__(self, upstream: Upstream, metrics: L4Metrics | None = None) -> None:
        self.upstream = upstream
        self.metrics = metrics if metrics is not None else L4Metrics("", upstream.name)
        self.max_tries = upstream.config.max_tries

    async def upstream_peer(self, session: L4Session) -> Peer:
        upstream = self.upstream_for(session)
        if session.candidates is None:
            session.candidates = upstream.candidates(session.client_ip if upstream.config.lb == "consistent_hash" else "")
        backend = upstream.next_backend(session.candidates, session.last_error)
        backend.requests += 1
        session.ctx = _Pick(backend, self.metrics_for(upstream))
        return upstream.peer_for(backend)

    def upstream_for(self, session: L4Session) -> Upstream:
        """The upstream of this connection (one per listener here; by SNI in the subclass)."""
        return self.upstream

    def metrics_for(self, upstream: Upstream) -> L4Metrics:
        """The counters of connections to ``upstream`` (one upstream here)."""
        return self.metrics

    async def logging(self, session: L4Session, error: ProxyError | None) -> None:
        pick: _Pick | None = session.ctx
        (pick.metrics if pick is not None else self.metrics).observe(session, error)

    def fail_to_connect(self, session: L4Session, peer: Peer, error: ProxyError) -> ProxyError:
        backend = session.ctx.backend
        backend.failures += 1
        if backend.passive is not None:
            backend.passive.failure(backend, str(error))
        # with no backend left a retry could only fail again, logging the same failure twice
        if error.retry and not session.candidates.has_more():
            error.retry = False
        return error


class CountingGatewayL4(GatewayL4):
    """Also keeps ``Backend.active`` current, which least_conn and p2c choose by; a class of
    its own so the other algorithms skip two hook calls per connection."""

    async def connected_to_upstream(self, session: L4Session, peer: Peer) -> None:
        pick: _Pick = session.ctx
        pick.backend.active += 1
        pick.counted = True

    async def logging(self, session: L4Session, error: ProxyError | None) -> None:
        pick: _Pick | None = session.ctx
        if pick is not None and pick.counted:
            pick.backend.active -= 1
            pick.counted = False
        (pick.metrics if pick is not None else self.metrics).observe(session, error)




class SniGatewayL4(GatewayL4):
    """Route TLS connections by the ClientHello's server name, without terminating them:
    exact names first, then ``*.example.com`` (one label), else the listener's upstream."""

    def __init__(self, upstream: Upstream, routes: dict[str, Upstream], metrics: Registry | None = None, listener: str = "") -> None:
        registry = metrics if metrics is not None else Registry()
        super().__init__(upstream, registry.l4(listener, upstream.name))
        self.counters = {id(u): registry.l4(listener, u.name) for u in routes.values()}
        self.counters[id(upstream)] = self.metrics
        self.exact = {name.lower(): u for name, u in routes.items() if not name.startswith("*.")}
        self.wildcard = {name[1:].lower(): u for name, u in routes.items() if name.startswith("*.")}  # ".example.com"
        self.max_tries = max([upstream.config.max_tries, *(u.config.max_tries for u in routes.values())])

    def upstream_for(self, session: L4Session) -> Upstream:
        name = (session.sni or "").lower()
        if name:
            found = self.exact.get(name)
            if found is not None:
                return found
            dot = name.find(".")
            if dot > 0:
                found = self.wildcard.get(name[dot:])
                if found is not None:
                    return found
        return self.upstream

    def metrics_for(self, upstream: Upstream) -> L4Metrics:
        return self.counters[id(upstream)]


def build_listener_service(
    name: str, cfg: ListenerConfig, upstream: Upstream, *, pipes: PipePool, connector: Connector, sock: socket.socket | None = None,
    channel: socket.socket | None = None, sni_routes: dict[str, Upstream] | None = None, metrics: Registry | None = None,
) -> Any:
    """Bind (unless given a socket) and wrap one tcp/udp listener in its service."""
    udp = cfg.protocol == "udp"
    if sock is None:
        sock = bind_socket(cfg.addr, udp=udp, backlog=cfg.backlog, reuse_port=cfg.reuse_port)
    if sni_routes:
        app: GatewayL4 = SniGatewayL4(upstream, sni_routes, metrics, name)
    else:
        counters = metrics.l4(name, upstream.name) if metrics is not None else L4Metrics(name, upstream.name)
        app = CountingGatewayL4(upstream, counters) if counts_connections(upstream.balancer) else GatewayL4(upstream, counters)
    if udp:
        return UdpProxyService(name, sock, app, idle_timeout=cfg.session_timeout, max_sessions=cfg.max_sessions)
    return TcpProxyService(
        name,
        sock,
        app,
        connector=connector,
        pipes=pipes,
        accept_proxy=cfg.proxy_protocol,
        trusted=cfg.proxy_protocol_trusted,
        proxy_header_timeout=cfg.proxy_protocol_timeout,
        max_connections=cfg.max_connections,
        idle_timeout=cfg.idle_timeout,
        termination_delay=cfg.termination_delay,
        splice=cfg.splice,
        channel=channel,
        sni_peek=bool(sni_routes),
        sni_timeout=cfg.sni_timeout,
    )

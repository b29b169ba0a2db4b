"""The config-driven HTTP app for ``protocol = "http"`` listeners (one upstream each)."""

from __future__ import annotations

import socket

from ..config.model import ListenerConfig
from ..errors import ErrorKind, ErrorSource, ProxyError
from ..http.hooks import ProxyHttp
from ..http.service import HttpProxyService
from ..http.session import Session
from ..net.connect import Connector, Peer
from ..runtime.upstreams import Upstream


class GatewayHttp(ProxyHttp):
    """Choose backends from one upstream, failing over to the next on connect errors."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.max_tries = upstream.config.max_tries
        self._hash = upstream.config.lb == "consistent_hash"

    async def upstream_peer(self, session: Session) -> Peer:
        candidates = session.ctx
        if candidates is None:
            key = session.client_ip.encode() if self._hash else b""
            candidates = session.ctx = self.upstream.balancer.select(key, self.max_tries)
        backend = next(candidates, None)
        if backend is None:
            if session.last_error is not None:
                raise session.last_error
            raise ProxyError(ErrorKind.NO_BACKEND, ErrorSource.UPSTREAM, context=f"upstream {self.upstream.name!r} has no healthy backend")
        return self.upstream.peer_for(backend)


def build_http_service(name: str, cfg: ListenerConfig, upstream: Upstream, sock: socket.socket, connector: Connector) -> HttpProxyService:
    ucfg = upstream.config
    return HttpProxyService(
        name,
        sock,
        GatewayHttp(upstream),
        connector=connector,
        header_timeout=cfg.header_timeout,
        keepalive_timeout=cfg.keepalive_timeout,
        upstream_read_timeout=ucfg.read_timeout,
        max_body=cfg.max_body_size,
        forwarded_headers=cfg.forwarded_headers,
        pool_size=ucfg.pool_size,
        pool_idle_timeout=ucfg.pool_idle_timeout,
        backlog=cfg.backlog,
    )

"""The config-driven HTTP app for ``protocol = "http"`` listeners (one upstream each)."""

from __future__ import annotations

import socket

from ..config.model import ListenerConfig
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
        if session.ctx is None:
            session.ctx = self.upstream.candidates(session.client_ip if self._hash else "")
        return self.upstream.peer_for(self.upstream.next_backend(session.ctx, session.last_error))


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

"""Build live upstream objects (balancers, peers, health checkers) from the config model."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.model import Config, UpstreamConfig, parse_member
from ..net.connect import HttpConnectProxy, Peer, TcpKeepalive
from ..upstream.backend import Backend
from ..upstream.balancer import Balancer, Member, WeightedUpstreams
from ..upstream.health import HealthCheckConfig, HealthChecker


@dataclass
class Upstream:
    """One named upstream: how to choose a backend and how to dial it."""

    name: str
    config: UpstreamConfig
    balancer: Member
    peers: dict[int, Peer] = field(default_factory=dict)  # id(backend) → Peer
    checker: HealthChecker | None = None

    def peer_for(self, backend: Backend) -> Peer:
        return self.peers[id(backend)]


def make_peer(backend: Backend, cfg: UpstreamConfig) -> Peer:
    """The Peer a backend is dialled with, from its upstream's connect options."""
    keepalive = None
    if cfg.tcp_keepalive is not None:
        k = cfg.tcp_keepalive
        keepalive = TcpKeepalive(idle=k.idle, interval=k.interval, count=k.count)
    proxy = None
    if cfg.connect_proxy is not None:
        proxy = HttpConnectProxy(address=cfg.connect_proxy, host=backend.address.host, port=backend.address.port)
    total = cfg.total_connect_timeout
    if total is None and proxy is not None:
        total = 2 * cfg.connect_timeout  # a CONNECT proxy that never answers must not hang us
    return Peer(
        address=backend.address,
        connect_timeout=cfg.connect_timeout,
        total_connect_timeout=total,
        tcp_keepalive=keepalive,
        nodelay=cfg.nodelay,
        bind_to=cfg.bind_to,
        proxy=proxy,
        proxy_protocol={"v1": 1, "v2": 2}.get(cfg.proxy_protocol or ""),
    )


def build_upstreams(config: Config) -> dict[str, Upstream]:
    """Every upstream by name; nested members reuse the member upstreams' balancers.

    A nested upstream dials each backend with the options of the leaf upstream that owns it.
    """
    built: dict[str, Upstream] = {}

    def build(name: str) -> Upstream:
        if name in built:
            return built[name]
        cfg = config.upstreams[name]
        if cfg.members:
            members: list[tuple[Member, int]] = []
            peers: dict[int, Peer] = {}
            for text in cfg.members:
                member_name, weight = parse_member(text)
                child = build(member_name)
                members.append((child.balancer, weight))
                peers.update(child.peers)
            upstream = Upstream(name, cfg, WeightedUpstreams(members), peers)
        else:
            backends = cfg.backend_objects()
            upstream = Upstream(name, cfg, Balancer(backends, cfg.lb), {id(b): make_peer(b, cfg) for b in backends})
            if cfg.health_check is not None:
                hc = cfg.health_check
                upstream.checker = HealthChecker(
                    backends, HealthCheckConfig(interval=hc.interval, timeout=hc.timeout, rise=hc.rise, fall=hc.fall)
                )
        built[name] = upstream
        return upstream

    for name in config.upstreams:
        build(name)
    return built

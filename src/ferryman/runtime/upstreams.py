"""Build live upstream objects (balancers, peers, health checkers) from the config model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ..config.model import Config, UpstreamConfig, parse_member
from ..errors import ErrorKind, ErrorSource, ProxyError
from ..net.connect import HttpConnectProxy, Peer, TcpKeepalive
from ..upstream.backend import Backend
from ..upstream.balancer import Balancer, Member, WeightedUpstreams
from ..upstream.health import HealthCheckConfig, HealthChecker


class Candidates:
    """The balancer's lazy fail-over order with a one-backend lookahead, so a failed connect
    can tell whether another backend is left without listing (and so advancing) the rest."""

    __slots__ = ("_it", "_next")

    def __init__(self, it: Iterator[Backend]) -> None:
        self._it = it
        self._next: Backend | None = None

    def take(self) -> Backend | None:
        backend, self._next = self._next, None
        return backend if backend is not None else next(self._it, None)

    def has_more(self) -> bool:
        if self._next is None:
            self._next = next(self._it, None)
        return self._next is not None


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

    def candidates(self, key: str = "") -> Candidates:
        """The fail-over order for one connection or request (``key``: the hash key)."""
        return Candidates(self.balancer.select(key.encode(), self.config.max_tries))

    def next_backend(self, candidates: Candidates, last_error: ProxyError | None) -> Backend:
        """The next backend to try; with none left, the last error (or NO_BACKEND)."""
        backend = candidates.take()
        if backend is None:
            if last_error is not None:
                raise last_error
            raise ProxyError(ErrorKind.NO_BACKEND, ErrorSource.UPSTREAM, context=f"upstream {self.name!r} has no healthy backend")
        return backend


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


def build_upstreams(config: Config, previous: dict[str, Upstream] | None = None) -> dict[str, Upstream]:
    """Every upstream by name; nested members reuse the member upstreams' balancers.

    A nested upstream dials each backend with the options of the leaf upstream that owns it.
    On reload, ``previous`` upstreams whose config (and members) did not change are kept as
    they are: their balancer state, health state and checker carry on.
    """
    built: dict[str, Upstream] = {}
    previous = previous or {}

    def build(name: str) -> Upstream:
        if name in built:
            return built[name]
        cfg = config.upstreams[name]
        old = previous.get(name)
        if old is not None and old.config == cfg:
            children = [parse_member(text)[0] for text in cfg.members]
            if all(build(child) is previous.get(child) for child in children):
                built[name] = old
                return old
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

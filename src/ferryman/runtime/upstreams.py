"""Build live upstream objects (balancers, peers, health checkers, name resolvers) from the
config model."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ..config.model import Config, UpstreamConfig, parse_member
from ..errors import ErrorKind, ErrorSource, ProxyError
from . import process
from ..config.tls import tls_options
from ..net.connect import HttpConnectProxy, Peer, TcpKeepalive
from ..upstream.backend import Backend
from ..upstream.balancer import Balancer, Member, WeightedUpstreams
from ..upstream.health import HealthCheckConfig, HealthChecker, make_check, tcp_check
from ..upstream.passive import PassiveHealth
from ..upstream.resolver import BackendResolver, Lookup, is_name, make_lookup


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


class MemberPeers(Mapping[int, Peer]):
    """A nested upstream's peers: a live view over its members' maps, so backends that a
    member's re-resolution adds or drops are seen without copying (and an id of a dropped
    backend can never find a stale Peer)."""

    __slots__ = ("_maps",)

    def __init__(self, maps: Sequence[Mapping[int, Peer]]) -> None:
        self._maps = tuple(maps)

    def __getitem__(self, key: int) -> Peer:
        for peers in self._maps:
            peer = peers.get(key)
            if peer is not None:
                return peer
        raise KeyError(key)

    def __iter__(self) -> Iterator[int]:
        return iter(dict.fromkeys(key for peers in self._maps for key in peers))

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class Upstream:
    """One named upstream: how to choose a backend and how to dial it.

    ``peers`` maps id(backend) → Peer: a dict a leaf upstream updates in place (never
    replaced), a :class:`MemberPeers` view for a nested one. ``resolver`` is set when some
    backend line is a DNS name; it calls :meth:`replace_backends` when addresses change.
    """

    name: str
    config: UpstreamConfig
    balancer: Member
    peers: Mapping[int, Peer] = field(default_factory=dict)
    checker: HealthChecker | None = None
    passive: PassiveHealth | None = None  # set on each of its backends (Backend.passive)
    resolver: BackendResolver | None = None
    members: tuple[Upstream, ...] = ()  # nested upstreams: the member upstreams

    def peer_for(self, backend: Backend) -> Peer:
        try:
            return self.peers[id(backend)]
        except KeyError:
            return self._dropped_peer(backend)

    def _dropped_peer(self, backend: Backend) -> Peer:
        """A backend a re-resolution dropped while a connection's fail-over order still held
        it: dial it with its leaf's options (a nested upstream: its first leaf's)."""
        leaf = self
        while leaf.members:
            leaf = leaf.members[0]
        return make_peer(backend, leaf.config)

    def replace_backends(self, backends: Sequence[Backend]) -> None:
        """A leaf upstream serves ``backends`` from now on (the resolver's ``apply``).

        Peers are added before the balancer sees the new list and removed after, so a
        selection never yields a backend without a Peer; the health checker keeps the
        state of the Backend objects it already knew; passive health forgets dropped ones.
        """
        assert isinstance(self.balancer, Balancer) and isinstance(self.peers, dict), "only a leaf upstream has backends"
        peers = self.peers
        cfg = self.config
        old = self.balancer.backends
        for backend in backends:
            if id(backend) not in peers:
                peers[id(backend)] = make_peer(backend, cfg)
                backend.passive = self.passive
        self.balancer.replace_backends(backends)
        keep = {id(b) for b in backends}
        for key in [key for key in peers if key not in keep]:
            del peers[key]
        if self.checker is not None:
            self.checker.replace_backends(backends)
        if self.passive is not None:
            for backend in old:
                if id(backend) not in keep:
                    self.passive.forget(backend)

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
        pool_size=cfg.pool_size,
        pool_idle_timeout=cfg.pool_idle_timeout,
        port_affinity=process.CURRENT.affinity if cfg.source_port_affinity and proxy is None else None,
        tls=tls_options(cfg),
        protocol=cfg.protocol,
    )


def build_upstreams(config: Config, previous: dict[str, Upstream] | None = None) -> dict[str, Upstream]:
    """Every upstream by name; nested members reuse the member upstreams' balancers.

    A nested upstream dials each backend with the options of the leaf upstream that owns it.
    On reload, ``previous`` upstreams whose config (and members) did not change are kept as
    they are: their balancer state, health state, checker, resolver and resolved backends
    carry on (a kept resolver switches to the new ``server.resolvers`` if those changed).

    Synchronous: a backend line that is a DNS name contributes no backend yet; the
    upstream's ``resolver`` (not started) fills them in (``start()``, ``resolve_now()``).
    """
    built: dict[str, Upstream] = {}
    previous = previous or {}
    servers = tuple(config.server.resolvers)
    shared: list[Lookup] = []

    def lookup() -> Lookup:
        if not shared:
            shared.append(make_lookup(servers))
        return shared[0]

    def build(name: str) -> Upstream:
        if name in built:
            return built[name]
        cfg = config.upstreams[name]
        old = previous.get(name)
        if old is not None and old.config == cfg:
            children = [parse_member(text)[0] for text in cfg.members]
            if all(build(child) is previous.get(child) for child in children):
                if old.resolver is not None and tuple(old.resolver.lookup.servers) != servers:
                    old.resolver.lookup = lookup()
                built[name] = old
                return old
        if cfg.members:
            members: list[tuple[Member, int]] = []
            owners: list[Upstream] = []
            for text in cfg.members:
                member_name, weight = parse_member(text)
                child = build(member_name)
                members.append((child.balancer, weight))
                owners.append(child)
            upstream = Upstream(name, cfg, WeightedUpstreams(members), MemberPeers([c.peers for c in owners]), members=tuple(owners))
        else:
            lines = cfg.backend_objects()
            backends = [b for b in lines if not is_name(b.address)]
            upstream = Upstream(name, cfg, Balancer(backends, cfg.lb), {id(b): make_peer(b, cfg) for b in backends})
            if len(backends) < len(lines):
                upstream.resolver = BackendResolver(
                    name, lines, lookup=lookup(), apply=upstream.replace_backends, interval=cfg.resolve_interval, ipv4_only=cfg.ipv4_only
                )
            hc = cfg.health_check
            check = make_check(hc, tls_options(cfg)) if hc is not None else tcp_check
            if hc is not None:
                upstream.checker = HealthChecker(
                    backends, HealthCheckConfig(interval=hc.interval, timeout=hc.timeout, rise=hc.rise, fall=hc.fall), check
                )
            if cfg.passive_health is not None:
                upstream.passive = PassiveHealth.from_config(
                    cfg.passive_health, probe=check, checker=upstream.checker, probe_timeout=hc.timeout if hc is not None else 2.0
                )
                for backend in backends:
                    backend.passive = upstream.passive
        built[name] = upstream
        return upstream

    for name in config.upstreams:
        build(name)
    return built

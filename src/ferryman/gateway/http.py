"""The config-driven HTTP app for ``protocol = "http"`` listeners: routes → filters → upstreams.

Everything a config generation decides lives in one immutable :class:`Router` per listener.
A request pins the router's matched :class:`Route` in ``session.ctx`` when its head arrives,
so a reload (which swaps ``GatewayHttp.router`` in one assignment) never changes a request
in flight.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from ..acme.challenges import CHALLENGE_PREFIX, Http01Responder, http01_responder
from ..config.model import Config, HeaderEdits, ListenerConfig, RouteConfig, UpstreamConfig
from ..errors import ErrorKind, ErrorSource, ProxyError
from ..filters.base import Filter, implemented
from ..filters.registry import lookup
from ..http.hooks import ProxyHttp
from ..http.service import HttpProxyService
from ..http.session import Session
from ..net.addr import parse_address
from ..net.connect import Connector, Peer
from ..net.tls import CertStore, count_handshakes
from ..observability.accesslog import AccessLog
from ..observability.metrics import Registry, RequestMetrics
from ..observability.tracing import Tracer
from ..routing import PathRewrite, RouteSpec, RouteTable, normalize_host, split_target
from ..runtime.upstreams import Candidates, Upstream
from ..upstream.backend import Backend
from ..upstream.retry import RetryPolicy


class Route:
    """One compiled route: its upstream and, per phase, only the filters implementing it."""

    __slots__ = (
        "name", "upstream", "hash_key", "rewrite", "read_timeout", "max_body", "access_log", "retry",
        "request_filters", "upstream_request_filters", "response_filters", "body_filters", "metrics",
    )

    def __init__(self, name: str, upstream: Upstream | None, filters: list[Filter], *, rewrite: PathRewrite | None = None,
                 read_timeout: float | None = None, max_body: int | None = None, access_log: bool = True,
                 metrics: RequestMetrics | None = None) -> None:
        self.name = name
        # (listener, route, upstream) counters: one observe() per request, from the logging hook
        self.metrics = metrics if metrics is not None else RequestMetrics("", name, upstream.name if upstream is not None else "")
        self.upstream = upstream
        self.hash_key = key_function(upstream.config.hash_key) if upstream is not None and upstream.config.lb == "consistent_hash" else None
        self.rewrite = rewrite
        self.read_timeout = read_timeout if read_timeout is not None else (upstream.config.read_timeout if upstream else None)
        self.max_body = max_body
        self.access_log = access_log
        self.retry = RetryPolicy.from_config(upstream.config) if upstream is not None else RetryPolicy(())
        self.request_filters = _phase(filters, "request_filter")
        self.upstream_request_filters = _phase(filters, "upstream_request_filter")
        self.response_filters = _phase(filters, "response_filter")
        self.body_filters = _phase(filters, "response_body_filter")


def _phase(filters: list[Filter], phase: str) -> tuple[Callable[..., Any], ...]:
    return tuple(getattr(f, phase) for f in filters if implemented(f, phase))


class Router:
    """A listener's routes for one config generation (or its single upstream)."""

    __slots__ = ("table", "single", "acme")

    def __init__(self, table: RouteTable | None, single: Route | None = None, acme: Http01Responder | None = None) -> None:
        self.table, self.single = table, single
        self.acme = acme  # ACME HTTP-01 answers, ahead of the routes (None: no acme certificate)

    def match(self, session: Session) -> Route | None:
        if self.table is None:
            return self.single
        request = session.request
        path, query = split_target(request.target)
        spec = self.table.match(session.header(b"host"), path, request.method, request.headers, query)
        return spec.target if spec is not None else None


class Ctx:
    """Per-request state of the gateway (``session.ctx``)."""

    __slots__ = ("route", "candidates", "backend", "counted", "stale_retry")

    def __init__(self, route: Route) -> None:
        self.route = route
        self.candidates: Candidates | None = None
        self.backend: Backend | None = None  # of the current attempt
        self.counted: Backend | None = None  # the backend whose ``active`` this request raised
        self.stale_retry = False  # the next attempt goes to the same backend (a pooled connection had closed)


class GatewayHttp(ProxyHttp):
    """Match a route, run its filters, choose a backend of its upstream (failing over).

    Its hooks never wait, so they are plain functions: no coroutine per hook and request."""

    max_tries = 100  # each upstream's own max_tries bounds its candidates

    def __init__(self, router: Router, *, access_log: AccessLog | None = None, connect_ports: frozenset[int] | None = None,
                 metrics: RequestMetrics | None = None) -> None:
        self.router = router
        self.access_log = access_log
        self.connect_ports = connect_ports  # forward proxy: CONNECT allowed to these ports
        self.metrics = metrics if metrics is not None else RequestMetrics("", "", "")  # requests no route took (404, CONNECT)

    def request_filter(self, session: Session) -> bool:  # type: ignore[override]
        router = self.router
        if router.acme is not None and session.request.target.startswith(CHALLENGE_PREFIX) and router.acme.respond(session):
            return True
        if session.request.method == b"CONNECT":
            return self._connect_refused(session)
        route = router.match(session)
        if route is None:
            host = normalize_host(session.header(b"host") or b"").decode("latin-1")
            session.respond_error(404, f"no route matches host {host!r} path {session.request.target.decode('latin-1')!r}")
            return True
        session.route = route.name
        session.ctx = Ctx(route)
        if route.read_timeout is not None:
            session.read_timeout = route.read_timeout
        if route.retry.timeout is not None:
            session.retry_until = session.digest.start + route.retry.timeout
        length = session.request.body.length
        if route.max_body is not None:
            if (length if length is not None else session.body_bytes_received) > route.max_body:
                session.respond_error(413, f"the request body is over the limit of {route.max_body} bytes")
                return True
            session.max_body = route.max_body  # the rest of a chunked body is counted as it arrives
        for run in route.request_filters:
            if run(session):
                return True
        return False

    def _connect_refused(self, session: Session) -> bool:
        try:
            port = parse_address(session.target_str).port
        except ValueError:
            port = None
        if self.connect_ports is None or port not in self.connect_ports:
            session.respond_error(403, f"CONNECT to port {port} is not allowed")
            return True
        return False

    def upstream_peer(self, session: Session) -> Peer:  # type: ignore[override]
        ctx = session.ctx
        if ctx is None:  # CONNECT through a forward-proxy listener
            return Peer(parse_address(session.target_str), connect_timeout=5.0)
        upstream = ctx.route.upstream
        if upstream is None:
            raise ProxyError(ErrorKind.NO_BACKEND, ErrorSource.INTERNAL, context=f"route {ctx.route.name!r} has no upstream and no filter answered")
        if ctx.stale_retry:
            ctx.stale_retry = False
            backend = ctx.backend
        else:
            if ctx.candidates is None:
                key = ctx.route.hash_key(session) if ctx.route.hash_key is not None else ""
                ctx.candidates = upstream.candidates(key)
            backend = upstream.next_backend(ctx.candidates, session.last_error)
            ctx.backend = backend
            if ctx.route.retry.statuses:  # an answer is dropped for a retry only if a backend is left
                session.retry_statuses = ctx.route.retry.statuses if ctx.candidates.has_more() else frozenset()
        # in flight per backend (least_conn and p2c choose by it; the admin API shows it)
        counted = ctx.counted  # a retry: the previous attempt's backend is done with it
        if counted is not None:
            counted.active -= 1
        backend.active += 1
        backend.requests += 1
        ctx.counted = backend
        return upstream.peer_for(backend)  # type: ignore[arg-type]

    def fail_to_connect(self, session: Session, peer: Peer, error: ProxyError) -> ProxyError:
        ctx = session.ctx
        if ctx is None or ctx.backend is None:  # CONNECT through a forward-proxy listener
            return error
        ctx.backend.failures += 1
        passive = ctx.backend.passive
        if passive is not None:
            passive.failure(ctx.backend, str(error))
        # with no backend left a retry could only fail again, logging the same failure twice
        error.retry = ctx.route.retry.connect_failed(error) and ctx.candidates.has_more()  # type: ignore[union-attr]
        return error

    def error_while_proxy(self, session: Session, peer: Peer, error: ProxyError, reused: bool) -> ProxyError:
        ctx = session.ctx
        stale = reused and error.kind in _CLOSED and session.retry_safe  # the pool's connection had closed
        if ctx is None or ctx.backend is None:
            error.retry = stale
            return error
        if stale and not ctx.stale_retry and session.tries == 0:
            ctx.stale_retry = True
            error.retry = True
            return error
        ctx.backend.failures += 1
        passive = ctx.backend.passive
        if passive is not None:
            if error.kind is ErrorKind.UPSTREAM_STATUS:
                passive.response(ctx.backend, session.response_status or 500)
            else:
                passive.failure(ctx.backend, str(error))
        error.retry = ctx.route.retry.failed(session.upstream_method, error) and ctx.candidates.has_more()  # type: ignore[union-attr]
        return error

    def upstream_response_filter(self, session: Session, headers: list[tuple[bytes, bytes]]) -> None:
        ctx = session.ctx
        if ctx is not None and ctx.backend is not None and ctx.backend.passive is not None:
            ctx.backend.passive.response(ctx.backend, session.response_status)

    def upstream_request_filter(self, session: Session, headers: list[tuple[bytes, bytes]]) -> None:  # type: ignore[override]
        ctx = session.ctx
        if ctx is None:
            return
        route = ctx.route
        if route.rewrite is not None:
            session.upstream_target = route.rewrite.apply(session.upstream_target)
        for run in route.upstream_request_filters:
            run(session, headers)

    def response_filter(self, session: Session, headers: list[tuple[bytes, bytes]]) -> None:  # type: ignore[override]
        session.filter_body = False  # a body filter turns it on for this response if it wants
        ctx = session.ctx
        if ctx is not None:
            for run in ctx.route.response_filters:
                run(session, headers)

    def response_body_filter(self, session: Session, chunk: bytes, end: bool) -> bytes:
        for run in session.ctx.route.body_filters:
            chunk = run(session, chunk, end)
        return chunk

    def logging(self, session: Session, error: ProxyError | None) -> None:  # type: ignore[override]
        ctx = session.ctx
        if ctx is None:
            self.metrics.observe(session, error)
        else:
            counted = ctx.counted
            if counted is not None:
                counted.active -= 1
                ctx.counted = None
            ctx.route.metrics.observe(session, error)
        if self.access_log is not None and (ctx is None or ctx.route.access_log):
            self.access_log.log(session, error)


class TracedGatewayHttp(GatewayHttp):
    """:class:`GatewayHttp` with a span per request (``[tracing]``). Chosen at build time,
    so without tracing the gateway runs none of this."""

    def __init__(self, router: Router, *, tracer: Tracer, listener: str = "", access_log: AccessLog | None = None,
                 connect_ports: frozenset[int] | None = None, metrics: RequestMetrics | None = None) -> None:
        super().__init__(router, access_log=access_log, connect_ports=connect_ports, metrics=metrics)
        self.tracer = tracer
        self.listener = listener

    def request_filter(self, session: Session) -> bool:  # type: ignore[override]
        session.vars["trace"] = self.tracer.start(session)  # str() of it: the trace id ($var_trace)
        return super().request_filter(session)

    def upstream_request_filter(self, session: Session, headers: list[tuple[bytes, bytes]]) -> None:  # type: ignore[override]
        super().upstream_request_filter(session, headers)
        self.tracer.inject(session.vars["trace"], headers)

    def logging(self, session: Session, error: ProxyError | None) -> None:  # type: ignore[override]
        super().logging(session, error)
        span = session.vars.get("trace")
        if span is not None:
            ctx = session.ctx
            route = ctx.route if ctx is not None else None
            upstream = route.upstream.name if route is not None and route.upstream is not None else ""
            self.tracer.finish(span, session, error, self.listener, session.route, upstream)


_CLOSED = (ErrorKind.CONNECTION_CLOSED, ErrorKind.CONNECTION_RESET)


def counts_connections(member: Any) -> bool:
    """True when some balancer under this member picks by open connections (least_conn, p2c)."""
    lb = getattr(member, "lb", None)
    if lb is not None:
        return lb in ("least_conn", "p2c")
    return any(counts_connections(child) for child in getattr(member, "members", ()))


def key_function(spec: str) -> Callable[[Session], str]:
    """The consistent-hash key of a request: ``client_ip``, ``uri``, ``header:NAME``, ``cookie:NAME``."""
    if spec == "client_ip":
        return lambda s: s.client_ip
    if spec == "uri":
        return lambda s: s.request.target.decode("latin-1")
    kind, _, name = spec.partition(":")
    raw = name.lower().encode()
    if kind == "header":
        return lambda s: (s.header(raw) or b"").decode("latin-1")
    if kind == "cookie":
        prefix = raw + b"="

        def cookie(s: Session) -> str:
            for part in (s.header(b"cookie") or b"").split(b";"):
                part = part.strip()
                if part.lower().startswith(prefix):
                    return part[len(prefix):].decode("latin-1")
            return ""

        return cookie
    raise ValueError(f"unknown hash key {spec!r}")


# building ------------------------------------------------------------------------------------
def build_filters(config: Config, previous: dict[str, Filter] | None = None, previous_config: Config | None = None,
                  metrics: Registry | None = None) -> dict[str, Filter]:
    """One instance per configured filter (shared by the routes naming it). On reload, a
    filter whose table did not change is kept (with its state, e.g. rate counters). New
    ones are given ``metrics`` (``Filter.bind_metrics``) to register what they count."""
    out = {}
    for name, body in config.filters.items():
        old = (previous or {}).get(name)
        if old is not None and previous_config is not None and previous_config.filters.get(name) == body:
            out[name] = old
            continue
        cls = lookup(body["kind"])
        out[name] = cls(name, cls.Config.model_validate({k: v for k, v in body.items() if k != "kind"}))
        if metrics is not None:
            out[name].bind_metrics(metrics)
    return out


def _route_filters(name: str, cfg: RouteConfig, named: dict[str, Filter]) -> list[Filter]:
    """A route's own header edits and redirect become implicit filters ahead of its named ones."""
    implicit: list[Filter] = []
    if cfg.redirect is not None:
        cls = lookup("redirect")
        implicit.append(cls(f"{name}.redirect", cls.Config.model_validate({"to": cfg.redirect, "status": cfg.redirect_status})))
    edits = _header_edit_options(cfg.request_headers, "request") | _header_edit_options(cfg.response_headers, "response")
    if edits:
        cls = lookup("headers")
        implicit.append(cls(f"{name}.headers", cls.Config.model_validate(edits)))
    return implicit + [named[f] for f in cfg.filters]


def _header_edit_options(edits: HeaderEdits | None, side: str) -> dict[str, Any]:
    if edits is None:
        return {}
    options: dict[str, Any] = {}
    if edits.set:
        options[f"{side}_set"] = dict(edits.set)
    if edits.add:
        options[f"{side}_add"] = dict(edits.add)
    if edits.remove:
        options[f"{side}_remove"] = list(edits.remove)
    return options


def build_router(config: Config, cfg: ListenerConfig, upstreams: dict[str, Upstream], filters: dict[str, Filter],
                 listener: str = "", metrics: Registry | None = None) -> Router:
    """``metrics``: the process's registry, asked for each route's counters (kept across
    reloads by their labels); without it the counters are the router's own."""
    registry = metrics if metrics is not None else Registry()
    if not cfg.routes:
        return Router(None, Route("", upstreams[cfg.upstream], [], metrics=registry.request(listener, "", cfg.upstream or "")),  # type: ignore[index]
                      acme=http01_responder(config))
    specs = []
    for name in cfg.routes:
        rc = config.routes[name]
        rewrite = PathRewrite(*rc.rewrite.split()) if rc.rewrite else None
        route = Route(
            name, upstreams[rc.upstream] if rc.upstream else None, _route_filters(name, rc, filters),
            rewrite=rewrite, read_timeout=rc.read_timeout, max_body=rc.max_body_size, access_log=rc.access_log,
            metrics=registry.request(listener, name, rc.upstream or ""),
        )
        specs.append(RouteSpec(
            name, host=rc.host, path=rc.path, methods=tuple(rc.methods), headers=tuple(rc.headers.items()),
            query=tuple(rc.query.items()), priority=rc.priority, target=route,
        ))
    return Router(RouteTable(specs), acme=http01_responder(config))


def build_http_service(
    name: str, cfg: ListenerConfig, router: Router, sock: socket.socket, connector: Connector, upstreams: dict[str, Upstream],
    access_log: AccessLog | None = None, channel: socket.socket | None = None, tls: CertStore | None = None, metrics: Registry | None = None,
    tracer: Tracer | None = None,
) -> HttpProxyService:
    used: list[UpstreamConfig | None] = [u.config for u in upstreams.values()] or [None]
    # each backend's peer carries its own upstream's pool size and idle timeout; these are
    # the defaults for the rest (CONNECT targets), and the shortest idle timeout sets the sweep
    pool_size = max((c.pool_size for c in used if c is not None), default=128)
    idle = min((c.pool_idle_timeout for c in used if c is not None), default=60.0)
    read_timeout = max((c.read_timeout for c in used if c is not None), default=60.0)
    connect_ports = frozenset(cfg.connect_ports) if cfg.forward_proxy else None
    request_metrics = metrics.request(name, "", "") if metrics is not None else None
    app = (
        GatewayHttp(router, access_log=access_log, connect_ports=connect_ports, metrics=request_metrics) if tracer is None
        else TracedGatewayHttp(router, tracer=tracer, listener=name, access_log=access_log, connect_ports=connect_ports, metrics=request_metrics)
    )
    if tls is not None and metrics is not None:
        count_tls_handshakes(tls, name, metrics)
    return HttpProxyService(
        name,
        sock,
        app,
        connector=connector,
        header_timeout=cfg.header_timeout,
        body_timeout=cfg.body_timeout,
        send_timeout=cfg.send_timeout,
        keepalive_timeout=cfg.keepalive_timeout,
        keepalive_requests=cfg.keepalive_requests or None,
        upstream_read_timeout=read_timeout,
        max_body=cfg.max_body_size,
        forwarded_headers=cfg.forwarded_headers,
        allow_connect=cfg.forward_proxy,
        tunnel_idle_timeout=cfg.tunnel_idle_timeout,
        pool_size=pool_size,
        pool_idle_timeout=idle,
        backlog=cfg.backlog,
        accept_proxy=cfg.proxy_protocol,
        proxy_trusted=cfg.proxy_protocol_trusted,
        proxy_header_timeout=cfg.proxy_protocol_timeout,
        channel=channel,
        tls=tls,
        http2=cfg.http2,
    )


def count_tls_handshakes(tls: CertStore, listener: str, metrics: Registry) -> None:
    """``ferryman_tls_handshakes_total`` (and the errors by reason) of a TLS listener."""
    failed = metrics.counter("ferryman_tls_handshakes_total", listener, "error")

    def error(reason: str) -> None:
        failed.value += 1
        metrics.counter("ferryman_tls_handshake_errors_total", listener, reason).value += 1

    count_handshakes(tls.context, metrics.counter("ferryman_tls_handshakes_total", listener, "ok"), error)


"""``HttpProxyService``: serve a ProxyHttp app on a listening socket (HTTP/1.1 and HTTP/2)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from ..errors import ProxyError
from ..net.balance import ConnectionReceiver
from ..net.connect import Connector
from ..net.listener import Acceptor
from ..net.peek import read_proxy_header
from ..net.pump import PipePool
from ..net.sweep import DeadlineSweep, tick_for
from ..net.tls import CertStore
from ..protocol import proxy_protocol
from ..upstream.pool import ConnectionPool
from .hooks import ProxyHttp, overrides
from .plan import ServicePlan
from .upstream_h2 import H2Pool

log = logging.getLogger(__name__)

HOOKS = (
    "new_ctx", "early_request_filter", "request_filter", "request_body_filter", "proxy_upstream_filter",
    "fail_to_connect", "connected_to_upstream", "upstream_request_filter", "upstream_response_filter",
    "response_filter", "upstream_response_body_filter", "response_body_filter", "response_trailer_filter",
    "error_while_proxy", "fail_to_proxy", "logging",
)


class HttpProxyService:
    """One listener of an HTTP proxy. Connections are accepted by the event loop itself.

    Timeouts (seconds, None = off): ``header_timeout`` for a whole request head
    (slowloris-proof), ``body_timeout`` between two reads of a request body (408),
    ``send_timeout`` for a client that takes none of the response while our send buffer is
    full (the connection is closed),
    ``keepalive_timeout`` for an idle client connection (an HTTP/1.1 one serves at most
    ``keepalive_requests``, None: no limit), ``upstream_read_timeout`` between
    upstream reads, ``tunnel_idle_timeout`` for an idle WebSocket/CONNECT tunnel. The upstream ``pool`` is per service and per process.

    ``forwarded_headers``: True or ``"x-forwarded"`` (X-Forwarded-For/-Proto/-Host),
    ``"forwarded"`` (RFC 7239), ``"both"``, or False. ``allow_connect`` makes the listener a
    forward proxy for ``CONNECT host:port`` (off by default: 405); the app's
    ``upstream_peer`` still decides where (and whether) to connect. ``accept_proxy``
    requires a PROXY v1/v2 header first from clients in ``proxy_trusted`` (all when empty),
    within ``proxy_header_timeout``; its source address becomes the client address.

    ``http2`` (default True): clients may speak HTTP/2: on a TLS listener ALPN offers ``h2``
    first (False: ALPN offers no ``h2``); on a plain one a connection that starts with the
    HTTP/2 preface is served as h2c (prior knowledge). ``h2_max_streams`` bounds the streams
    one HTTP/2 client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS). Upstreams
    speak what their :class:`~ferryman.net.connect.Peer` says (``protocol``); HTTP/2
    upstream connections are pooled apart and carry many requests at once.
    """

    def __init__(
        self,
        name: str,
        sock: socket.socket,
        app: ProxyHttp,
        *,
        connector: Connector | None = None,
        pool: ConnectionPool | None = None,
        header_timeout: float | None = 60.0,
        body_timeout: float | None = 60.0,
        send_timeout: float | None = 60.0,
        keepalive_timeout: float | None = 75.0,
        keepalive_requests: int | None = 1000,
        upstream_read_timeout: float | None = 60.0,
        max_request_line: int = 8192,
        max_header_bytes: int = 32768,
        max_headers: int = 100,
        max_body: int | None = None,
        forwarded_headers: bool | str = True,
        allow_connect: bool = False,
        tunnel_idle_timeout: float | None = 600.0,
        pool_size: int = 128,
        pool_idle_timeout: float = 60.0,
        backlog: int = 2048,
        accept_proxy: bool = False,
        proxy_trusted: Sequence[IPv4Network | IPv6Network] = (),
        proxy_header_timeout: float = 5.0,
        channel: socket.socket | None = None,
        tls: CertStore | None = None,
        http2: bool = True,
        h2_max_streams: int = 100,
    ) -> None:
        self.tls = tls  # certificates by SNI; tls.replace() / tls.reload() swap them while serving
        self.http2 = http2
        self.h2c = http2 and tls is None  # plain listener: detect the h2 preface on new connections
        self.h2_alpn = http2 and tls is not None  # TLS listener: ALPN decides
        self.h2_max_streams = h2_max_streams
        if tls is not None:
            tls.offer_h2(http2)
        self._h2_pool: H2Pool | None = None
        self.backlog = backlog
        self.channel = channel  # least_conn: connections arrive here (SCM_RIGHTS), not by accept
        self.receiver: ConnectionReceiver | Acceptor | None = None  # connections not from create_server
        self.draining = False  # drain() began: connections still arriving get no keep-alive
        self.adopting: set[asyncio.Task[None]] = set()  # connections not yet served (PROXY header, TLS handshake)
        self.name = name
        self.sock = sock
        self.app = app
        self.connector = connector or Connector()
        self.pool = pool  # upstream HTTP/1.1 connections kept alive (start() makes it when not given)
        self.pool_size, self.pool_idle_timeout = pool_size, pool_idle_timeout
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.keepalive_requests = keepalive_requests
        self.upstream_read_timeout = upstream_read_timeout
        self.parser_limits: dict[str, Any] = {
            "max_request_line": max_request_line, "max_header_bytes": max_header_bytes,
            "max_headers": max_headers, "max_body": max_body,
        }
        if forwarded_headers not in (True, False, "x-forwarded", "forwarded", "both"):
            raise ValueError(f"forwarded_headers must be a bool, 'x-forwarded', 'forwarded' or 'both', not {forwarded_headers!r}")
        self.forwarded = "x-forwarded" if forwarded_headers is True else (forwarded_headers or "")
        self.allow_connect = allow_connect
        self.accept_proxy = accept_proxy
        self.proxy_trusted = tuple(proxy_trusted)
        self.proxy_header_timeout = proxy_header_timeout
        self.tunnel_idle_timeout = tunnel_idle_timeout
        self.body_timeout = body_timeout
        self.send_timeout = send_timeout
        self._pipes: PipePool | None = None
        self.has = {hook: overrides(app, hook) for hook in HOOKS}
        # these hooks may be plain functions (no coroutine per call) or coroutines (awaited)
        self.awaits = {hook: inspect.iscoroutinefunction(getattr(app, hook)) for hook in (*HOOKS, "upstream_peer")}
        self.plan = ServicePlan(self.has, self.awaits, forwarded=self.forwarded, allow_connect=allow_connect)
        self.has_response_body_filters = self.plan.response_body_filters
        self.connections: set = set()
        self.exchanges: set = set()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.server: asyncio.base_events.Server | None = None
        self._sweep: DeadlineSweep | None = None
        self.read_timeout_floor = min((t for t in (header_timeout, body_timeout, send_timeout, keepalive_timeout, upstream_read_timeout, pool_idle_timeout) if t), default=60.0)

    @property
    def h2_pool(self) -> H2Pool:
        """Multiplexed HTTP/2 upstream connections (peers with protocol h2 / h2c)."""
        if self._h2_pool is None:
            self._h2_pool = H2Pool(self.loop, idle_timeout=self.pool_idle_timeout)
        return self._h2_pool

    @property
    def pool_idle(self) -> int:
        """Idle upstream connections in the pool (0 before the first one)."""
        return self.pool.idle_count if self.pool is not None else 0

    def _on_tick(self, now: float) -> None:
        """Each sweep: upstream read timeouts, and idle pooled connections past their time."""
        for exchange in [e for e in self.exchanges if e.read_timeout is not None]:
            exchange.check_read_timeout(now)
        if self.pool is not None:
            self.pool.expire(now)
        if self._h2_pool is not None:
            self._h2_pool.expire(now)

    def tighten(self, timeout: float) -> None:
        """A request uses a read timeout shorter than any configured here: sweep faster."""
        self.read_timeout_floor = timeout
        if self._sweep is not None:
            self._sweep.tighten(timeout)

    @property
    def pipes(self) -> PipePool:
        """Pipes for splice(2) in upgraded and CONNECT tunnels."""
        if self._pipes is None:
            self._pipes = PipePool()
        return self._pipes

    async def start(self) -> None:
        from .downstream_h1 import DownstreamH1

        self.loop = asyncio.get_running_loop()
        if self.pool is None:
            self.pool = ConnectionPool(self.loop, max_idle_per_key=self.pool_size, idle_timeout=self.pool_idle_timeout)
        self._sweep = DeadlineSweep(self.loop, self.connections, tick_for((self.read_timeout_floor,)), self._on_tick)
        self._sweep.start()
        if self.channel is not None:
            self.receiver = ConnectionReceiver(self.loop, self.channel, self._adopt)
            self.receiver.start()
            return
        if self.tls is not None and self.accept_proxy:  # the PROXY header comes before TLS: read it first
            self.sock.listen(self.backlog)
            self.sock.setblocking(False)
            self.receiver = Acceptor(self.loop, self.sock, self._adopt)
            self.receiver.start()
            return
        self.server = await self.loop.create_server(lambda: DownstreamH1(self), sock=self.sock, backlog=self.backlog, **self._ssl_options())

    def _ssl_options(self) -> dict:
        """TLS termination (create_server / connect_accepted_socket keywords)."""
        if self.tls is None:
            return {}
        return {"ssl": self.tls.context, "ssl_handshake_timeout": self.header_timeout or 60.0}

    def _adopt(self, conn: socket.socket, peer: object) -> None:
        """A connection accepted here but not by create_server: passed by the balancing process
        (least_conn), or on a TLS listener whose clients send a PROXY header first."""
        from .downstream_h1 import DownstreamH1

        async def adopt() -> None:
            protocol = None
            try:
                header = None
                if self.tls is not None and self.accept_proxy and proxy_protocol.required_from(peer, self.proxy_trusted):
                    header = await read_proxy_header(conn, timeout=self.proxy_header_timeout)
                _, protocol = await self.loop.connect_accepted_socket(lambda: DownstreamH1(self, header), sock=conn, **self._ssl_options())
            except ProxyError as exc:
                log.info("%s: client %s: %s; connection closed", self.name, peer, exc.context)
            except OSError:  # reset, or a failed or timed-out TLS handshake
                pass
            finally:  # also when cancelled by shutdown
                if protocol is None:
                    conn.close()
                    self.receiver.release()  # type: ignore[union-attr]
            if protocol is not None and self.draining:  # sent before the stop: serve its request, keep nothing alive
                protocol.shutdown()

        # until its protocol joins ``connections`` (after the TLS handshake), drain() waits for it here
        task = self.loop.create_task(adopt())
        self.adopting.add(task)
        task.add_done_callback(self.adopting.discard)

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()
        if isinstance(self.receiver, ConnectionReceiver):
            self.receiver.finish()  # connections already in the channel are still served
        elif self.receiver is not None:
            self.receiver.close()

    async def drain(self, timeout: float) -> None:
        """Let in-flight requests finish (idle keep-alive connections close now), then close."""
        self.draining = True
        for conn in list(self.connections):
            conn.shutdown()
        deadline = self.loop.time() + timeout
        receiver = self.receiver if isinstance(self.receiver, ConnectionReceiver) else None
        while (self.connections or self.adopting or (receiver is not None and not receiver.finish().done())) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if receiver is not None:
            receiver.close()
        for task in list(self.adopting):
            task.cancel()
        for conn in list(self.connections):
            conn.abort()
        if self._sweep is not None:
            self._sweep.stop()
        if self.pool is not None:
            self.pool.close()
        if self._h2_pool is not None:
            self._h2_pool.close()
        if self._pipes is not None:
            self._pipes.close()

"""The TCP proxy service: accept → PROXY header → hooks → connect with failover → pump.

One task per connection (never per chunk); the bytes themselves move in
:mod:`ferryman.net.pump`, by ``splice`` when both ends are plain sockets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence

from ..errors import ErrorKind, ErrorSource, ProxyError
from ..net.connect import Connector, Peer
from ..net.balance import ConnectionReceiver
from ..net.listener import Acceptor
from ..net.pump import PipePool, SplicePump, TransportPump
from ..net.tls import read_client_hello
from ..protocol import proxy_protocol
from .hooks import ProxyL4, overrides
from .session import L4Session

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PROXY_HEADER_READ = 4096


class TcpProxyService:
    """Serve one listening TCP (or Unix) socket with a ProxyL4 app.

    ``accept_proxy`` requires a PROXY v1/v2 header from every client in ``trusted`` (all
    clients when ``trusted`` is empty); clients outside ``trusted`` are served with their
    socket address, and a header they send is not honoured (HAProxy's
    ``expect-proxy layer4 if trusted``).
    """

    def __init__(
        self,
        name: str,
        sock: socket.socket,
        app: ProxyL4,
        *,
        connector: Connector | None = None,
        pipes: PipePool | None = None,
        accept_proxy: bool = False,
        trusted: Sequence[Network] = (),
        proxy_header_timeout: float = 5.0,
        max_connections: int | None = None,
        idle_timeout: float | None = 600.0,
        termination_delay: float | None = None,
        splice: str = "auto",
        channel: socket.socket | None = None,
        sni_peek: bool = False,
        sni_timeout: float = 5.0,
    ) -> None:
        self.name = name
        self.sni_peek = sni_peek  # read the TLS ClientHello's SNI/ALPN into the session before upstream_peer
        self.sni_timeout = sni_timeout
        self.sock = sock
        self.channel = channel  # least_conn: receive connections here instead of accepting on sock
        self.app = app
        self.connector = connector or Connector()
        self.pipes = pipes or PipePool()
        self.accept_proxy = accept_proxy
        self.trusted = tuple(trusted)
        self.proxy_header_timeout = proxy_header_timeout
        self.max_connections = max_connections
        self.pump_options = {"idle_timeout": idle_timeout, "termination_delay": termination_delay}
        self.use_splice = splice != "never"
        self.splice_first = splice == "always"
        self.local_addr = sock.getsockname()
        self.connections: dict[L4Session, asyncio.Task] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pumps: set[SplicePump | TransportPump] = set()
        self._acceptor: Acceptor | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        # decided once: hooks nobody overrides are never called
        self._has_filter = overrides(app, "connection_filter")
        self._has_fail = overrides(app, "fail_to_connect")
        self._has_connected = overrides(app, "connected_to_upstream")
        self._has_logging = overrides(app, "logging")

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        if self.channel is not None:  # least_conn: connections come from the balancing process
            self._acceptor = ConnectionReceiver(loop, self.channel, self._on_accept, max_connections=self.max_connections)  # type: ignore[assignment]
        else:
            self._acceptor = Acceptor(loop, self.sock, self._on_accept, max_connections=self.max_connections)
        self._acceptor.start()

    def stop_accepting(self) -> None:
        if isinstance(self._acceptor, ConnectionReceiver):
            self._acceptor.finish()  # connections already in the channel are still served
        elif self._acceptor is not None:
            self._acceptor.close()

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for live connections to finish, then close the rest."""
        receiver = self._acceptor if isinstance(self._acceptor, ConnectionReceiver) else None
        try:
            async with asyncio.timeout(timeout):
                if receiver is not None:
                    await receiver.finish()
                await self._idle.wait()
        except TimeoutError:
            log.warning("%s: closing %d connection(s) still open after the grace period", self.name, len(self.connections))
        if receiver is not None:
            receiver.close()
        for pump in list(self.pumps):
            pump.close()
        for task in list(self.connections.values()):
            task.cancel()
        if self.connections:
            await asyncio.wait(list(self.connections.values()), timeout=1.0)

    # per connection ----------------------------------------------------------------------
    def _on_accept(self, conn: socket.socket, peer: object) -> None:
        try:
            ctx = self.app.new_ctx()
        except Exception:  # a bug in a hook must not leak the socket or its connection slot
            log.exception("%s: client %s: new_ctx failed", self.name, _fmt_addr(peer))
            conn.close()
            self._acceptor.release()  # type: ignore[union-attr]
            return
        session = L4Session(self.name, "tcp", peer, self.local_addr, ctx)
        self.connections[session] = self.loop.create_task(self._serve(conn, session))  # type: ignore[union-attr]
        self._idle.clear()

    async def _serve(self, conn: socket.socket, session: L4Session) -> None:
        app = self.app
        error: ProxyError | None = None
        upstream: socket.socket | None = None
        owned = False  # True once a pump owns (and will close) both sockets
        try:
            early = b""
            if self.accept_proxy and self._must_send_header(session.socket_peer):
                early = await self._read_proxy_header(conn, session)
            if self.sni_peek:
                peek = await read_client_hello(conn, prefix=early, timeout=self.sni_timeout)
                if peek.hello is not None:
                    session.sni, session.alpn = peek.hello.server_name, peek.hello.alpn
                early = peek.consumed  # the PROXY leftovers plus any hello bytes read: sent upstream first
            if self._has_filter and not await app.connection_filter(session):
                raise ProxyError(ErrorKind.ACCESS_DENIED, ErrorSource.DOWNSTREAM, context=f"client {session.client_addr} refused by connection_filter")
            upstream = await self._connect(session)
            first = self._proxy_header_for(session) + early
            if first:
                await self.loop.sock_sendall(upstream, first)  # type: ignore[union-attr]
            if self._has_connected:
                await app.connected_to_upstream(session, session.peer)
            pump = await self._make_pump(conn, upstream)
            owned = True
            self.pumps.add(pump)
            try:
                stats = await pump.start()
            finally:
                self.pumps.discard(pump)
            session.bytes_up, session.bytes_down = stats.bytes_up + len(early), stats.bytes_down
            session.reset_by, session.timed_out = stats.reset_by, stats.timed_out
        except ProxyError as exc:
            error = exc
            log.warning("%s: client %s: %s", self.name, _fmt_addr(session.client_addr), exc)
        except asyncio.CancelledError:
            error = ProxyError(ErrorKind.INTERNAL, context="closed by shutdown")
        except Exception as exc:  # a bug in a hook must not take the listener down
            error = ProxyError(ErrorKind.INTERNAL, context=f"{type(exc).__name__}: {exc}")
            log.exception("%s: client %s: unexpected error", self.name, _fmt_addr(session.client_addr))
        finally:
            if not owned:
                conn.close()
                if upstream is not None:
                    upstream.close()
            self._release(session)
        if self._has_logging:
            try:
                await app.logging(session, error)
            except Exception:
                log.exception("%s: logging hook failed", self.name)

    def _release(self, session: L4Session) -> None:
        self.connections.pop(session, None)
        if self._acceptor is not None:
            self._acceptor.release()
        if not self.connections:
            self._idle.set()

    async def _make_pump(self, conn: socket.socket, upstream: socket.socket) -> SplicePump | TransportPump:
        loop = self.loop
        if self.use_splice:
            return SplicePump(loop, conn, upstream, self.pipes, splice_first=self.splice_first, **self.pump_options)
        pump = TransportPump(loop, **self.pump_options)
        await pump.wrap_sockets(conn, upstream)
        return pump

    async def _connect(self, session: L4Session) -> socket.socket:
        """Dial upstream_peer's choice; on a retryable failure ask again (bounded tries)."""
        app = self.app
        tries = max(1, app.max_tries)
        while True:
            peer = await app.upstream_peer(session)
            try:
                upstream = await self.connector.connect(peer)
            except ProxyError as exc:
                if self._has_fail:
                    exc = app.fail_to_connect(session, peer, exc)
                session.tries += 1
                session.last_error = exc
                if not exc.retry or session.tries >= tries:
                    raise
                log.warning("%s: client %s: %s; trying another backend", self.name, _fmt_addr(session.client_addr), exc)
                continue
            session.peer = peer
            session.connected_at = self.loop.time()  # type: ignore[union-attr]
            return upstream

    def _proxy_header_for(self, session: L4Session) -> bytes:
        version = getattr(session.peer, "proxy_protocol", None)
        if not version:
            return b""
        header = session.proxy_header
        if header is not None and not header.is_local:
            src, dst = header.src, header.dst  # keep the original client through a chain
        else:
            src, dst = session.client_addr, session.local_addr
        if not (isinstance(src, tuple) and isinstance(dst, tuple)):
            src = dst = None  # unix-socket clients: LOCAL / UNKNOWN
        return proxy_protocol.build(version, src, dst)

    def _must_send_header(self, peer: object) -> bool:
        return proxy_protocol.required_from(peer, self.trusted)

    async def _read_proxy_header(self, conn: socket.socket, session: L4Session) -> bytes:
        """Read and strip the PROXY header; return bytes received after it."""
        loop = asyncio.get_running_loop()
        data = b""
        try:
            async with asyncio.timeout(self.proxy_header_timeout):
                while True:
                    chunk = await loop.sock_recv(conn, PROXY_HEADER_READ)
                    if not chunk:
                        raise ProxyError(ErrorKind.PROTOCOL_ERROR, ErrorSource.DOWNSTREAM, context="connection closed before a complete PROXY header")
                    data += chunk
                    header, used = proxy_protocol.parse(data)
                    if header is not None:
                        break
        except proxy_protocol.ProxyProtocolError as exc:
            raise ProxyError(ErrorKind.PROTOCOL_ERROR, ErrorSource.DOWNSTREAM, context=f"bad PROXY header: {exc}") from exc
        except TimeoutError as exc:
            raise ProxyError(ErrorKind.READ_TIMEOUT, ErrorSource.DOWNSTREAM, context=f"no complete PROXY header within {self.proxy_header_timeout:g}s") from exc
        session.proxy_header = header
        if not header.is_local and header.src is not None:
            session.client_addr = header.src
        return data[used:]


def _fmt_addr(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = addr[0]
        return f"[{host}]:{addr[1]}" if ":" in str(host) else f"{host}:{addr[1]}"
    return str(addr) or "unix"

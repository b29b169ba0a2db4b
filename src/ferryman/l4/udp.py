"""The UDP proxy service: ProxyL4 hooks run once per client session, datagrams relayed raw."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from ..errors import ErrorKind, ErrorSource, ProxyError
from ..net.connect import Peer
from ..net.udp import DatagramRelay, UdpSession
from .hooks import ProxyL4, overrides
from .session import L4Session

log = logging.getLogger(__name__)


class UdpProxyService:
    """Serve one bound UDP socket with a ProxyL4 app: a session per client address."""

    def __init__(
        self,
        name: str,
        sock: socket.socket,
        app: ProxyL4,
        *,
        idle_timeout: float = 30.0,
        max_sessions: int = 10000,
    ) -> None:
        self.name = name
        self.sock = sock
        self.app = app
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.local_addr = sock.getsockname()
        self.relay: DatagramRelay | None = None
        self._has_filter = overrides(app, "connection_filter")
        self._has_connected = overrides(app, "connected_to_upstream")
        self._has_logging = overrides(app, "logging")
        self._logging_tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.relay = DatagramRelay(
            loop, self.sock, self._open_upstream, idle_timeout=self.idle_timeout,
            max_sessions=self.max_sessions, on_close=self._on_close,
        )
        self.relay.start()

    def stop_accepting(self) -> None:
        if self.relay is not None:
            self.relay.stop_accepting()

    async def drain(self, timeout: float) -> None:
        """Let open sessions deliver replies until idle or ``timeout``, then close."""
        relay = self.relay
        if relay is None:
            return
        waiters = [s.closed for s in relay.sessions.values() if s.closed is not None]
        if waiters:
            await asyncio.wait(waiters, timeout=timeout)
        relay.close()
        if self._logging_tasks:
            await asyncio.wait(list(self._logging_tasks), timeout=1.0)

    async def _open_upstream(self, udp: UdpSession) -> socket.socket:
        app = self.app
        session = L4Session(self.name, "udp", udp.client, self.local_addr, app.new_ctx())
        udp.state = session
        try:
            if self._has_filter and not await app.connection_filter(session):
                raise ProxyError(ErrorKind.ACCESS_DENIED, ErrorSource.DOWNSTREAM, context=f"client {udp.client} refused by connection_filter")
            peer = await app.upstream_peer(session)
            sock = await _udp_connect(peer)
            session.peer = peer
            session.connected_at = asyncio.get_running_loop().time()
            if self._has_connected:
                await app.connected_to_upstream(session, peer)
        except ProxyError as exc:
            session.last_error = exc
            log.warning("%s: udp client %s: %s", self.name, udp.client, exc)
            raise
        except Exception as exc:
            session.last_error = ProxyError(ErrorKind.INTERNAL, context=f"{type(exc).__name__}: {exc}")
            log.exception("%s: udp client %s: unexpected error", self.name, udp.client)
            raise
        return sock

    def _on_close(self, udp: UdpSession) -> None:
        session: L4Session | None = udp.state  # type: ignore[assignment]
        if session is None:
            return
        session.bytes_up, session.bytes_down = udp.bytes_up, udp.bytes_down
        if self._has_logging:
            task = asyncio.get_running_loop().create_task(self._log(session))
            self._logging_tasks.add(task)
            task.add_done_callback(self._logging_tasks.discard)

    async def _log(self, session: L4Session) -> None:
        try:
            await self.app.logging(session, session.last_error)
        except Exception:
            log.exception("%s: logging hook failed", self.name)


async def _udp_connect(peer: Peer) -> socket.socket:
    """A connected UDP socket to the peer (so only its replies are read), optionally bound."""
    address = peer.address
    host = address.host
    try:
        ipaddress.ip_address(host)
        sockaddr: tuple = (host, address.port)
        family = address.family
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, address.port, type=socket.SOCK_DGRAM)
        if not infos:
            raise ProxyError(ErrorKind.CONNECT_ERROR, ErrorSource.UPSTREAM, context=f"{peer.name}: name does not resolve")
        family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if peer.bind_to is not None:
            sock.bind(peer.bind_to.sockaddr)
        sock.connect(sockaddr)
    except OSError as exc:
        sock.close()
        kind = ErrorKind.BIND_ERROR if peer.bind_to is not None else ErrorKind.CONNECT_ERROR
        raise ProxyError(kind, ErrorSource.UPSTREAM, context=peer.name) from exc
    return sock

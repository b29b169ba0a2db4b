"""Datagram sessions: one upstream socket per client address, replies sent from the listener.

A client's first datagram opens a session (asynchronously, through ``open_upstream``);
datagrams that arrive meanwhile are queued (bounded). Replies from the upstream socket
are sent back with ``sendto`` on the listening socket, so they leave from the address the
client talked to. A session with no traffic for ``idle_timeout`` is closed. Datagrams are
relayed whole, up to the 65507-byte UDP maximum, through one preallocated buffer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

MAX_DATAGRAM = 65535
PENDING_LIMIT = 64
READ_BATCH = 32


class UdpSession:
    __slots__ = ("client", "upstream", "pending", "last_active", "timer", "bytes_up", "bytes_down", "state", "closed")

    def __init__(self, client: object, now: float) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.pending: list[bytes] | None = []
        self.last_active = now
        self.timer: asyncio.TimerHandle | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.state: object = None  # owner's per-session object (the L4Session)
        self.closed: asyncio.Future[None] | None = None


OpenUpstream = Callable[[UdpSession], Awaitable[socket.socket]]


class DatagramRelay:
    """Relay datagrams between one listening UDP socket and per-client upstream sockets."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        open_upstream: OpenUpstream,
        *,
        idle_timeout: float = 30.0,
        max_sessions: int = 10000,
        on_close: Callable[[UdpSession], None] | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.open_upstream = open_upstream
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.on_close = on_close
        self.sessions: dict[object, UdpSession] = {}
        self.dropped = 0
        self._buf = bytearray(MAX_DATAGRAM)
        self._view = memoryview(self._buf)
        self._full_logged = False
        self._tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._on_client_datagrams)

    def stop_accepting(self) -> None:
        """Stop reading the listening socket: no new datagrams, no new sessions."""
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass

    def close(self) -> None:
        self.stop_accepting()
        for task in list(self._tasks):
            task.cancel()
        for session in list(self.sessions.values()):
            self._close_session(session)
        self.sock.close()

    # client → upstream ---------------------------------------------------------------------
    def _on_client_datagrams(self) -> None:
        recvfrom_into, view = self.sock.recvfrom_into, self._view
        for _ in range(READ_BATCH):
            try:
                n, client = recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors surfaced on the listener
                log.debug("udp listener recv: %s", exc)
                continue
            session = self.sessions.get(client)
            if session is None:
                session = self._new_session(client)
                if session is None:
                    continue
            session.last_active = self.loop.time()
            session.bytes_up += n
            if session.upstream is not None:
                try:
                    session.upstream.send(view[:n])
                except (BlockingIOError, InterruptedError):
                    self.dropped += 1
                except OSError as exc:
                    log.debug("udp send to upstream failed: %s", exc)
                    self.dropped += 1
            elif session.pending is not None and len(session.pending) < PENDING_LIMIT:
                session.pending.append(bytes(view[:n]))
            else:
                self.dropped += 1

    def _new_session(self, client: object) -> UdpSession | None:
        if len(self.sessions) >= self.max_sessions:
            self.dropped += 1
            if not self._full_logged:
                log.warning("udp %s: %d sessions open (max_sessions); dropping datagrams from new clients", self.sock.getsockname(), len(self.sessions))
                self._full_logged = True
            return None
        session = UdpSession(client, self.loop.time())
        session.closed = self.loop.create_future()
        self.sessions[client] = session
        task = self.loop.create_task(self._open(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return session

    async def _open(self, session: UdpSession) -> None:
        try:
            upstream = await self.open_upstream(session)
        except Exception:
            self._close_session(session)
            return
        if self.sessions.get(session.client) is not session:
            upstream.close()
            return
        session.upstream = upstream
        pending, session.pending = session.pending or [], None
        for data in pending:
            try:
                upstream.send(data)
            except OSError:
                self.dropped += 1
        self.loop.add_reader(upstream.fileno(), self._on_upstream_datagrams, session)
        session.timer = self.loop.call_at(session.last_active + self.idle_timeout, self._on_idle, session)

    # upstream → client ---------------------------------------------------------------------
    def _on_upstream_datagrams(self, session: UdpSession) -> None:
        recv_into, view, sendto = session.upstream.recv_into, self._view, self.sock.sendto  # type: ignore[union-attr]
        for _ in range(READ_BATCH):
            try:
                n = recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                continue  # ICMP port unreachable from the backend: keep the session until idle
            except OSError as exc:
                log.debug("udp recv from upstream failed: %s", exc)
                return
            session.last_active = self.loop.time()
            session.bytes_down += n
            try:
                sendto(view[:n], session.client)
            except OSError:
                self.dropped += 1

    def _on_idle(self, session: UdpSession) -> None:
        deadline = session.last_active + self.idle_timeout
        if self.loop.time() >= deadline:
            self._close_session(session)
        else:
            session.timer = self.loop.call_at(deadline, self._on_idle, session)

    def _close_session(self, session: UdpSession) -> None:
        if self.sessions.get(session.client) is session:
            del self.sessions[session.client]
            self._full_logged = False
        if session.timer is not None:
            session.timer.cancel()
        if session.upstream is not None:
            self.loop.remove_reader(session.upstream.fileno())
            session.upstream.close()
            session.upstream = None
        if session.closed is not None and not session.closed.done():
            session.closed.set_result(None)
            if self.on_close is not None:
                self.on_close(session)

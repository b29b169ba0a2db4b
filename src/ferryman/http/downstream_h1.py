"""A client's HTTP/1.1 connection: parse requests, run one exchange at a time, keep-alive,
pipelining, timeouts, and the switch to a raw tunnel after ``101 Switching Protocols``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Final

from ..net.detach import detach
from ..net.reactor import reactor_for
from ..net.sweep import INF
from ..protocol import proxy_protocol
from ..net.sendfile import send_file
from ..protocol.h1.events import Data, EndOfMessage, H1Error, RequestHead, Trailers
from ..protocol.h1.parser import RequestParser
from ..protocol.h1.serializer import REASONS, response_head
from .exchange import Exchange
from .session import Session

if TYPE_CHECKING:
    from .service import HttpProxyService

log = logging.getLogger(__name__)

FIRST_REQUEST_GRACE: Final = 1.0  # seconds a new connection has for its first request once draining


class DownstreamH1(asyncio.Protocol):
    """One client connection. Reading pauses while a pipelined request waits its turn or
    while the upstream cannot take more request body."""

    def __init__(self, service: HttpProxyService, proxy_header: object = None) -> None:
        self.service = service
        self.loop = service.loop
        self.parser = RequestParser(**service.parser_limits)
        self.transport: asyncio.Transport | None = None
        self.peer: object = None
        self.local: object = None
        self.exchange: Exchange | None = None
        self.pending: list = []  # events of pipelined requests waiting their turn
        self.pending_error: H1Error | None = None
        self.keep_alive = True
        self.closing = False
        self.tunnel = False
        self.detached = False  # the socket moved to a splice pump (tunnel)
        self.write_paused = False
        self.requests = 0
        self._read_pauses: set[object] = set()
        self.deadline = INF  # the earlier of the two below; see net/sweep.py
        self._due = INF  # when the current timeout (header, body, keep-alive) expires
        self._send_due = INF  # while the client takes none of our bytes: when we give up (send_timeout)
        self._head_started = False  # bytes of the next request head have arrived
        self.body_activity = 0.0  # loop time of the last request body bytes
        self.pending_file: tuple[int, int, int] | None = None  # fd, offset, count
        self.proxy_header = proxy_header  # the client's PROXY header (read before TLS, or below)
        self._proxy_buf: bytes | None = None  # not None while a PROXY header is awaited

    # asyncio callbacks -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        self.local = transport.get_extra_info("sockname")
        self.service.connections.add(self)
        header = self.proxy_header
        if header is not None:  # read before TLS (see HttpProxyService._adopt)
            self._use_proxy_header(header)  # type: ignore[arg-type]
            self._arm_timer(self.service.header_timeout)
        elif self.service.accept_proxy and proxy_protocol.required_from(self.peer, self.service.proxy_trusted):
            self._proxy_buf = b""
            self._arm_timer(self.service.proxy_header_timeout)
        else:
            self._arm_timer(self.service.header_timeout)
        if self.service.h2_alpn:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                self._switch_to_h2(b"")

    def _switch_to_h2(self, data: bytes) -> bool:
        """Hand the connection to an HTTP/2 protocol (ALPN chose h2, or ``data`` begins with
        the connection preface); False when ``data`` is not a preface after all."""
        from ..protocol.h2 import PREFACE
        from .downstream_h2 import DownstreamH2

        if data and not (data.startswith(PREFACE) if len(data) >= len(PREFACE) else PREFACE.startswith(data)):
            return False
        transport = self.transport
        assert transport is not None
        self.service.connections.discard(self)
        self.detached = True  # this protocol no longer owns the connection
        self._cancel_timer()
        h2 = DownstreamH2(self.service, transport, self.peer, self.local, self.proxy_header)
        transport.set_protocol(h2)
        h2.start(data)
        return True

    def data_received(self, data: bytes) -> None:
        if self._proxy_buf is not None:
            data = self._read_proxy_header(data)
            if not data:
                return
        exchange = self.exchange
        if self.tunnel:
            exchange.on_downstream_tunnel_data(data)  # type: ignore[union-attr]
            return
        if exchange is None and not self._head_started:
            if self.requests == 0 and data[:3] == b"PRI" and self.service.h2c and self._switch_to_h2(data):
                return  # the HTTP/2 connection preface (prior knowledge): an h2c connection
            self._head_started = True  # slowloris guard: the whole head within header_timeout
            self._arm_timer(self.service.header_timeout)
        try:
            events = self.parser.feed(data)
        except H1Error as exc:
            if exchange is None:
                self._reject(exc)
            else:
                self.pending_error = exc
                self._pause("error")
            return
        if events:
            self._handle(events)

    def _handle(self, events: list) -> None:
        for index, event in enumerate(events):
            exchange = self.exchange
            kind = type(event)
            if kind is RequestHead:
                if exchange is not None:  # pipelined: wait for the current exchange
                    self.pending = events[index:]
                    self._pause("pipeline")
                    return
                self._start(event)
            elif exchange is None:
                continue
            elif kind is Data:
                exchange.on_request_body(event.data)
            elif kind is EndOfMessage:
                exchange.on_request_end()
            elif kind is Trailers:
                exchange.on_request_trailers(event.headers)

    def _read_proxy_header(self, data: bytes) -> bytes:
        """Strip the PROXY header the listener requires; returns the bytes after it."""
        buf = self._proxy_buf + data  # type: ignore[operator]
        try:
            header, used = proxy_protocol.parse(buf)
        except proxy_protocol.ProxyProtocolError as exc:
            log.info("%s: client %s: bad PROXY header: %s", self.service.name, self.peer, exc)
            self.abort()
            return b""
        if header is None:
            self._proxy_buf = buf
            return b""
        self._proxy_buf = None
        self._use_proxy_header(header)
        self._arm_timer(self.service.header_timeout)
        return buf[used:]

    def _use_proxy_header(self, header: proxy_protocol.ProxyHeader) -> None:
        """The header's source is the client for hooks, X-Forwarded-For and logs (a LOCAL
        header keeps the real addresses)."""
        self.proxy_header = header
        if not header.is_local and header.src is not None:
            self.peer, self.local = header.src, header.dst

    def eof_received(self) -> bool:
        if self.tunnel and self.exchange is not None:
            self.exchange.on_downstream_tunnel_eof()
            return self.transport is not None and self.transport.can_write_eof()  # TLS cannot half-close
        if self.exchange is not None and not self.exchange.request_done:
            return False  # truncated request body: connection_lost tells the exchange
        self.keep_alive = False
        return self.exchange is not None  # keep the write side open to finish the response

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._cancel_timer()
        if self.service.receiver is not None:
            self.service.receiver.release()  # least_conn: this worker has one connection fewer
        if self.detached:
            return  # the socket lives on in a splice pump
        self.service.connections.discard(self)
        if self.exchange is not None:
            self.exchange.on_downstream_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        timeout = self.service.send_timeout
        if timeout:  # nginx's send_timeout: a client that stops reading is not kept forever
            self._send_due = self.loop.time() + timeout
            self.deadline = min(self._due, self._send_due)
        if self.exchange is not None:
            self.exchange.on_downstream_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._send_due = INF
        self.deadline = self._due
        if self.exchange is not None:
            self.exchange.on_downstream_write_resumed()

    # exchanges -------------------------------------------------------------------------------
    def _start(self, head: RequestHead) -> None:
        self._cancel_timer()
        self._head_started = False
        self.requests += 1
        limit = self.service.keepalive_requests
        if not head.keep_alive or self.closing or (limit and self.requests >= limit):
            self.keep_alive = False  # the last request of this connection: Connection: close
        session = Session(head, self.peer, self.local, self, tls=self.service.tls is not None)
        service = self.service
        if service.plan.new_ctx:
            session.ctx = service.app.new_ctx()
        exchange = self.exchange = Exchange(self, session)
        service.exchanges.add(exchange)
        if not exchange.request_done and service.body_timeout:
            self.body_activity = self.loop.time()
            self._arm_timer(service.body_timeout)
        self.loop.create_task(self._run(exchange))

    async def _run(self, exchange: Exchange) -> None:
        try:
            await exchange.run()
        finally:
            self.service.exchanges.discard(exchange)
            self._finished(exchange)

    def _finished(self, exchange: Exchange) -> None:
        self.exchange = None
        if self.detached:
            self.service.connections.discard(self)
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.tunnel or not self.keep_alive or self.closing or not exchange.request_done:
            transport.close()  # an unread request body would desync the next request
            return
        if self.pending_error is not None:
            self._reject(self.pending_error)
            return
        self._arm_timer(self.service.keepalive_timeout)
        self._resume("pipeline")
        self._resume("error")
        pending, self.pending = self.pending, []
        if self.parser.paused:  # an upgrade the upstream refused: back to HTTP
            try:
                pending += self.parser.resume()
            except H1Error as exc:
                self._reject(exc)
                return
        if pending:
            self._handle(pending)

    def send_response(self, session: Session, head: bytes, body: bytes) -> None:
        """A response made by ferryman itself (request_filter, errors)."""
        if not self.keep_alive:
            head = head[:-2] + b"connection: close\r\n\r\n"
        self.write(head + body)
        session.response_sent = True
        session.bytes_sent += len(body)

    def send_file(self, session: Session, head: bytes, fd: int, offset: int, count: int) -> None:
        """Start a file response: the head now, the body in :meth:`flush_file`."""
        self.send_response(session, head, b"")
        self.pending_file = (fd, offset, count)

    async def flush_file(self, session: Session) -> None:
        """Send the pending file body: sendfile(2) on a plain socket, else copy by chunks."""
        fd, offset, count = self.pending_file  # type: ignore[misc]
        self.pending_file = None
        try:
            transport = self.transport
            sock = transport.get_extra_info("socket") if transport is not None else None
            if not count or transport is None:
                return
            if sock is not None and transport.get_extra_info("sslcontext") is None:
                while transport.get_write_buffer_size() and not transport.is_closing():
                    await asyncio.sleep(0.002)  # the head leaves first (usually at once)
                sent = await send_file(sock.fileno(), fd, offset, count, reactor_for(self.loop), timeout=self.service.body_timeout)
                session.bytes_sent += sent
                if sent < count:
                    raise OSError(f"file ended {count - sent} bytes early")
            else:
                session.bytes_sent += await self._copy_file(fd, offset, count)
        except OSError as exc:
            log.info("%s: client %s: file response cut short: %s", self.service.name, self.peer, exc)
            self.abort()
        finally:
            os.close(fd)

    async def _copy_file(self, fd: int, offset: int, count: int) -> int:
        sent = 0
        while sent < count and not self.closing:
            data = os.pread(fd, min(256 * 1024, count - sent), offset + sent)
            if not data:
                raise OSError(f"file ended {count - sent} bytes early")
            self.write(data)
            sent += len(data)
            while self.write_paused and not self.closing:
                await asyncio.sleep(0.005)
        return sent

    def _reject(self, exc: H1Error) -> None:
        """Answer a malformed request with its status and close (the stream cannot be trusted)."""
        log.info("%s: client %s: %s %s", self.service.name, self.peer, exc.status, exc)
        body = f"{exc.status} {REASONS.get(exc.status, b'').decode()}\n{exc}\n".encode()
        head = response_head(
            exc.status, b"",
            [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body)), (b"connection", b"close")],
        )
        self.write(head + body)
        self.close()

    # tunnel ----------------------------------------------------------------------------------
    def start_tunnel(self) -> bytes:
        """The connection stops speaking HTTP: returns the bytes the client sent after the
        request head (the caller forwards them first)."""
        self.tunnel = True
        self._cancel_timer()
        return self.parser.switch_protocols() if self.parser.paused else b""

    def resume_tunnel(self) -> None:
        """Callback tunnel: client bytes now go to ``exchange.on_downstream_tunnel_data``."""
        self._resume("pipeline")

    async def detach_socket(self, deadline: float) -> socket.socket | None:
        """Splice tunnel: hand the socket over; this protocol stays registered (for drain)
        until the exchange ends, and ignores its transport's end."""
        self.detached = True
        return await detach(self.transport, deadline)  # type: ignore[arg-type]

    # io helpers ------------------------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def writelines(self, parts: list[bytes | memoryview]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(parts)

    def write_eof(self) -> None:
        if self.transport is not None and not self.transport.is_closing() and self.transport.can_write_eof():
            self.transport.write_eof()

    def close(self) -> None:
        self.closing = True
        self._close_pump()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        self._close_pump()
        if self.transport is not None:
            self.transport.abort()

    def _close_pump(self) -> None:
        if self.detached and self.exchange is not None and self.exchange.pump is not None:
            self.exchange.pump.close()

    def pause_reading_for(self, owner: object) -> None:
        self._pause(owner)

    def resume_reading_for(self, owner: object) -> None:
        self._resume(owner)

    def _pause(self, owner: object) -> None:
        if not self._read_pauses and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._read_pauses.add(owner)

    def _resume(self, owner: object) -> None:
        if owner in self._read_pauses:
            self._read_pauses.discard(owner)
            if not self._read_pauses and self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    def shutdown(self) -> None:
        """Graceful stop: an idle keep-alive connection closes now, a busy one after its
        exchange. A connection accepted but not yet heard from gets a moment for its first
        request, which may be on its way (closing it would fail a request that was sent
        before the stop); one whose head is arriving keeps its header timeout."""
        self.keep_alive = False
        if self.exchange is not None or self._head_started:
            return
        if self.requests == 0 and self._proxy_buf is None:
            self._set_due(min(self._due, self.loop.time() + FIRST_REQUEST_GRACE))
        else:
            self.close()

    # timeouts (checked by the service's DeadlineSweep) ---------------------------------------
    def _arm_timer(self, timeout: float | None) -> None:
        self._set_due(self.loop.time() + timeout if timeout else INF)

    def _cancel_timer(self) -> None:
        self._set_due(INF)

    def _set_due(self, due: float) -> None:
        self._due = due
        self.deadline = due if due < self._send_due else self._send_due

    def _check_body_progress(self, exchange: Exchange, now: float) -> None:
        """Body read timeout: time spent paused by backpressure does not count."""
        timeout = self.service.body_timeout
        if self._read_pauses:
            self.body_activity = now
        deadline = self.body_activity + timeout  # type: ignore[operator]
        if now >= deadline:
            self._set_due(INF)
            exchange.on_request_body_timeout(timeout)  # type: ignore[arg-type]
        else:
            self._set_due(deadline)

    def on_deadline(self, now: float) -> None:
        if now >= self._send_due:
            log.info("%s: client %s: took none of the response for %gs: connection closed", self.service.name, self.peer, self.service.send_timeout)
            self.abort()
            return
        if now < self._due:  # the send timeout's check, before it expired
            self.deadline = min(self._due, self._send_due)
            return
        exchange = self.exchange
        if exchange is not None:
            if not exchange.request_done:
                self._check_body_progress(exchange, now)
            else:
                self._set_due(INF)
            return
        self._set_due(INF)
        if self._proxy_buf is not None:
            log.info("%s: client %s: no complete PROXY header within %gs", self.service.name, self.peer, self.service.proxy_header_timeout)
            self.abort()
        elif self._head_started:  # a head that did not complete in time (slowloris)
            self._reject(H1Error(408, "request head not received in time"))
        else:
            self.close()  # idle keep-alive connection

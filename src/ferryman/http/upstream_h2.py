"""HTTP/2 to backends: pooled connections that carry many requests at once.

A peer with ``protocol = "h2c"`` (cleartext, prior knowledge) or ``"h2"`` (TLS, ALPN h2) is
reached through :class:`UpstreamH2` connections, shared by every request to the same pool
key: a request takes a stream on a connection with a free slot (the backend's
SETTINGS_MAX_CONCURRENT_STREAMS, capped by ours) or opens a new connection; requests that
arrive while a connection is being opened wait for it instead of opening their own.

A GOAWAY stops new streams on its connection; streams it says were not processed (above
its last stream id) or refused (REFUSED_STREAM) fail with a retryable error, the others
finish. Each request's stream (:class:`UpstreamH2Stream`) offers the exchange what an
:class:`~.upstream_h1.UpstreamH1` connection does; "pausing its reading" withholds the
response's flow-control credit, so a slow client stops the backend after one window.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Hashable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError

from ..errors import ErrorKind, ErrorSource, ProxyError
from ..net.tls import TlsOptions
from ..protocol.h2 import Credit, ErrorCodes, H2ConnectionError, H2Endpoint, Malformed, request_block, response_head, trailer_block
from .h2_send import send_queued

if TYPE_CHECKING:
    from ..net.connect import Peer
    from .exchange import Exchange

log = logging.getLogger(__name__)

MAX_STREAMS = 100  # streams one upstream connection carries at most (below the backend's own limit)
STREAM_WINDOW = 256 * 1024  # response bytes a backend may send per stream before our credit returns
CONNECTION_WINDOW = 4 * 1024 * 1024
_READER = "reader"  # the exchange, as a holder of a stream's credit


class _NotSwitched:
    """An h2 stream never switches protocols (the exchange asks ``upstream.parser.switched``)."""

    switched = False


class H2Pool:
    """HTTP/2 upstream connections by pool key. Connections are shared, not checked out: a
    connection stays here while it is alive, and one without streams for ``idle_timeout``
    is closed by :meth:`expire`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, idle_timeout: float = 60.0, max_streams: int = MAX_STREAMS) -> None:
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.max_streams = max_streams
        self.conns: dict[Hashable, list[UpstreamH2]] = {}
        self.pending: dict[Hashable, asyncio.Future[UpstreamH2 | None]] = {}

    def get(self, key: Hashable) -> UpstreamH2 | None:
        """A live connection for ``key`` with a free stream slot (the busiest such one, so
        idle ones can expire)."""
        best = None
        for conn in self.conns.get(key, ()):
            if conn.available() and (best is None or conn.active > best.active):
                best = conn
        return best

    def add(self, conn: UpstreamH2) -> None:
        self.conns.setdefault(conn.pool_key, []).append(conn)

    def discard(self, conn: UpstreamH2) -> None:
        conns = self.conns.get(conn.pool_key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.conns[conn.pool_key]

    def expire(self, now: float) -> None:
        for conns in list(self.conns.values()):
            for conn in list(conns):
                if not conn.active and conn.idle_deadline <= now:
                    conn.close()

    @property
    def count(self) -> int:
        return sum(len(conns) for conns in self.conns.values())

    def close(self) -> None:
        for conns in list(self.conns.values()):
            for conn in list(conns):
                conn.close()
        self.conns.clear()


async def acquire_stream(exchange: Exchange, peer: Peer, key: Hashable) -> tuple[UpstreamH2Stream, bool]:
    """A stream towards ``peer`` for ``exchange``, and whether its connection was reused."""
    pool = exchange.service.h2_pool
    conn = pool.get(key)
    if conn is not None:
        return conn.open_stream(), True
    pending = pool.pending.get(key)
    if pending is not None:  # a connection is being opened: share it if it has room
        conn = await asyncio.shield(pending)
        if conn is not None and conn.available():
            return conn.open_stream(), False
        conn = pool.get(key)
        if conn is not None:
            return conn.open_stream(), True
    future: asyncio.Future[UpstreamH2 | None] = exchange.loop.create_future()
    pool.pending[key] = future
    try:
        conn = await _open(exchange, peer, key, pool)
    finally:
        if pool.pending.get(key) is future:
            del pool.pending[key]
        if not future.done():
            future.set_result(conn)
    pool.add(conn)
    return conn.open_stream(), False


async def _open(exchange: Exchange, peer: Peer, key: Hashable, pool: H2Pool) -> UpstreamH2:
    """A new HTTP/2 connection to ``peer`` (connect failures go through fail_to_connect)."""
    from .exchange import _proxy_header

    loop = exchange.loop
    sock = await exchange._connect(peer)
    try:
        if peer.proxy_protocol:
            await loop.sock_sendall(sock, _proxy_header(peer.proxy_protocol, exchange.session))
        if peer.protocol == "h2":
            tls = peer.tls or TlsOptions()
            if tls.alpn != ("h2",):
                tls = replace(tls, alpn=("h2",))
            transport, conn = await loop.create_connection(
                lambda: UpstreamH2(key, peer, pool), sock=sock, ssl=tls.context(),
                server_hostname=tls.server_hostname(peer.address.host), ssl_handshake_timeout=peer.connect_timeout or 60.0,
            )
            ssl_object = transport.get_extra_info("ssl_object")
            alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if alpn != "h2":
                conn.abort()
                raise ProxyError(ErrorKind.CONNECT_ERROR, ErrorSource.UPSTREAM, retry=True, context=f"{peer.name} does not speak HTTP/2 over TLS (ALPN: {alpn})")
        else:
            _, conn = await loop.create_connection(lambda: UpstreamH2(key, peer, pool), sock=sock)
        try:  # its stream limit comes with its first SETTINGS: until then none may be assumed
            async with asyncio.timeout(peer.connect_timeout or 10.0):
                await conn.ready
        except BaseException:
            conn.abort()
            raise
    except TimeoutError as exc:
        raise ProxyError(ErrorKind.CONNECT_TIMEOUT, ErrorSource.UPSTREAM, retry=True, context=f"{peer.name} sent no HTTP/2 SETTINGS") from exc
    except ssl.SSLError as exc:
        sock.close()
        raise ProxyError(ErrorKind.CONNECT_ERROR, ErrorSource.UPSTREAM, retry=True, context=f"TLS handshake with {peer.name} failed") from exc
    except OSError as exc:
        sock.close()
        raise ProxyError(ErrorKind.CONNECT_ERROR, ErrorSource.UPSTREAM, retry=True, context=peer.name) from exc
    return conn  # type: ignore[return-value]


class UpstreamH2(asyncio.Protocol):
    """One HTTP/2 connection to a backend, carrying up to its stream limit of requests."""

    def __init__(self, pool_key: Hashable, peer: Peer, pool: H2Pool) -> None:
        self.pool_key = pool_key
        self.peer_name = peer.name
        self.scheme = b"https" if peer.protocol == "h2" else b"http"
        self.pool = pool
        self.loop = pool.loop
        self.endpoint = H2Endpoint(client=True, max_streams=MAX_STREAMS, stream_window=STREAM_WINDOW, connection_window=CONNECTION_WINDOW)
        self.streams: dict[int, UpstreamH2Stream] = {}
        self.active = 0  # streams handed out and not yet closed (some may not have a stream id yet)
        self.transport: asyncio.Transport | None = None
        self.alive = True
        self.goaway = False  # no new streams (GOAWAY received, or we are closing)
        self.write_blocked = False
        self.idle_deadline = self.loop.time() + pool.idle_timeout
        self._flush_scheduled = False
        self.ready: asyncio.Future[None] = self.loop.create_future()  # the backend's first SETTINGS arrived

    # pool ----------------------------------------------------------------------------------
    def available(self) -> bool:
        return (
            self.alive and not self.goaway
            and self.active < min(self.endpoint.remote_max_streams, self.pool.max_streams)
            and self.endpoint.conn.highest_outbound_stream_id < 2**31 - 1000
        )

    def open_stream(self) -> UpstreamH2Stream:
        self.active += 1
        return UpstreamH2Stream(self)

    def stream_closed(self, stream: UpstreamH2Stream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        self.active -= 1
        if not self.active:
            self.idle_deadline = self.loop.time() + self.pool.idle_timeout
            if self.goaway:
                self.close()

    def close(self) -> None:
        """GOAWAY, then close (streams in flight are cut: use when idle or shutting down)."""
        self.goaway = True
        self.pool.discard(self)
        if self.alive and self.transport is not None and not self.transport.is_closing():
            self.endpoint.goaway()
            self.flush()
            self.transport.close()
        self.alive = False

    def abort(self) -> None:
        self.alive = False
        self.goaway = True
        self.pool.discard(self)
        if self.transport is not None:
            self.transport.abort()

    # output ----------------------------------------------------------------------------------
    def flush(self) -> None:
        self._flush_scheduled = False
        data = self.endpoint.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def schedule_flush(self) -> None:
        """Frames queued outside ``data_received`` leave together, once per loop pass."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    # asyncio callbacks -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flush()  # the preface and our SETTINGS

    def data_received(self, data: bytes) -> None:
        try:
            events = self.endpoint.receive(data)
        except H2ConnectionError as exc:
            log.info("upstream %s: HTTP/2 connection error: %s", self.peer_name, exc)
            self.flush()
            self._fail_all(ProxyError(ErrorKind.PROTOCOL_ERROR, ErrorSource.UPSTREAM, context=f"{self.peer_name}: HTTP/2 connection error: {exc}"))
            self.abort()
            return
        streams = self.streams
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_data(event.data, event.flow_controlled_length)
                else:
                    self.endpoint.ack(event.stream_id, event.flow_controlled_length)
            elif kind is ResponseReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_head(event.headers, event.stream_ended is not None)
            elif kind is StreamEnded:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_end()
            elif kind is TrailersReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_trailers(event.headers)
            elif kind is WindowUpdated:
                self._window_opened(event.stream_id)
            elif kind is StreamReset:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_reset(event.error_code)
            elif kind is InformationalResponseReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_interim(event.headers)
            elif kind is Malformed:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_malformed(event.reason)
            elif kind is RemoteSettingsChanged:
                if not self.ready.done():
                    self.ready.set_result(None)
                self._window_opened(0)
            elif kind is ConnectionTerminated:
                self._on_goaway(event.error_code, event.last_stream_id)
        self.flush()

    def _window_opened(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None and stream.out:
                stream.send_pending()
            return
        for stream in list(self.streams.values()):
            if stream.out:
                stream.send_pending()

    def _on_goaway(self, code: int, last_stream_id: int | None) -> None:
        self.goaway = True
        self.pool.discard(self)
        last = last_stream_id if last_stream_id is not None else 2**31
        for stream_id, stream in list(self.streams.items()):
            if stream_id > last:  # never processed: safe to send again
                stream.on_refused(f"{self.peer_name} went away (GOAWAY) before processing the request")
        if code:
            log.info("upstream %s: GOAWAY %s", self.peer_name, _code_name(code))
        if not self.active:
            self.close()

    def _fail_all(self, error: ProxyError) -> None:
        for stream in list(self.streams.values()):
            stream.fail(error)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionResetError(f"{self.peer_name} closed the connection before its SETTINGS"))
        self.alive = False
        self.goaway = True
        self.pool.discard(self)
        for stream in list(self.streams.values()):
            stream.on_lost(exc)

    def pause_writing(self) -> None:
        self.write_blocked = True

    def resume_writing(self) -> None:
        self.write_blocked = False
        self._window_opened(0)
        self.flush()


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


class UpstreamH2Stream:
    """One request on an :class:`UpstreamH2` connection, seen by the exchange like an
    :class:`~.upstream_h1.UpstreamH1` connection. ``transport`` is the stream itself: pausing
    its reading withholds the response's credit."""

    h2 = True
    parser = _NotSwitched

    def __init__(self, conn: UpstreamH2) -> None:
        self.conn = conn
        self.pool_key = conn.pool_key
        self.peer_name = conn.peer_name
        self.stream_id = 0
        self.listener: Any = None
        self.transport = self
        self.pool = None
        self.alive = True
        self.received = 0
        self.write_paused = False
        self.method = b""
        self.credit = Credit()
        self.out: deque[bytes] = deque()
        self.end_after: list | bool | None = None  # end the request once ``out`` is sent (trailers or True)
        self.local_ended = False
        self.remote_ended = False
        self.closed = False

    # exchange interface ------------------------------------------------------------------------
    def begin(self, listener: Any, method: bytes) -> None:
        self.listener = listener
        self.method = method

    def send_head(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        conn = self.conn
        if not conn.alive or self.closed:
            raise ProxyError(ErrorKind.CONNECTION_CLOSED, ErrorSource.UPSTREAM, context=f"{self.peer_name} closed the connection before the request")
        endpoint = conn.endpoint
        try:
            stream_id = endpoint.next_stream_id()
            endpoint.conn.send_headers(stream_id, request_block(method, target, headers, conn.scheme), end_stream=end_stream)
        except ProtocolError as exc:  # too many streams, a closed connection
            raise ProxyError(ErrorKind.CONNECTION_CLOSED, ErrorSource.UPSTREAM, retry=True, context=f"{self.peer_name}: no HTTP/2 stream: {exc}") from exc
        self.stream_id = stream_id
        conn.streams[stream_id] = self
        self.local_ended = end_stream
        conn.schedule_flush()

    def write(self, data: bytes | memoryview) -> None:
        if self.local_ended or self.closed or not data:
            return
        conn = self.conn
        if self.out or conn.write_blocked:
            self.out.append(bytes(data))
        else:
            sent = conn.endpoint.send_data(self.stream_id, data)
            if sent < 0:
                return
            if sent < len(data):
                self.out.append(bytes(data[sent:]))
            conn.schedule_flush()
        if self.out and not self.write_paused:
            self.write_paused = True
            if self.listener is not None:
                self.listener.on_upstream_write_paused()

    def writelines(self, parts: list[bytes]) -> None:
        self.write(b"".join(parts))

    def end_request(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        """The request body is complete: END_STREAM (on trailers, if any), once sent."""
        if self.local_ended or self.closed:
            return
        if self.out:
            self.end_after = trailers or True
            return
        self._end(trailers)

    def _end(self, trailers: list | None) -> None:
        endpoint = self.conn.endpoint
        if trailers:
            endpoint.send_headers(self.stream_id, trailer_block(trailers), end_stream=True)
        else:
            endpoint.end_stream(self.stream_id)
        self.local_ended = True
        self.conn.schedule_flush()
        if self.remote_ended:
            self._detach()

    def send_pending(self) -> None:
        """The windows opened: send what waits, then resume the request body."""
        if not send_queued(self.conn, self.stream_id, self.out):
            return
        if self.end_after is not None and not self.closed:
            trailers, self.end_after = self.end_after, None
            self._end(trailers if isinstance(trailers, list) else None)
        if self.write_paused:
            self.write_paused = False
            if self.listener is not None:
                self.listener.on_upstream_write_resumed()

    # what the exchange calls on a "transport": credit for the response body
    def pause_reading(self) -> None:
        self.credit.pause(_READER)

    def resume_reading(self) -> None:
        due = self.credit.resume(_READER)
        if due and self.stream_id:
            self.conn.endpoint.ack(self.stream_id, due)
            self.conn.schedule_flush()

    def is_closing(self) -> bool:
        return self.closed

    def finish(self) -> None:
        self.listener = None

    def is_reusable(self) -> bool:
        return False  # the connection stays pooled; a stream is used once

    def close(self) -> None:
        """The exchange is done with the stream: cancel it if it is still open either way."""
        if self.closed:
            return
        if self.stream_id and not (self.local_ended and self.remote_ended):
            self.conn.endpoint.reset(self.stream_id, ErrorCodes.CANCEL)
            self.conn.schedule_flush()
        self._detach()

    abort = close

    def _detach(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.alive = False
        self.listener = None
        self.out.clear()
        due = self.credit.release()
        conn = self.conn
        if due and self.stream_id:
            conn.endpoint.ack(self.stream_id, due)  # the connection window counts these bytes
            conn.schedule_flush()
        conn.stream_closed(self)

    # connection callbacks ---------------------------------------------------------------------
    def on_head(self, block: list[tuple[bytes, bytes]], ended: bool) -> None:
        if self.listener is not None:
            self.listener.on_upstream_head(response_head(block, ended, self.method))

    def on_interim(self, block: list[tuple[bytes, bytes]]) -> None:
        if self.listener is not None:
            self.listener.on_upstream_head(response_head(block, False, self.method))

    def on_data(self, data: bytes, flow: int) -> None:
        self.received += len(data)
        listener = self.listener
        if listener is not None:
            listener.on_upstream_body(data)
        due = self.credit.received(flow)
        if due:
            self.conn.endpoint.ack(self.stream_id, due)

    def on_trailers(self, block: list[tuple[bytes, bytes]]) -> None:
        if self.listener is not None:
            self.listener.on_upstream_trailers(list(block))

    def on_end(self) -> None:
        self.remote_ended = True
        listener = self.listener
        if listener is not None:
            listener.on_upstream_end()
        if self.local_ended:
            self._detach()

    def on_reset(self, code: int) -> None:
        if code == ErrorCodes.REFUSED_STREAM:
            self.on_refused(f"{self.peer_name} refused the stream (REFUSED_STREAM)")
            return
        kind = ErrorKind.CONNECTION_RESET
        received = " mid-response" if self.received else " before responding"
        self.fail(ProxyError(kind, ErrorSource.UPSTREAM, context=f"{self.peer_name} reset the stream ({_code_name(code)}){received}"))

    def on_refused(self, context: str) -> None:
        """The backend did not process the request: another attempt may send it again."""
        listener = self.listener
        retry = listener is not None and listener.session.retry_safe
        self.fail(ProxyError(ErrorKind.CONNECTION_CLOSED, ErrorSource.UPSTREAM, retry=retry, context=context))

    def on_malformed(self, reason: str) -> None:
        self.fail(ProxyError(ErrorKind.PROTOCOL_ERROR, ErrorSource.UPSTREAM, context=f"{self.peer_name}: invalid HTTP/2 response: {reason}"))

    def on_lost(self, exc: Exception | None) -> None:
        listener = self.listener
        self.closed = True  # nothing more can be sent; the exchange learns why
        self.conn.streams.pop(self.stream_id, None)
        if listener is not None:
            self.listener = None
            listener.on_upstream_lost(exc)
        self._release_slot()

    def fail(self, error: ProxyError) -> None:
        """The stream is over with ``error`` (already reset, or reset now)."""
        listener = self.listener
        if not (self.local_ended and self.remote_ended) and self.stream_id and not self.closed:
            self.conn.endpoint.reset(self.stream_id, ErrorCodes.CANCEL)
        self.listener = None
        self._detach()
        if listener is not None:
            listener.on_upstream_failed(error)

    def _release_slot(self) -> None:
        if self.alive:
            self.alive = False
            self.listener = None
            self.credit.release()
            self.conn.active -= 1

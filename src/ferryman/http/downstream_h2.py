"""A client's HTTP/2 connection (h2 by ALPN on TLS, h2c by prior knowledge on plain
listeners): every stream is one request, driven by the same phase driver as HTTP/1.1.

:class:`DownstreamH2` owns the connection (frames in and out, SETTINGS, GOAWAY, timeouts);
each stream gets an :class:`H2Stream`, which offers its exchange what
:class:`~.downstream_h1.DownstreamH1` does (write, pause/resume reading, abort, direct
responses) in frames, and an :class:`H2Exchange`, which sends the response head, body and
trailers as HEADERS/DATA/HEADERS instead of HTTP/1.1 bytes. Backpressure is flow control
both ways: request body credit goes back to the client only as the upstream takes the
bytes; response DATA waits for the client's window, and while it waits the upstream is
paused (see :mod:`ferryman.protocol.h2.credit`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)

from ..net.sweep import INF
from ..protocol.h1.events import BodyKind, ResponseHead
from ..protocol.h1.headers import strip_hop_by_hop
from ..protocol.h2 import Credit, ErrorCodes, H2ConnectionError, H2Endpoint, Malformed, RequestHeads, response_block, trailer_block
from .exchange import Exchange, _drop, size_of
from .h2_send import send_queued
from .session import Session

if TYPE_CHECKING:
    from .service import HttpProxyService

log = logging.getLogger(__name__)

FILE_CHUNK: Final = 64 * 1024


EARLY_RESET_ALLOWANCE: Final = 100  # streams a client may reset before their response, see count_early_reset


class H2Exchange(Exchange):
    """An exchange whose client speaks HTTP/2: the response goes out as frames."""

    h2_downstream = True

    def _send_head_h2(self, head: ResponseHead, headers: list[tuple[bytes, bytes]]) -> None:
        s = self.session
        if head.body.kind is BodyKind.NONE:
            self.resp_mode = "none"
        else:
            self.resp_mode = "raw"  # DATA frames; their END_STREAM ends the body
            if self.body_filters:
                _drop(headers, b"content-length")  # the filters may change the length
        s.response_sent = True
        self.resp_streaming = True
        stream = self.downstream
        if self.resp_ended and not self.resp_trailers and not self.body_filters and self.resp_mode == "raw":
            # the whole response is here (the usual small one): HEADERS, then one DATA that ends it
            body = b"".join(self.resp_buffer)
            self.resp_buffer.clear()
            s.bytes_sent += len(body)
            stream.send_whole(s.response_status, headers, body)
        else:
            stream.send_head(s.response_status, headers, self.resp_mode == "none")
            for data in self.resp_buffer:
                self._write_response_chunk(data)
            self.resp_buffer.clear()
        if self.upstream is not None and self.upstream.transport is not None and not self.downstream.write_paused:
            self.upstream.transport.resume_reading()  # it paused while the head was on its way
        if self.resp_ended:
            self._end_response()

    def _send_tail(self, data: bytes | memoryview) -> None:
        self.downstream.write(data)

    def _write_response_chunk(self, data: bytes | memoryview) -> None:
        if self.body_filters:
            data = self._filter_body(data, False)
            if not data:
                return
        self.session.bytes_sent += len(data)
        self.downstream.write(data)

    def _end_response(self) -> None:
        if (self.resp_trailers or self.body_filters) and not self._end_filters():
            return
        self.downstream.end(self.resp_trailers)
        if not self.done.done():
            self.done.set_result(None)

    def on_upstream_head(self, head: ResponseHead) -> None:
        self.last_activity = self.loop.time()
        if head.status < 200:
            if head.status != 101 and not self.downstream.closing:  # 100 Continue, 103 Early Hints
                self.downstream.send_interim(head.status, strip_hop_by_hop(head.headers))
            return
        if not self.head_future.done():
            self.head_future.set_result(head)

    async def _connect_tunnel(self) -> None:
        self.session.respond_error(501, "CONNECT over HTTP/2 is not supported")
        if not self.done.done():
            self.done.set_result(None)


class H2Stream:
    """One stream of a client's HTTP/2 connection: the downstream of one exchange."""

    def __init__(self, conn: DownstreamH2, stream_id: int, remote_ended: bool) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.service = conn.service
        self.loop = conn.loop
        self.transport = conn.transport  # for Session.ssl_object
        self.exchange: H2Exchange | None = None
        self.tunnel = False  # what the exchange asks of a downstream; never true for a stream
        self.detached = False
        self.keep_alive = True  # the exchange may clear it: meaningless per stream
        self.closing = False  # reset either way, or the connection is gone
        self.write_paused = False
        self.credit = Credit()
        self.out: deque[bytes] = deque()
        self.local_ended = False  # END_STREAM sent (or the stream was reset)
        self.remote_ended = remote_ended
        self.end_after: list | bool | None = None  # end once ``out`` is sent (trailers or True)
        self.expected: int | None = None  # the request's content-length
        self.received = 0  # request body bytes
        self.body_activity = 0.0
        self.stalled_at = 0.0  # loop time the response last made progress while write_paused
        self.pending_file: tuple[int, int, int] | None = None
        self._drained: asyncio.Future[None] | None = None

    # responses ---------------------------------------------------------------------------------
    def send_head(self, status: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        if self.local_ended:
            return
        self.conn.endpoint.send_headers(self.stream_id, response_block(status, headers), end_stream)
        if end_stream:
            self._ended()
        self.conn.schedule_flush()

    def send_whole(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole response: HEADERS and DATA with END_STREAM in one step when nothing waits
        and the windows take the body (the usual small response), else head then body."""
        if self.local_ended:
            return
        conn = self.conn
        if body and not self.out and not conn.write_blocked and conn.endpoint.send_response(self.stream_id, response_block(status, headers), body):
            self._ended()
            conn.schedule_flush()
            return
        self.send_head(status, headers, not body)
        self.write(body, True)

    def send_interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if not self.local_ended:
            self.conn.endpoint.send_headers(self.stream_id, response_block(status, headers), False)
            self.conn.schedule_flush()

    def send_response(self, session: Session, head: bytes, body: bytes) -> None:
        """A response made by ferryman itself (``Session.respond``): its status and headers
        are the session's (``head`` is their HTTP/1.1 form, unused here)."""
        headers = session.response_headers or []
        self.send_head(session.response_status, headers, not body)
        if body:
            self.write(body)
            self.end(None)
        session.response_sent = True
        session.bytes_sent += len(body)

    def send_file(self, session: Session, head: bytes, fd: int, offset: int, count: int) -> None:
        """Start a file response: the head now, the body in :meth:`flush_file`."""
        self.send_head(session.response_status, session.response_headers or [], not count)
        session.response_sent = True
        self.pending_file = (fd, offset, count)

    async def flush_file(self, session: Session) -> None:
        """Send the pending file body in DATA frames, as the client's window allows."""
        fd, offset, count = self.pending_file  # type: ignore[misc]
        self.pending_file = None
        sent = 0
        try:
            while sent < count and not self.closing:
                data = os.pread(fd, min(FILE_CHUNK, count - sent), offset + sent)
                if not data:
                    raise OSError(f"file ended {count - sent} bytes early")
                self.write(data)
                sent += len(data)
                session.bytes_sent += len(data)
                if self.write_paused and not self.closing:
                    self._drained = self.loop.create_future()
                    await self._drained
            if count:
                self.end(None)
        except OSError as exc:
            log.info("%s: client %s: file response cut short: %s", self.service.name, self.conn.peer, exc)
            self.abort()
        finally:
            os.close(fd)

    def write(self, data: bytes | memoryview, end: bool = False) -> None:
        """Response body bytes: as DATA within the client's windows; the rest waits (and the
        exchange is told to pause its upstream). ``end``: these are the last bytes."""
        if self.local_ended or not data:
            return
        conn = self.conn
        if self.out or conn.write_blocked:
            self.out.append(bytes(data))
        else:
            sent = conn.endpoint.send_data(self.stream_id, data, end)
            if sent < 0:
                return
            if sent < len(data):
                self.out.append(bytes(data[sent:]))
            elif end:
                self._ended()
            conn.schedule_flush()
        if end and self.out:
            self.end_after = True
        if self.out and not self.write_paused:
            self.write_paused = True
            self.conn.watch_send(self)
            if self.exchange is not None:
                self.exchange.on_downstream_write_paused()

    def writelines(self, parts: list[bytes]) -> None:
        self.write(b"".join(parts))

    def end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        """The response is complete: END_STREAM (on trailers, if any), once the body is out."""
        if self.local_ended:
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
        self._ended()
        self.conn.schedule_flush()

    def _ended(self) -> None:
        self.local_ended = True
        if self.exchange is None:
            self._close()

    def send_pending(self) -> None:
        """Window opened (or the connection's transport drained): send what waits."""
        waiting = size_of(self.out)
        if not send_queued(self.conn, self.stream_id, self.out):
            if size_of(self.out) < waiting:
                self.stalled_at = self.loop.time()  # progress: the send timeout starts again
            return
        if self.end_after is not None and not self.local_ended:
            trailers, self.end_after = self.end_after, None
            self._end(trailers if isinstance(trailers, list) else None)
        if self.write_paused:
            self.write_paused = False
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)
            if self.exchange is not None:
                self.exchange.on_downstream_write_resumed()

    # request body credit (the exchange's pause/resume reading) ---------------------------------
    def pause_reading_for(self, owner: object) -> None:
        self.credit.pause(owner)

    def resume_reading_for(self, owner: object) -> None:
        due = self.credit.resume(owner)
        if due and not self.closing:
            self.conn.endpoint.ack(self.stream_id, due)
            self.conn.schedule_flush()

    # ending ------------------------------------------------------------------------------------
    def abort(self) -> None:
        """Cut the response (RST_STREAM INTERNAL_ERROR): a truncated body must not look complete."""
        self._reset(ErrorCodes.INTERNAL_ERROR)

    def close(self) -> None:
        if not self.local_ended:
            self._reset(ErrorCodes.CANCEL)

    def write_eof(self) -> None:
        pass

    def _reset(self, code: int) -> None:
        if self.closing:
            return
        self.conn.endpoint.reset(self.stream_id, code)
        self.conn.schedule_flush()
        self._gone()

    def _gone(self) -> None:
        """The stream is over (reset by either side, or the connection closed)."""
        self.closing = True
        self.local_ended = True
        self.out.clear()
        due = self.credit.release()
        if due and not self.conn.closing:
            self.conn.endpoint.ack(self.stream_id, due)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self.exchange is None:
            self._close()

    def exchange_done(self) -> None:
        """The exchange finished: once the response is out the stream is closed (a request
        body the client still sends is refused with RST_STREAM NO_ERROR, RFC 9113 §8.1)."""
        self.exchange = None
        if self.local_ended and not self.out:
            self._close()
        elif not self.local_ended and self.end_after is None:  # it ended without a complete response
            self._reset(ErrorCodes.INTERNAL_ERROR)

    def _close(self) -> None:
        if self.stream_id not in self.conn.streams:
            return
        if not self.remote_ended and not self.closing:
            self.conn.endpoint.reset(self.stream_id, ErrorCodes.NO_ERROR)
            self.conn.schedule_flush()
        due = self.credit.release()
        if due and not self.conn.closing:
            self.conn.endpoint.ack(self.stream_id, due)
        self.conn.stream_closed(self)

    # client events -------------------------------------------------------------------------------
    def on_data(self, data: bytes, flow: int) -> None:
        self.received += len(data)
        exchange = self.exchange
        if exchange is not None and not exchange.request_done:
            self.body_activity = self.loop.time()
            exchange.on_request_body(data)
        due = self.credit.received(flow)
        if due:
            self.conn.endpoint.ack(self.stream_id, due)

    def on_trailers(self, block: list[tuple[bytes, bytes]]) -> None:
        if self.exchange is not None:
            self.exchange.on_request_trailers(list(block))

    def on_end(self) -> None:
        if self.expected is not None and self.received != self.expected:  # ended by trailers, short
            self.conn._malformed(self.stream_id, f"content-length {self.expected} but {self.received} bytes of DATA")
            return
        self.remote_ended = True
        exchange = self.exchange
        if exchange is not None and not exchange.request_done:
            exchange.on_request_end()
        elif exchange is None and self.local_ended:
            self._close()

    def check_send_progress(self, now: float, timeout: float) -> None:
        """Send timeout of this stream: its response waits on a window the client does not
        open (it reads the connection, but grants no credit). The stream is reset; the
        connection goes on."""
        if not self.write_paused or self.closing:
            return
        if now - self.stalled_at >= timeout:
            log.info("%s: client %s: stream %d got no window for %gs: reset", self.service.name, self.conn.peer, self.stream_id, timeout)
            exchange = self.exchange
            self._reset(ErrorCodes.CANCEL)
            if exchange is not None:
                exchange.on_downstream_lost()
        else:
            self.conn.deadline = min(self.conn.deadline, self.stalled_at + timeout)

    def check_body_progress(self, now: float, timeout: float) -> None:
        """Body read timeout of this stream; time spent with credit withheld (the upstream
        is slow to take the body) does not count. Re-arms the connection's deadline."""
        exchange = self.exchange
        if exchange is None or exchange.request_done or self.remote_ended:
            return
        if self.credit.paused:
            self.body_activity = now
        if now - self.body_activity >= timeout:
            exchange.on_request_body_timeout(timeout)
        else:
            self.conn.deadline = min(self.conn.deadline, self.body_activity + timeout)

    def on_reset(self) -> None:
        """The client reset the stream (cancelled): the upstream side is stopped too."""
        self.remote_ended = True
        exchange = self.exchange
        if not self.local_ended:
            self.conn.count_early_reset()
        self._gone()
        if exchange is not None:
            exchange.on_downstream_lost()


class DownstreamH2(asyncio.Protocol):
    """One client's HTTP/2 connection. Created by :class:`~.downstream_h1.DownstreamH1` when
    ALPN chose h2 or the first bytes are the connection preface."""

    def __init__(self, service: HttpProxyService, transport: asyncio.Transport, peer: Any, local: Any, proxy_header: Any = None) -> None:
        self.service = service
        self.loop = service.loop
        self.transport = transport
        self.peer = peer
        self.local = local
        self.proxy_header = proxy_header
        self.endpoint = H2Endpoint(client=False, max_streams=service.h2_max_streams)
        self.streams: dict[int, H2Stream] = {}
        self.closing = False
        self.draining = False  # GOAWAY sent: no new streams, close once the last one ends
        self.write_blocked = False
        self.requests = 0
        self.early_resets = 0  # streams the client reset before their response ended
        self.deadline = INF  # see net/sweep.py: the earliest of the timeouts below
        self._idle_due = INF  # idle (keep-alive) timeout while no stream is open
        self._send_due = INF  # while the client takes none of our bytes: when we give up (send_timeout)
        self._flush_scheduled = False
        self._request_heads = RequestHeads()  # request blocks seen on this connection -> heads

    def start(self, data: bytes) -> None:
        self.service.connections.add(self)
        self._idle()
        self.flush()  # our SETTINGS
        if data:
            self.data_received(data)

    # output ------------------------------------------------------------------------------------
    def flush(self) -> None:
        self._flush_scheduled = False
        data = self.endpoint.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def schedule_flush(self) -> None:
        """Frames queued by exchanges leave together, once per loop pass."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    # asyncio callbacks ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        try:
            events = self.endpoint.receive(data)
        except H2ConnectionError as exc:
            log.info("%s: client %s: HTTP/2 connection error: %s", self.service.name, self.peer, exc)
            self.flush()  # the GOAWAY
            self.close()
            return
        streams = self.streams
        for event in events:
            kind = type(event)
            if kind is RequestReceived:
                self._request(event)
            elif kind is DataReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_data(event.data, event.flow_controlled_length)
                else:  # a stream we already closed: the connection window still counts it
                    self.endpoint.ack(event.stream_id, event.flow_controlled_length)
            elif kind is StreamEnded:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_end()
            elif kind is WindowUpdated:
                self._window_opened(event.stream_id)
            elif kind is TrailersReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_trailers(event.headers)
            elif kind is StreamReset:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_reset()
            elif kind is Malformed:  # h2 reset the stream already; a stream of ours ends with it
                self._malformed(event.stream_id, event.reason)
            elif kind is RemoteSettingsChanged:
                self._window_opened(0)
            elif kind is ConnectionTerminated:
                self.draining = True
                if not streams:
                    self.close()
        self.flush()

    def count_early_reset(self) -> None:
        """HTTP/2 "rapid reset" (CVE-2023-44487): a client that opens streams and resets them
        at once makes the proxy start requests nobody waits for, without ever exceeding the
        concurrent stream limit. Clients cancel streams legitimately (gRPC deadlines, a
        browser leaving a page), so the connection ends only when more than
        ``EARLY_RESET_ALLOWANCE`` streams and more than half of all its streams were reset
        before their response ended: GOAWAY ENHANCE_YOUR_CALM, then close."""
        self.early_resets += 1
        if self.early_resets > EARLY_RESET_ALLOWANCE and self.early_resets * 2 > self.requests and not self.closing:
            log.warning("%s: client %s: %d of %d HTTP/2 streams reset before their response (rapid reset): connection closed",
                        self.service.name, self.peer, self.early_resets, self.requests)
            self.endpoint.goaway(ErrorCodes.ENHANCE_YOUR_CALM, reason=b"too many streams reset")
            self.flush()
            self.close()

    def _malformed(self, stream_id: int, reason: str) -> None:
        log.info("%s: client %s: malformed HTTP/2 request on stream %d: %s", self.service.name, self.peer, stream_id, reason)
        self.endpoint.reset(stream_id, ErrorCodes.PROTOCOL_ERROR)
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_reset()

    def _window_opened(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None and stream.out:
                stream.send_pending()
            return
        for stream in list(self.streams.values()):
            if stream.out:
                stream.send_pending()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.deadline = INF
        if self.service.receiver is not None:
            self.service.receiver.release()  # least_conn: this worker has one connection fewer
        self.service.connections.discard(self)
        for stream in list(self.streams.values()):
            stream.on_reset()
        self.streams.clear()

    def pause_writing(self) -> None:
        """The client does not read what we send: stop reading its frames too. Each PING,
        SETTINGS or reset makes us queue an answer, so a client that floods them without
        reading would grow our buffer without bound (CVE-2019-9512, -9515); it gets its
        answers first, then we read on."""
        self.write_blocked = True
        if not self.transport.is_closing():
            self.transport.pause_reading()
        timeout = self.service.send_timeout
        if timeout:  # nginx's send_timeout: a client that stops reading is not kept forever
            self._send_due = self.loop.time() + timeout
            self.deadline = min(self.deadline, self._send_due)

    def resume_writing(self) -> None:
        self.write_blocked = False
        if self._send_due != INF:
            self._send_due = INF
            self.deadline = self.loop.time()  # the next sweep re-arms the other timeouts
        if not self.transport.is_closing():
            self.transport.resume_reading()
        self._window_opened(0)

    # streams -----------------------------------------------------------------------------------
    def _request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        service = self.service
        if self.draining or self.closing:
            self.endpoint.reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        ended = event.stream_ended is not None
        head = self._request_heads(event.headers, ended)
        if head is None:
            self._malformed(stream_id, "content-length without DATA")  # RFC 9113 §8.1.1
            return
        stream = H2Stream(self, stream_id, ended)
        if head.body.kind is BodyKind.LENGTH:
            stream.expected = head.body.length
        self.streams[stream_id] = stream
        if len(self.streams) == 1:
            self.deadline = self._send_due  # not idle any more (other streams keep their body deadlines)
        self.requests += 1
        session = Session(head, self.peer, self.local, stream, tls=service.tls is not None)
        session.max_body = service.parser_limits["max_body"]  # HTTP/1.1 has it checked by its parser
        if service.plan.new_ctx:
            session.ctx = service.app.new_ctx()
        exchange = stream.exchange = H2Exchange(stream, session)  # type: ignore[arg-type]
        service.exchanges.add(exchange)
        if not stream.remote_ended:
            self.watch_body(stream)
        self.loop.create_task(self._run(stream, exchange))

    async def _run(self, stream: H2Stream, exchange: H2Exchange) -> None:
        try:
            await exchange.run()
        finally:
            self.service.exchanges.discard(exchange)
            stream.exchange_done()

    def stream_closed(self, stream: H2Stream) -> None:
        self.streams.pop(stream.stream_id, None)
        if not self.streams:
            if self.draining:
                self.flush()
                self.close()
            else:
                self._idle()

    # shutting down -------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Graceful stop: GOAWAY (streams already open finish), close when the last ends."""
        if self.draining or self.closing:
            return
        self.draining = True
        self.endpoint.drain(self.endpoint.highest_inbound_stream_id)
        self.flush()
        if not self.streams:
            self.close()

    def close(self) -> None:
        self.closing = True
        if not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        self.transport.abort()

    # timeouts (checked by the service's DeadlineSweep) -----------------------------------------
    def _idle(self) -> None:
        timeout = self.service.keepalive_timeout if self.requests else (self.service.header_timeout or self.service.keepalive_timeout)
        self._idle_due = self.loop.time() + timeout if timeout else INF
        self.deadline = min(self._idle_due, self._send_due)

    def on_deadline(self, now: float) -> None:
        """Called at the earliest deadline, and at the next sweep after the client read again:
        each check below acts only on its own timeout."""
        if now >= self._send_due:
            log.info("%s: client %s: took none of our HTTP/2 frames for %gs: connection closed", self.service.name, self.peer, self.service.send_timeout)
            self.abort()
            return
        self.deadline = self._send_due
        if not self.streams:
            if now >= self._idle_due:  # idle too long: say goodbye
                self.shutdown()
            else:
                self.deadline = min(self._idle_due, self._send_due)
            return
        timeout = self.service.body_timeout
        if timeout:  # request bodies that stopped arriving (nginx's client_body_timeout: 408)
            for stream in list(self.streams.values()):
                stream.check_body_progress(now, timeout)
        timeout = self.service.send_timeout
        if timeout:  # responses waiting on windows the client does not open
            for stream in list(self.streams.values()):
                stream.check_send_progress(now, timeout)

    def watch_send(self, stream: H2Stream) -> None:
        """A response now waits (window or transport): check it within ``send_timeout``."""
        timeout = self.service.send_timeout
        if timeout:
            stream.stalled_at = self.loop.time()
            self.deadline = min(self.deadline, stream.stalled_at + timeout)

    def watch_body(self, stream: H2Stream) -> None:
        """A request body is on its way: check it within ``body_timeout``."""
        timeout = self.service.body_timeout
        if timeout:
            stream.body_activity = self.loop.time()
            self.deadline = min(self.deadline, stream.body_activity + timeout)


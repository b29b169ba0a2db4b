"""The HTTP/2 side of ``floor_proxy.py``: the least a Python proxy built on the ``h2``
library spends per HTTP/2 request on this interpreter. A benchmark tool, not a product.

A TLS client that chose ``h2`` by ALPN is served by :class:`H2Client`: one
``h2.connection.H2Connection`` (server side, header validation and normalisation off: the
floor validates nothing beyond what the libraries do by themselves), each request stream
forwarded as HTTP/1.1 over the floor's keep-alive pool (:class:`floor_proxy.Pool`), each
response sent back as HEADERS + DATA. Flow control is honoured both ways: response bytes
beyond the client's window wait for its WINDOW_UPDATE (the upstream stops being read
meanwhile), request body bytes are acknowledged as they go upstream. No hooks, routing,
timeouts, logging or metrics. What h2 queues leaves in one write per batch of client
events, and per loop pass for the responses (ten streams ending together: one write).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error

if TYPE_CHECKING:
    from floor_proxy import Pool

CONFIG = H2Configuration(
    client_side=False, header_encoding=None,
    validate_outbound_headers=False, normalize_outbound_headers=False,
    validate_inbound_headers=False, normalize_inbound_headers=False,
)
# never sent from an HTTP/1.1 response to an HTTP/2 client (RFC 9113 8.2.2), nor upstream
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
BAD_GATEWAY = [(b":status", b"502"), (b"content-length", b"0")]
NOT_IMPLEMENTED = [(b":status", b"501"), (b"content-length", b"0")]
PAUSE_AT = 64 * 1024  # response bytes held for a closed window before the upstream pauses


class Stream:
    """One request stream: its upstream connection and the response bytes the window holds."""

    __slots__ = ("id", "up", "head", "chunked", "pending", "ended")

    def __init__(self, stream_id: int, head: bytes, chunked: bool) -> None:
        self.id = stream_id
        self.up: H2Upstream | None = None
        self.head: list[bytes] | None = [head]  # request bytes until an upstream takes them
        self.chunked = chunked  # the request body goes upstream chunked (no content-length)
        self.pending = bytearray()  # response body beyond the client's window
        self.ended = False  # the response is complete (END_STREAM once pending is sent)


class H2Client(asyncio.Protocol):
    """One HTTP/2 client connection (after ALPN ``h2``)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.conn = H2Connection(config=CONFIG)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.streams: dict[int, Stream] = {}
        self.closed = False
        self.flush_due = False

    def start(self, transport: asyncio.Transport) -> None:
        """Take over ``transport`` from the HTTP/1.1 protocol ALPN replaced."""
        self.transport = transport
        transport.set_protocol(self)
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        """Send what h2 queued: at once after a batch of client events, else once per loop
        pass (the responses of many streams finish in one pass: one TLS write for all)."""
        self.flush_due = False
        data = self.conn.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    def flush_soon(self) -> None:
        if not self.flush_due:
            self.flush_due = True
            self.pool.loop.call_soon(self.flush)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except H2Error:
            self.flush()  # h2 queued the GOAWAY
            self.transport.close()
            return
        for event in events:
            kind = type(event)
            if kind is RequestReceived:
                self.request(event.stream_id, event.headers, event.stream_ended is not None)
            elif kind is DataReceived:
                self.request_body(event.stream_id, event.data, event.flow_controlled_length)
            elif kind is StreamEnded:
                self.request_end(event.stream_id)
            elif kind is WindowUpdated:
                self.window_opened(event.stream_id)
            elif kind is StreamReset:
                self.drop(event.stream_id)
            elif kind is ConnectionTerminated:  # h2 accepts no more frames: drop what is open
                self.flush()
                self.connection_lost(None)
                self.transport.close()
                return
        self.flush()

    # ------------------------------------------------------------------ requests

    def request(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        method = path = b""
        lines, chunked = [], not ended
        for name, value in headers:
            if name[0] == 58:  # b":"
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    lines.append(b"host: %s\r\n" % value)
            elif name not in CONNECTION_SPECIFIC:
                if name == b"content-length":
                    chunked = False
                lines.append(b"%s: %s\r\n" % (name, value))
        if chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        if method in (b"HEAD", b"CONNECT"):  # a pass-through parser cannot frame their answers
            self.conn.send_headers(stream_id, NOT_IMPLEMENTED, end_stream=True)
            return
        stream = self.streams[stream_id] = Stream(
            stream_id, b"%s %s HTTP/1.1\r\n%s\r\n" % (method, path, b"".join(lines)), chunked)
        up = self.pool.take()
        if up is None:
            self.pool.loop.create_task(self.connect(stream))
        else:
            self.attach(stream, up)

    async def connect(self, stream: Stream) -> None:
        try:
            _, up = await self.pool.loop.create_connection(
                lambda: H2Upstream(self.pool), self.pool.host, self.pool.port)
        except OSError:
            self.respond(stream, BAD_GATEWAY)
            self.flush_soon()
            return
        if self.streams.get(stream.id) is not stream:  # reset, or the client left, meanwhile
            self.pool.put(up)
            return
        self.attach(stream, up)

    def attach(self, stream: Stream, up: H2Upstream) -> None:
        stream.up = up
        up.begin(self, stream)
        up.transport.writelines(stream.head)  # type: ignore[arg-type]
        stream.head = None

    def request_body(self, stream_id: int, data: bytes, flow: int) -> None:
        self.conn.acknowledge_received_data(flow, stream_id)
        stream = self.streams.get(stream_id)
        if stream is not None and data:
            self.send_upstream(stream, b"%x\r\n%s\r\n" % (len(data), data) if stream.chunked else data)

    def request_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and stream.chunked:
            self.send_upstream(stream, b"0\r\n\r\n")

    def send_upstream(self, stream: Stream, data: bytes) -> None:
        if stream.head is not None:  # its upstream connection is still being made
            stream.head.append(data)
        elif stream.up is not None:
            stream.up.transport.write(data)

    # ------------------------------------------------------------------ responses

    def respond(self, stream: Stream, headers: list[tuple[bytes, bytes]], end: bool = True) -> None:
        if self.streams.get(stream.id) is not stream:
            return
        self.conn.send_headers(stream.id, headers, end_stream=end)
        if end:
            del self.streams[stream.id]

    def body(self, stream: Stream, data: bytes) -> None:
        stream.pending += data
        self.send_pending(stream)
        if len(stream.pending) > PAUSE_AT and stream.up is not None:
            stream.up.transport.pause_reading()

    def end(self, stream: Stream) -> None:
        stream.ended = True
        self.send_pending(stream)

    def send_pending(self, stream: Stream) -> None:
        """As much of the pending body as the windows allow; END_STREAM after the last byte."""
        conn, sid = self.conn, stream.id
        pending = stream.pending
        while pending:
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, len(pending))
            if room <= 0:
                return
            last = stream.ended and room == len(pending)
            conn.send_data(sid, bytes(pending[:room]), end_stream=last)
            del pending[:room]
            if last:
                del self.streams[sid]
                return
        if stream.ended:
            conn.end_stream(sid)
            del self.streams[sid]
        elif stream.up is not None:
            stream.up.transport.resume_reading()

    def window_opened(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                self.send_pending(stream)
            return
        for stream in list(self.streams.values()):  # the connection's window
            if stream.pending:
                self.send_pending(stream)

    def upstream_failed(self, stream: Stream, sent_head: bool) -> None:
        if self.streams.get(stream.id) is not stream:
            return
        if sent_head:
            del self.streams[stream.id]
            self.conn.reset_stream(stream.id, ErrorCodes.INTERNAL_ERROR)
        else:
            self.respond(stream, BAD_GATEWAY)
        self.flush_soon()

    def drop(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None and stream.up is not None:  # mid-response: not reusable
            stream.up.client = None
            stream.up.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for stream_id in list(self.streams):
            self.drop(stream_id)


class H2Upstream(asyncio.Protocol):
    """One HTTP/1.1 connection to the origin, serving one stream's request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: H2Client | None = None
        self.stream: Stream | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.sent_head = False
        self.closed = False
        self.done = False
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def begin(self, client: H2Client, stream: Stream) -> None:
        self.client, self.stream = client, stream
        self.headers, self.sent_head, self.done = [], False, False

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:  # nothing asked: the origin is out of step
            self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.fail()
            return
        if self.done:
            stream = self.stream
            self.client = self.stream = None
            stream.up = None  # type: ignore[union-attr]  # (its body may still wait for window: not ours now)
            if self.keep_alive:
                self.transport.resume_reading()  # the last bytes may have paused it (a full window)
                self.pool.put(self)  # type: ignore[arg-type]
            else:
                self.transport.close()
            client.end(stream)  # type: ignore[arg-type]
        client.flush_soon()

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in CONNECTION_SPECIFIC:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # an interim response: the final one follows
            self.headers = []
            return
        self.sent_head = True
        self.client.respond(self.stream, [(b":status", b"%d" % status), *self.headers], end=False)  # type: ignore[union-attr,arg-type]

    def on_body(self, body: bytes) -> None:
        self.client.body(self.stream, body)  # type: ignore[union-attr,arg-type]

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() >= 200:
            self.done = True
            self.keep_alive = self.parser.should_keep_alive()

    def fail(self) -> None:
        client, stream = self.client, self.stream
        self.client = self.stream = None
        self.closed = True
        self.transport.close()
        if client is not None:
            client.upstream_failed(stream, self.sent_head)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.client is not None:  # mid-response (or read-until-close: ends it)
            if self.parser.get_status_code() >= 200 and self.sent_head and not self.done and exc is None:
                client, stream = self.client, self.stream
                self.client = self.stream = None
                stream.up = None  # type: ignore[union-attr]
                client.end(stream)  # type: ignore[arg-type]
                client.flush_soon()
            else:
                self.fail()

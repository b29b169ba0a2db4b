"""A small HTTP/2 origin for tests, on the ``h2`` library (h2c by prior knowledge, or h2
over TLS with ALPN), and a raw HTTP/2 client for the proxy's downstream side.

Origin routes: ``/echo`` answers with the request's pseudo-headers, headers, body and
trailers as JSON (in the body), ``/bytes/N`` sends N bytes, ``/trailers`` sends a body and
trailers (``x-sum``, ``grpc-status``), ``/hold`` never answers (cancellation tests); with
``max_streams`` it advertises that SETTINGS_MAX_CONCURRENT_STREAMS. ``goaway_after``: send
GOAWAY (last stream id = the n-th stream) once that many requests arrived.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame


class _OriginProtocol(asyncio.Protocol):
    def __init__(self, origin: H2Origin) -> None:
        self.origin = origin
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, dict[str, Any]] = {}
        self.pending: dict[int, bytes] = {}  # response bytes waiting for window
        self.ends: dict[int, list | None] = {}
        self.open = 0  # streams whose response has not ended
        self.goaway_last = 2**31  # streams above it are not processed (after our GOAWAY)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.origin.connections += 1
        self.origin.protocols.append(self)
        if self.origin.max_streams is not None:
            self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.origin.max_streams,
            })
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.origin.errors.append(str(exc))
            self.flush()
            self.transport.close()  # type: ignore[union-attr]
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.requests[event.stream_id] = {"headers": [(k.decode(), v.decode()) for k, v in event.headers], "body": b"", "trailers": []}
                self.open += 1
                self.origin.max_open = max(self.origin.max_open, self.open)
                self.origin.seen.append(dict(self.requests[event.stream_id]["headers"]))
                if self.origin.goaway_after and len(self.origin.seen) == self.origin.goaway_after:
                    self.goaway(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                request = self.requests.get(event.stream_id)
                if request is not None:
                    request["body"] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                self.requests[event.stream_id]["trailers"] = [(k.decode(), v.decode()) for k, v in event.headers]
            elif isinstance(event, h2.events.StreamEnded):
                self.respond(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.origin.resets.append((event.stream_id, event.error_code))
                self.pending.pop(event.stream_id, None)
                if self.requests.pop(event.stream_id, None) is not None:
                    self.open -= 1
            elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                for stream_id in list(self.pending):
                    self.send_pending(stream_id)
        self.flush()

    def goaway(self, last_stream_id: int) -> None:
        """A graceful GOAWAY that keeps the streams up to ``last_stream_id`` going (h2's
        close_connection would stop them too)."""
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        self.flush()
        self.transport.write(frame.serialize())  # type: ignore[union-attr]
        self.goaway_last = last_stream_id

    def respond(self, stream_id: int) -> None:
        request = self.requests.get(stream_id)
        if request is None or stream_id > self.goaway_last:
            return
        headers = dict(request["headers"])
        path = headers.get(":path", "").partition("?")[0]
        if path == "/hold":
            return
        if path == "/echo":
            body = json.dumps({"headers": request["headers"], "body": request["body"].decode("latin-1"), "trailers": request["trailers"]}).encode()
            self.send(stream_id, 200, [("content-type", "application/json"), ("content-length", str(len(body)))], body, None)
        elif path.startswith("/bytes/"):
            n = int(path[7:])
            self.send(stream_id, 200, [("content-length", str(n))], b"x" * n, None)
        elif path == "/trailers":
            self.send(stream_id, 200, [("content-type", "text/plain")], b"with trailers", [("x-sum", "42"), ("grpc-status", "0")])
        else:
            self.send(stream_id, 404, [("content-length", "0")], b"", None)

    def send(self, stream_id: int, status: int, headers: list[tuple[str, str]], body: bytes, trailers: list | None) -> None:
        block = [(b":status", str(status).encode())] + [(k.encode(), v.encode()) for k, v in headers] + [(b"x-origin", self.origin.name.encode())]
        self.conn.send_headers(stream_id, block, end_stream=not body and not trailers)
        if not body and not trailers and self.requests.pop(stream_id, None) is not None:
            self.open -= 1
        if body or trailers:
            self.pending[stream_id] = body
            self.ends[stream_id] = trailers
            self.send_pending(stream_id)

    def send_pending(self, stream_id: int) -> None:
        data = self.pending.get(stream_id)
        if data is None:
            return
        try:
            while data:
                window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
                if window <= 0:
                    break
                self.conn.send_data(stream_id, data[:window])
                data = data[window:]
        except h2.exceptions.StreamClosedError:
            self.pending.pop(stream_id, None)
            return
        if data:
            self.pending[stream_id] = data
            return
        del self.pending[stream_id]
        if self.requests.pop(stream_id, None) is not None:
            self.open -= 1
        trailers = self.ends.pop(stream_id, None)
        if trailers:
            self.conn.send_headers(stream_id, [(k.encode(), v.encode()) for k, v in trailers], end_stream=True)
        else:
            self.conn.end_stream(stream_id)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.origin.protocols.remove(self)


class H2Origin:
    """An HTTP/2 origin on 127.0.0.1 (``ssl``: a server context; ALPN h2 is set on it)."""

    def __init__(self, name: str = "h2o", *, max_streams: int | None = None, goaway_after: int = 0) -> None:
        self.name = name
        self.max_streams = max_streams
        self.goaway_after = goaway_after
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.connections = 0
        self.protocols: list[_OriginProtocol] = []
        self.seen: list[dict[str, str]] = []  # request headers (pseudo-headers too), in order
        self.resets: list[tuple[int, int]] = []
        self.errors: list[str] = []
        self.max_open = 0  # the most streams one connection had open at once

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> H2Origin:
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2"])
        self.server = await asyncio.get_running_loop().create_server(lambda: _OriginProtocol(self), "127.0.0.1", 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for protocol in list(self.protocols):
            protocol.transport.abort()  # type: ignore[union-attr]
        await self.server.wait_closed()


class _GoawayTolerant(h2.connection.H2Connection):
    """h2 stops a connection at a GOAWAY; a real client (nghttp2, browsers) lets the streams
    up to its last stream id finish, and so does this one."""

    def _receive_goaway_frame(self, frame):  # type: ignore[no-untyped-def]
        event = h2.events.ConnectionTerminated()
        event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class H2Client:
    """A raw HTTP/2 client (the ``h2`` library) over one connection, for downstream tests:
    it sends whatever header blocks and frames a test scripts, and collects events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, validate: bool = False) -> None:
        self.reader, self.writer = reader, writer
        config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=validate,
                                           normalize_outbound_headers=validate, validate_inbound_headers=True)
        self.conn = _GoawayTolerant(config)
        self.conn.initiate_connection()
        self.events: list[Any] = []

    @classmethod
    async def open(cls, port: int, *, ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None) -> H2Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_context, server_hostname=server_hostname)
        client = cls(reader, writer)
        client.flush()
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    def request(self, headers: list[tuple[bytes, bytes]], body: bytes = b"", *, end: bool = True, trailers: list | None = None) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers, end_stream=end and not body and not trailers)
        if body:
            self.conn.send_data(stream_id, body, end_stream=end and not trailers)
        if trailers:
            self.conn.send_headers(stream_id, trailers, end_stream=True)
        self.flush()
        return stream_id

    async def send_body(self, stream_id: int, body: bytes, *, end: bool = True, trailers: list | None = None) -> None:
        """Send ``body`` as the windows allow (reading the peer's frames while they are shut)."""
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0:
                if not await self.pump():
                    raise EOFError("the connection closed while sending a body")
                continue
            self.conn.send_data(stream_id, view[:window])
            view = view[window:]
            self.flush()
        if trailers:
            self.conn.send_headers(stream_id, trailers, end_stream=True)
        elif end:
            self.conn.end_stream(stream_id)
        self.flush()

    def get(self, path: str, authority: str = "example.test", extra: list | None = None) -> int:
        return self.request([(b":method", b"GET"), (b":scheme", b"http"), (b":path", path.encode()), (b":authority", authority.encode())] + (extra or []))

    async def pump(self) -> bool:
        """Read once and process; False on EOF."""
        data = await self.reader.read(65536)
        if not data:
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.events.append(("protocol-error", str(exc)))
            return False
        for event in events:
            self.events.append(event)
            if isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.flush()
        return True

    async def response(self, stream_id: int) -> dict[str, Any]:
        """Read until ``stream_id`` ends or is reset: {status, headers, body, trailers, reset}."""
        result: dict[str, Any] = {"status": None, "headers": {}, "body": b"", "trailers": {}, "reset": None}
        seen = 0
        while True:
            for event in self.events[seen:]:
                if getattr(event, "stream_id", None) != stream_id:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(event.headers)
                    result["status"] = int(headers.pop(b":status"))
                    result["headers"] = headers
                elif isinstance(event, h2.events.DataReceived):
                    result["body"] += event.data
                elif isinstance(event, h2.events.TrailersReceived):
                    result["trailers"] = dict(event.headers)
                elif isinstance(event, h2.events.StreamReset):
                    result["reset"] = event.error_code
                    return result
                elif isinstance(event, h2.events.StreamEnded):
                    return result
            seen = len(self.events)
            if not await self.pump():
                result["reset"] = "eof"
                return result

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


__all__ = ["H2Client", "H2Origin", "ErrorCodes"]

"""A small built-in HTTP/1.1 origin, so an example config serves something real at once.

Routes: ``/`` (a short page naming the origin), ``/echo`` (the request head and body back),
``/bytes/N`` (N bytes, up to 64 MiB), ``/healthz``. Keep-alive and pipelining work; bodies
are read with Content-Length or chunked framing. Not a production web server.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
import time

import httptools

log = logging.getLogger(__name__)

MAX_BYTES = 64 * 1024 * 1024
_CHUNK = b"x" * 65536


class _OriginProtocol(asyncio.Protocol):
    def __init__(self, name: str, owner: DemoOrigin | None = None) -> None:
        self.name = name
        self.owner = owner
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.owner is not None:
            self.owner.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owner is not None:
            self.owner.lost(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reply(400, b"upgrade not supported\n", close=True)
        except httptools.HttpParserError:
            self._reply(400, b"bad request\n", close=True)

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        path = httptools.parse_url(self.url).path.decode("latin-1")
        keep = self.parser.should_keep_alive()
        method = self.parser.get_method()
        if path == "/healthz":
            self._reply(200, b"ok\n", close=not keep)
        elif path == "/echo":
            head = b"%s %s HTTP/%s\n" % (method, self.url, self.parser.get_http_version().encode())
            head += b"".join(b"%s: %s\n" % pair for pair in self.headers)
            self._reply(200, head + b"\n" + b"".join(self.body), close=not keep)
        elif path.startswith("/bytes/") and path[7:].isdigit() and int(path[7:]) <= MAX_BYTES:
            self._send_bytes(int(path[7:]), close=not keep)
        elif path == "/":
            page = f"Hello from the ferryman demo origin {self.name!r} ({time.strftime('%H:%M:%S')}).\n"
            self._reply(200, page.encode(), close=not keep, content_type=b"text/plain; charset=utf-8")
        else:
            self._reply(404, b"not found\n", close=not keep)

    def _head(self, status: int, length: int, close: bool, content_type: bytes) -> bytes:
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}.get(status, b"OK")
        return (
            b"HTTP/1.1 %d %s\r\nServer: ferryman-demo\r\nDate: %s\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\nX-Origin: %s\r\n%s\r\n"
            % (status, reason, email.utils.formatdate(usegmt=True).encode(), content_type, length,
               self.name.encode(), b"Connection: close\r\n" if close else b"")
        )

    def _reply(self, status: int, body: bytes, *, close: bool, content_type: bytes = b"text/plain") -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(self._head(status, len(body), close, content_type) + body)
        if close:
            transport.close()

    def _send_bytes(self, n: int, *, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        parts = [self._head(200, n, close, b"application/octet-stream")]
        full, rest = divmod(n, len(_CHUNK))
        parts.extend([_CHUNK] * full)
        parts.append(_CHUNK[:rest])
        transport.writelines(parts)
        if close:
            transport.close()


async def start_origin(host: str, port: int, name: str = "demo") -> asyncio.Server:
    """Start the demo origin on the running loop; returns the asyncio server."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _OriginProtocol(name), host, port, reuse_address=True)


class DemoOrigin:
    """The demo origin as a background service: its socket is bound up front (so a port
    clash is reported before serving starts) and served once the loop runs.

    With several workers only one serves the origin, but every worker's proxy may hold
    connections to it: on stop it closes the listener, then keeps answering on open
    connections until they close or ``grace_period`` ends, so other workers can drain.
    """

    def __init__(self, sock: socket.socket, name: str = "demo", grace_period: float = 5.0) -> None:
        self.sock = sock
        self.name = name
        self.grace_period = grace_period
        self.server: asyncio.Server | None = None
        self.connections: set[_OriginProtocol] = set()
        self._idle = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _OriginProtocol(self.name, self), sock=self.sock)
        log.info("demo origin listening on %s", self.sock.getsockname())

    async def stop(self) -> None:
        if self._task is not None:
            await self._task
        if self.server is None:
            return
        self.server.close()
        if self.connections:
            log.info("demo origin: waiting up to %gs for %d open connection(s)", self.grace_period, len(self.connections))
            self._idle.clear()
            try:
                async with asyncio.timeout(self.grace_period):
                    await self._idle.wait()
            except TimeoutError:
                pass
        for protocol in list(self.connections):
            if protocol.transport is not None:
                protocol.transport.close()
        await self.server.wait_closed()

    def lost(self, protocol: _OriginProtocol) -> None:
        """A connection closed; wake :meth:`stop` once none is left."""
        self.connections.discard(protocol)
        if not self.connections:
            self._idle.set()

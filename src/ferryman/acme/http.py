"""A small HTTPS/1.1 client for talking to an ACME server: one keep-alive connection at a
time, TLS verified against the system store or a given CA file, responses read with
ferryman's own sans-IO parser (:mod:`ferryman.protocol.h1`). Not a hot path: a handful of
requests per issuance, each bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..protocol.h1.events import Data, EndOfMessage, H1Error, ResponseHead
from ..protocol.h1.parser import ResponseParser
from ..protocol.h1.serializer import request_head

__all__ = ["HttpsClient", "Response", "TransportError"]

MAX_BODY = 1 << 20  # ACME documents and certificate chains are a few KiB
USER_AGENT = b"ferryman-acme/1"


class TransportError(Exception):
    """The server could not be reached or answered something that is not HTTP."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        raw = name.lower().encode()
        for key, value in self.headers:
            if key == raw:
                return value.decode("latin-1")
        return None


class _Connection:
    __slots__ = ("origin", "parser", "reader", "writer")

    def __init__(self, origin: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.origin, self.reader, self.writer = origin, reader, writer
        self.parser = ResponseParser()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(2.0):
                await self.writer.wait_closed()


class HttpsClient:
    """``await client.request("POST", url, body, headers)`` → :class:`Response`."""

    def __init__(self, *, ca_file: str | None = None, timeout: float = 30.0) -> None:
        self.context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
        self.context.set_alpn_protocols(["http/1.1"])
        self.timeout = timeout
        self._conn: _Connection | None = None

    async def request(self, method: str, url: str, body: bytes | None = None, headers: list[tuple[str, str]] | None = None) -> Response:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise TransportError(f"{url!r} is not an https URL")
        origin = (parts.hostname, parts.port or 443)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        fields = [(b"host", host.encode("idna")), (b"user-agent", USER_AGENT), (b"accept-encoding", b"identity")]
        fields += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers or ()]
        if body is not None:
            fields.append((b"content-length", b"%d" % len(body)))
        wire = request_head(method.encode("ascii"), target.encode("ascii"), fields) + (body or b"")
        try:
            async with asyncio.timeout(self.timeout):
                reused = self._conn is not None and self._conn.origin == origin and not self._conn.reader.at_eof()
                try:
                    return await self._exchange(origin, method, wire)
                except (ConnectionError, asyncio.IncompleteReadError, _ClosedEarly):
                    if not reused:
                        raise
                    # a kept-alive connection the server had closed: once more on a new one
                    return await self._exchange(origin, method, wire)
        except TimeoutError as exc:
            self._discard()
            raise TransportError(f"{method} {url}: no complete answer within {self.timeout:g}s") from exc
        except TransportError as exc:
            self._discard()
            raise TransportError(f"{method} {url}: {exc}") from exc
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, H1Error) as exc:
            self._discard()
            raise TransportError(f"{method} {url}: {exc or type(exc).__name__}") from exc

    async def _exchange(self, origin: tuple[str, int], method: str, wire: bytes) -> Response:
        conn = self._conn
        if conn is None or conn.origin != origin or conn.reader.at_eof():
            await self._drop()
            reader, writer = await asyncio.open_connection(origin[0], origin[1], ssl=self.context, server_hostname=origin[0])
            conn = self._conn = _Connection(origin, reader, writer)
        try:
            conn.writer.write(wire)
            await conn.writer.drain()
            response, keep_alive = await self._read(conn, method.encode("ascii"))
        except BaseException:
            self._discard()
            raise
        if not keep_alive:
            await self._drop()
        return response

    async def _read(self, conn: _Connection, method: bytes) -> tuple[Response, bool]:
        parser = conn.parser
        parser.expect(method)
        head: ResponseHead | None = None
        body = bytearray()
        while True:
            data = await conn.reader.read(65536)
            events = parser.feed(data) if data else parser.feed_eof()
            for event in events:
                if isinstance(event, ResponseHead):
                    if not event.interim:  # a 1xx head: the final one follows
                        head = event
                elif isinstance(event, Data):
                    body += event.data
                    if len(body) > MAX_BODY:
                        raise TransportError(f"response body over {MAX_BODY} bytes")
                elif isinstance(event, EndOfMessage) and head is not None:
                    return Response(head.status, head.headers, bytes(body)), head.keep_alive and data != b""
            if not data:
                raise _ClosedEarly("the server closed the connection before answering")

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def _discard(self) -> None:
        """After an error: close without waiting (the transport goes at once)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.writer.close()

    async def close(self) -> None:
        await self._drop()


class _ClosedEarly(ConnectionError):
    pass

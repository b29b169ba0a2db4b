"""WebSocket peers for the proxy tests: a real ``websockets`` origin whose request path picks
its behaviour, a client factory with test-friendly defaults, and frame-size arithmetic.

The origin's paths:

* ``/echo`` — every message goes back as it came (text stays text, bytes stay bytes).
* ``/fragments`` — a fragmented message goes back fragment by fragment; the payload size
  of each frame it received (bytes, UTF-8 for text) is recorded in ``origin.fragments``.
* ``/push/N`` — echoes like ``/echo`` while sending ``N`` messages ``push i`` of its own.
* ``/ping`` — pings the client with the payload of the first message, then sends
  ``pong <payload>`` once the pong came back.
* ``/close/CODE`` — after the first message, closes with ``CODE`` and reason ``bye CODE``.
* ``/reset`` — after the first message, resets the TCP connection (no close frame).
* ``/idle`` — answers one message after the client asks (``/echo`` semantics) and
  otherwise stays silent (for idle-timeout tests).
* ``/refuse`` — the upgrade is refused with ``403``; ``/plain`` answers an ordinary ``200``.

Whatever way a connection ends, the close code and reason the origin saw are appended to
``origin.closes`` as ``(path, code, reason)``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from http import HTTPStatus
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

LOCAL = "127.0.0.1"
MAX_SIZE = 32 * 1024 * 1024  # above the largest message the tests send (16 MiB)
_LINGER_RESET = struct.pack("ii", 1, 0)


def frame_size(payload: int, *, masked: bool) -> int:
    """Bytes on the wire of one frame carrying ``payload`` bytes (RFC 6455 section 5.2)."""
    header = 2 if payload < 126 else 4 if payload < 65536 else 10
    return header + (4 if masked else 0) + payload


def close_frame_size(reason: str = "", *, masked: bool) -> int:
    """Bytes on the wire of a close frame with a code and ``reason``."""
    return frame_size(2 + len(reason.encode()), masked=masked)


class WsOrigin:
    """A ``websockets`` server on loopback (plain or TLS); see the module docstring."""

    def __init__(self) -> None:
        self.server: Server | None = None
        self.port = 0
        self.closes: list[tuple[str, int | None, str | None]] = []
        self.fragments: list[list[int]] = []
        self.requests: list[Request] = []
        self.extensions: list[list[str]] = []  # negotiated extension names, per connection
        self.connections = 0
        self.conns: set[ServerConnection] = set()
        self.errors: list[BaseException] = []

    @classmethod
    async def start(cls, *, tls: ssl.SSLContext | None = None, compression: str | None = None) -> WsOrigin:
        self = cls()
        self.server = await serve(
            self._handle, LOCAL, 0, ssl=tls, compression=compression, process_request=self._process_request,
            max_size=MAX_SIZE, ping_interval=None, close_timeout=5, server_header=None,
        )
        self.port = self.server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    @property
    def address(self) -> str:
        return f"{LOCAL}:{self.port}"

    async def aclose(self) -> None:
        assert self.server is not None
        self.server.close()
        async with asyncio.timeout(10):
            await self.server.wait_closed()
        if self.errors:
            raise self.errors[0]

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.requests.append(request)
        if request.path == "/refuse":
            return conn.respond(HTTPStatus.FORBIDDEN, "refused\n")
        if request.path == "/plain":
            return Response(200, "OK", Headers({"Content-Type": "text/plain", "Content-Length": "6"}), b"plain\n")
        return None

    async def _handle(self, conn: ServerConnection) -> None:
        path = conn.request.path  # type: ignore[union-attr]
        self.connections += 1
        self.conns.add(conn)
        self.extensions.append([ext.name for ext in conn.protocol.extensions])
        try:
            if path == "/fragments":
                await self._fragments(conn)
            elif path.startswith("/push/"):
                await asyncio.gather(self._push(conn, int(path.rpartition("/")[2])), self._echo(conn))
            elif path == "/ping":
                payload = await conn.recv(decode=False)
                await asyncio.wait_for(await conn.ping(payload), 10)
                await conn.send(b"pong " + payload)
                await self._echo(conn)
            elif path.startswith("/close/"):
                await conn.recv()
                code = int(path.rpartition("/")[2])
                await conn.close(code, f"bye {code}")
            elif path == "/reset":
                await conn.recv()
                _reset(conn)
                return
            else:
                await self._echo(conn)
        except ConnectionClosed:
            pass
        except BaseException as exc:  # an origin failure fails the test (reported by aclose)
            self.errors.append(exc)
            raise
        finally:
            self.conns.discard(conn)
            if path != "/reset":
                await conn.wait_closed()
            self.closes.append((path, conn.close_code, conn.close_reason))

    @staticmethod
    async def _echo(conn: ServerConnection) -> None:
        while True:
            await conn.send(await conn.recv(decode=None))

    async def _fragments(self, conn: ServerConnection) -> None:
        while True:
            parts = [part async for part in conn.recv_streaming(decode=None)]
            self.fragments.append([len(part.encode() if isinstance(part, str) else part) for part in parts])  # wire bytes
            await conn.send(parts)

    @staticmethod
    async def _push(conn: ServerConnection, count: int) -> None:
        for i in range(count):
            await conn.send(f"push {i}")


def _reset(conn: ServerConnection) -> None:
    """End the TCP connection with a RST: no close frame, no FIN."""
    sock = conn.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    conn.transport.abort()


def client(uri: str, *, tls: ssl.SSLContext | None = None, server_hostname: str | None = None, **options: Any) -> Any:
    """``websockets.connect`` for tests: no proxy from the environment, no keepalive pings,
    no compression unless asked, messages up to :data:`MAX_SIZE`."""
    settings: dict[str, Any] = {
        "proxy": None, "ping_interval": None, "compression": None, "max_size": MAX_SIZE, "open_timeout": 10, "close_timeout": 5,
    }
    settings.update(options)
    if tls is not None:
        settings["ssl"] = tls
        settings["server_hostname"] = server_hostname
    return connect(uri, **settings)


__all__ = ["ClientConnection", "WsOrigin", "client", "close_frame_size", "frame_size"]

"""Shared pieces of the HTTP proxy tests: an app, a proxy on port 0, origins and a raw client."""

from __future__ import annotations

import asyncio

from ferryman.demo.origin import start_origin
from ferryman.errors import ProxyError
from ferryman.http.hooks import ProxyHttp
from ferryman.http.service import HttpProxyService
from ferryman.net.addr import parse_address
from ferryman.net.connect import Peer
from ferryman.net.listener import bind_socket


class App(ProxyHttp):
    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.errors: list[ProxyError | None] = []

    async def upstream_peer(self, session):
        return self.peer

    async def logging(self, session, error):
        self.errors.append(error)


async def start_proxy(app: ProxyHttp, **options) -> HttpProxyService:
    sock = bind_socket(parse_address("127.0.0.1:0"))
    service = HttpProxyService("test", sock, app, **options)
    await service.start()
    return service


async def stop(*things) -> None:
    for thing in things:
        if isinstance(thing, HttpProxyService):
            thing.stop_accepting()
            await thing.drain(1.0)
        else:
            thing.close()
            await thing.wait_closed()


async def origin() -> tuple[asyncio.Server, Peer]:
    server = await start_origin("127.0.0.1", 0, "o1")
    port = server.sockets[0].getsockname()[1]
    return server, Peer(parse_address(f"127.0.0.1:{port}"), connect_timeout=2.0)


class Client:
    """A raw HTTP/1.1 client over one socket, reading responses with their framing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, service: HttpProxyService) -> "Client":
        host, port = service.sock.getsockname()[:2]
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            body = await self.reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding") == b"chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n\r\n") if False else await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            body = b"".join(parts)
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            body = await self.reader.read()
        return status, headers, body

    async def closed(self) -> bool:
        return await self.reader.read() == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def get(path: str, extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: example.test\r\n".encode() + extra + b"\r\n"

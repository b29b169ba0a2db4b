"""End-to-end HTTP/1.1 proxy tests: real client sockets, the proxy, real origins on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest
from support.http_proxy import App, Client, get, origin, start_proxy, stop

from ferryman.net.addr import parse_address
from ferryman.net.connect import Peer


async def test_get_through_the_proxy_with_forwarded_headers() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer))
    client = await Client.open(proxy)
    try:
        client.send(get("/echo"))
        status, headers, body = await client.response()
        assert status == 200
        assert headers[b"x-origin"] == b"o1"
        assert b"x-forwarded-for: 127.0.0.1" in body
        assert b"x-forwarded-proto: http" in body
        assert b"x-forwarded-host: example.test" in body
    finally:
        await client.close()
        await stop(proxy, server)


async def test_keep_alive_reuses_the_upstream_connection() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer))
    client = await Client.open(proxy)
    try:
        for _ in range(5):
            client.send(get("/"))
            status, _, body = await client.response()
            assert status == 200 and body.startswith(b"Hello")
        assert proxy.pool.misses == 1 and proxy.pool.hits == 4
    finally:
        await client.close()
        await stop(proxy, server)


async def test_pipelined_requests_are_answered_in_order() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer))
    client = await Client.open(proxy)
    try:
        client.send(get("/bytes/10") + get("/bytes/20") + get("/bytes/30"))
        sizes = [len((await client.response())[2]) for _ in range(3)]
        assert sizes == [10, 20, 30]
    finally:
        await client.close()
        await stop(proxy, server)


@pytest.mark.parametrize("size", [0, 1, 70_000, 3 * 1024 * 1024])
async def test_request_body_with_content_length_reaches_the_origin(size: int) -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer))
    client = await Client.open(proxy)
    body = os.urandom(size)
    try:
        client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size + body)
        status, _, echoed = await client.response()
        assert status == 200
        assert echoed.endswith(body) and b"content-length: %d" % size in echoed.lower()
    finally:
        await client.close()
        await stop(proxy, server)


async def test_body_filters_get_bytes_even_for_large_pieces() -> None:
    """The codec passes large body pieces on as memoryview slices; a body hook gets bytes (it
    may call bytes methods such as ``replace``), both ways, and its output goes through."""
    seen: list[tuple[str, type]] = []

    class Filters(App):
        def request_body_filter(self, session, chunk, end):
            seen.append(("request", type(chunk)))
            return chunk.replace(b"a", b"b")

        def response_body_filter(self, session, chunk, end):
            seen.append(("response", type(chunk)))
            return chunk.replace(b"b", b"c")

    server, peer = await origin()
    proxy = await start_proxy(Filters(peer))
    client = await Client.open(proxy)
    body = b"a" * 300_000
    try:
        client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        status, _, echoed = await client.response()
        assert status == 200 and echoed.endswith(b"c" * len(body))  # a → b upstream, b → c back
        assert {side for side, _ in seen} == {"request", "response"}
        assert {kind for _, kind in seen} == {bytes}, seen
    finally:
        await client.close()
        await stop(proxy, server)


async def test_chunked_request_body_is_forwarded_chunked() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer))
    client = await Client.open(proxy)
    try:
        client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        status, _, echoed = await client.response()
        assert status == 200 and echoed.endswith(b"hello world")
        assert b"transfer-encoding: chunked" in echoed.lower()
    finally:
        await client.close()
        await stop(proxy, server)


async def test_large_response_streams_intact() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer))
    client = await Client.open(proxy)
    try:
        client.send(get("/bytes/5000000"))
        status, headers, body = await client.response()
        assert status == 200 and len(body) == 5_000_000 and headers[b"content-length"] == b"5000000"
    finally:
        await client.close()
        await stop(proxy, server)


async def test_refused_upstream_answers_502_naming_the_peer_and_keeps_serving() -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    app = App(Peer(parse_address(f"127.0.0.1:{port}"), connect_timeout=1.0))
    app.max_tries = 1
    proxy = await start_proxy(app)
    try:
        for _ in range(2):
            client = await Client.open(proxy)
            client.send(get("/"))
            status, _, body = await client.response()
            assert status == 502 and f"127.0.0.1:{port}".encode() in body
            await client.close()
        assert all(e is not None and e.kind.value == "connect_refused" for e in app.errors)
    finally:
        dead.close()
        await stop(proxy)


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    ],
)
async def test_malformed_requests_get_their_status_and_the_connection_closes(raw: bytes, status: int) -> None:
    server, peer = await origin()
    app = App(peer)
    proxy = await start_proxy(app)
    client = await Client.open(proxy)
    try:
        client.send(raw)
        got, headers, _ = await client.response()
        assert got == status
        assert headers.get(b"connection") == b"close"
        assert await client.closed()
        assert app.errors == []  # never proxied
    finally:
        await client.close()
        await stop(proxy, server)


async def test_request_filter_can_answer_without_proxying() -> None:
    class Gate(App):
        async def request_filter(self, session):
            if session.header(b"authorization") != b"Bearer ok":
                session.respond(401, b"no\n", [(b"www-authenticate", b"Bearer")])
                return True
            return False

    server, peer = await origin()
    proxy = await start_proxy(Gate(peer))
    client = await Client.open(proxy)
    try:
        client.send(get("/"))
        status, headers, body = await client.response()
        assert (status, body, headers[b"www-authenticate"]) == (401, b"no\n", b"Bearer")
        client.send(get("/", b"Authorization: Bearer ok\r\n"))
        status, _, body = await client.response()
        assert status == 200 and body.startswith(b"Hello")
    finally:
        await client.close()
        await stop(proxy, server)


async def test_hooks_run_in_lifecycle_order() -> None:
    calls: list[str] = []

    class Recorder(App):
        def new_ctx(self):
            calls.append("new_ctx")

        async def early_request_filter(self, session):
            calls.append("early_request_filter")

        async def request_filter(self, session):
            calls.append("request_filter")
            return False

        async def proxy_upstream_filter(self, session):
            calls.append("proxy_upstream_filter")
            return True

        async def upstream_peer(self, session):
            calls.append("upstream_peer")
            return self.peer

        async def connected_to_upstream(self, session, peer, reused):
            calls.append("connected_to_upstream")

        async def upstream_request_filter(self, session, headers):
            calls.append("upstream_request_filter")
            headers.append((b"x-added", b"yes"))

        def upstream_response_filter(self, session, headers):
            calls.append("upstream_response_filter")

        async def response_filter(self, session, headers):
            calls.append("response_filter")
            headers.append((b"x-resp", b"1"))

        def response_body_filter(self, session, chunk, end):
            if end:
                calls.append("response_body_filter:end")
            return chunk.upper()

        async def logging(self, session, error):
            calls.append("logging")

    server, peer = await origin()
    proxy = await start_proxy(Recorder(peer))
    client = await Client.open(proxy)
    try:
        client.send(get("/echo"))
        status, headers, body = await client.response()
        assert status == 200 and headers[b"x-resp"] == b"1"
        assert b"X-ADDED: YES" in body  # request header added upstream, body upper-cased
        assert headers.get(b"transfer-encoding") == b"chunked"  # a body filter drops Content-Length
        await asyncio.sleep(0)
        assert calls == [
            "new_ctx", "early_request_filter", "request_filter", "proxy_upstream_filter", "upstream_peer",
            "connected_to_upstream", "upstream_request_filter", "upstream_response_filter", "response_filter",
            "response_body_filter:end", "logging",
        ]
    finally:
        await client.close()
        await stop(proxy, server)


async def test_upstream_that_never_answers_gets_504() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    silent.setblocking(False)
    port = silent.getsockname()[1]
    app = App(Peer(parse_address(f"127.0.0.1:{port}"), connect_timeout=1.0))
    proxy = await start_proxy(app, upstream_read_timeout=0.3)
    client = await Client.open(proxy)
    try:
        client.send(get("/"))
        status, _, body = await client.response()
        assert status == 504 and b"sent nothing" in body
    finally:
        await client.close()
        silent.close()
        await stop(proxy)


async def test_slow_request_head_is_cut_off_with_408() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer), header_timeout=0.3)
    client = await Client.open(proxy)
    try:
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\n")  # never finished
        status, _, _ = await client.response()
        assert status == 408
        assert await client.closed()
    finally:
        await client.close()
        await stop(proxy, server)


async def test_upstream_garbage_is_a_502_and_does_not_poison_the_client_connection() -> None:
    async def garbage(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello")
        await writer.drain()
        writer.close()

    bad = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = bad.sockets[0].getsockname()[1]
    app = App(Peer(parse_address(f"127.0.0.1:{port}"), connect_timeout=1.0))
    app.max_tries = 1
    proxy = await start_proxy(app)
    client = await Client.open(proxy)
    try:
        client.send(get("/"))
        status, _, _ = await client.response()
        assert status == 502
    finally:
        await client.close()
        await stop(proxy, bad)


async def test_large_download_to_a_client_that_does_not_read_stays_bounded() -> None:
    """Backpressure: the proxy stops reading the origin while the client is not reading."""
    server, peer = await origin()
    proxy = await start_proxy(App(peer))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect(proxy.sock.getsockname())
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, get("/bytes/60000000"))
        await asyncio.sleep(0.5)
        buffered = sum(
            c.transport.get_write_buffer_size() for c in proxy.connections if c.transport is not None
        )
        assert buffered < 8 * 1024 * 1024
        got = 0
        while got < 60_000_000:
            data = await loop.sock_recv(sock, 1 << 20)
            assert data
            got += len(data) if got else len(data) - data.index(b"\r\n\r\n") - 4
        assert got == 60_000_000
    finally:
        sock.close()
        await stop(proxy, server)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_body_over_the_limit_gets_413_before_reaching_the_origin() -> None:
    server, peer = await origin()
    app = App(peer)
    proxy = await start_proxy(app, max_body=10)
    client = await Client.open(proxy)
    try:
        client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world")
        status, _, _ = await client.response()
        assert status == 413 and app.errors == []
    finally:
        await client.close()
        await stop(proxy, server)


async def test_upgrade_becomes_a_two_way_tunnel_after_101() -> None:
    async def upgrading(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"upgrade: echo" in head.lower() and b"connection: upgrade" in head.lower()
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nwelcome;")
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
        writer.write(b";bye")
        writer.close()

    server = await asyncio.start_server(upgrading, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = await start_proxy(App(Peer(parse_address(f"127.0.0.1:{port}"), connect_timeout=1.0)))
    client = await Client.open(proxy)
    try:
        client.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly ")
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101") and b"upgrade: echo" in head.lower()
        client.send(b"data")
        client.writer.write_eof()
        rest = await client.reader.read()
        assert rest == b"welcome;EARLY DATA;bye"  # bytes sent before the 101 arrived are kept
    finally:
        await client.close()
        await stop(proxy, server)

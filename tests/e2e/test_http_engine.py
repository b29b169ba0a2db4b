"""End-to-end tests of the HTTP engine's body hooks, timeouts, Forwarded, CONNECT, tunnels
on the splice pump and file responses: real sockets, the proxy, real origins on loopback."""

from __future__ import annotations

import asyncio
import os
import tempfile

from ferryman.net.addr import parse_address
from ferryman.net.connect import Peer
from support.http_proxy import App, Client, get, origin, start_proxy, stop


class BodyHooks(App):
    """Uppercases the request body, appends to the response trailers."""

    def request_body_filter(self, session, chunk, end):
        return chunk.upper() + (b"!" if end else b"")

    def response_trailer_filter(self, session, trailers):
        trailers.append((b"x-checked", b"yes"))


async def test_request_body_filter_rewrites_the_body_and_reframes_it_chunked() -> None:
    server, peer = await origin()
    proxy = await start_proxy(BodyHooks(peer))
    client = await Client.open(proxy)
    try:
        client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world")
        status, _, body = await client.response()
        assert status == 200
        assert b"transfer-encoding: chunked" in body.lower() and b"content-length" not in body.lower()
        assert body.endswith(b"HELLO WORLD!")
        # chunked in, chunked out, the filter still sees every chunk and the end
        client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        status, _, body = await client.response()
        assert status == 200 and body.endswith(b"ABCDE!")
    finally:
        await client.close()
        await stop(proxy, server)


async def test_response_trailer_filter_edits_trailers() -> None:
    async def trailing(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-sum: 1\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(trailing, "127.0.0.1", 0)
    peer = Peer(parse_address(f"127.0.0.1:{server.sockets[0].getsockname()[1]}"), connect_timeout=1.0)
    proxy = await start_proxy(BodyHooks(peer))
    client = await Client.open(proxy)
    try:
        client.send(get("/"))
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        rest = await client.reader.readuntil(b"\r\n\r\n")
        assert rest == b"2\r\nok\r\n0\r\nx-sum: 1\r\nx-checked: yes\r\n\r\n"
    finally:
        await client.close()
        await stop(proxy, server)


class Broken(App):
    def request_body_filter(self, session, chunk, end):
        raise RuntimeError("boom")


async def test_a_failing_body_hook_answers_500_and_the_proxy_keeps_serving() -> None:
    server, peer = await origin()
    proxy = await start_proxy(Broken(peer))
    client = await Client.open(proxy)
    other = await Client.open(proxy)
    try:
        client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        status, _, _ = await client.response()
        assert status == 500
        other.send(get("/"))
        status, _, _ = await other.response()
        assert status == 200
    finally:
        await client.close()
        await other.close()
        await stop(proxy, server)


async def test_a_stalled_request_body_gets_408() -> None:
    server, peer = await origin()
    app = App(peer)
    proxy = await start_proxy(app, body_timeout=0.3)
    client = await Client.open(proxy)
    try:
        client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly part")
        status, headers, body = await client.response()
        assert status == 408 and headers.get(b"connection") == b"close"
        assert await client.closed()
        assert "no request body" in str(app.errors[-1])
    finally:
        await client.close()
        await stop(proxy, server)


async def test_a_slow_but_steady_request_body_is_not_cut() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer), body_timeout=0.5)
    client = await Client.open(proxy)
    try:
        client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\n")
        for piece in (b"ab", b"cd", b"ef", b"gh"):
            await asyncio.sleep(0.2)  # the slowness under test: each gap is below the timeout
            client.send(piece)
        status, _, body = await client.response()
        assert status == 200 and body.endswith(b"abcdefgh")
    finally:
        await client.close()
        await stop(proxy, server)


async def test_forwarded_header_styles() -> None:
    server, peer = await origin()
    for style, present, absent in (
        ("forwarded", [b'forwarded: for=127.0.0.1;proto=http;host=example.test'], [b"x-forwarded-for"]),
        ("both", [b"forwarded: for=127.0.0.1", b"x-forwarded-for: 127.0.0.1"], []),
        (False, [], [b"forwarded", b"x-forwarded-for"]),
    ):
        proxy = await start_proxy(App(peer), forwarded_headers=style)
        client = await Client.open(proxy)
        try:
            client.send(get("/echo"))
            status, _, body = await client.response()
            assert status == 200
            for text in present:
                assert text in body.lower(), (style, text)
            for text in absent:
                assert text not in body.lower(), (style, text)
        finally:
            await client.close()
            await stop(proxy)
    # an earlier hop's Forwarded element is kept, ours appended
    proxy = await start_proxy(App(peer), forwarded_headers="forwarded")
    client = await Client.open(proxy)
    try:
        client.send(get("/echo", b"Forwarded: for=192.0.2.1\r\n"))
        _, _, body = await client.response()
        assert b"forwarded: for=192.0.2.1, for=127.0.0.1;proto=http;host=example.test" in body.lower()
    finally:
        await client.close()
        await stop(proxy, server)


class ForwardProxy(App):
    """CONNECT to the requested authority, except port 25."""

    async def request_filter(self, session):
        if session.request.method == b"CONNECT" and session.request.target.endswith(b":25"):
            session.respond_error(403, "port 25 is not allowed")
            return True
        return False

    async def upstream_peer(self, session):
        if session.request.method == b"CONNECT":
            return Peer(parse_address(session.target_str), connect_timeout=1.0)
        return self.peer


async def echo_server() -> asyncio.Server:
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def test_connect_is_refused_unless_enabled() -> None:
    server, peer = await origin()
    proxy = await start_proxy(ForwardProxy(peer))
    client = await Client.open(proxy)
    try:
        client.send(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
        status, _, body = await client.response()
        assert status == 405 and b"CONNECT is not enabled" in body
        assert await client.closed()
    finally:
        await client.close()
        await stop(proxy, server)


async def test_connect_tunnels_to_the_target_on_the_splice_pump() -> None:
    server, peer = await origin()
    target = await echo_server()
    port = target.sockets[0].getsockname()[1]
    app = ForwardProxy(peer)
    proxy = await start_proxy(app, allow_connect=True)
    client = await Client.open(proxy)
    try:
        client.send(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\nearly;".encode())
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head == b"HTTP/1.1 200 Connection Established\r\n\r\n"
        assert await client.reader.readexactly(6) == b"early;"
        payload = os.urandom(3 * 1024 * 1024)  # large enough to switch the pump to splice
        client.send(payload)
        echoed = await client.reader.readexactly(len(payload))
        assert echoed == payload
        assert any(conn.detached for conn in proxy.connections)  # the pump owns the sockets
        client.writer.write_eof()
        assert await client.reader.read() == b""
        for _ in range(100):
            if app.errors:
                break
            await asyncio.sleep(0.01)
        assert app.errors == [None]
    finally:
        await client.close()
        await stop(proxy, server, target)


async def test_connect_refused_by_a_hook_and_dead_targets_get_error_statuses() -> None:
    server, peer = await origin()
    proxy = await start_proxy(ForwardProxy(peer), allow_connect=True)
    dead = await echo_server()
    dead_port = dead.sockets[0].getsockname()[1]
    dead.close()
    await dead.wait_closed()
    try:
        client = await Client.open(proxy)
        client.send(b"CONNECT 127.0.0.1:25 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = await client.response()
        assert status == 403
        await client.close()
        client = await Client.open(proxy)
        client.send(f"CONNECT 127.0.0.1:{dead_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, _, body = await client.response()
        assert status == 502 and b"127.0.0.1" in body
        await client.close()
    finally:
        await stop(proxy, server)


async def test_upgrade_tunnel_moves_to_the_splice_pump_and_drain_closes_it() -> None:
    async def upgrading(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(upgrading, "127.0.0.1", 0)
    peer = Peer(parse_address(f"127.0.0.1:{server.sockets[0].getsockname()[1]}"), connect_timeout=1.0)
    proxy = await start_proxy(App(peer))
    client = await Client.open(proxy)
    try:
        client.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        for size in (1, 1000, 200_000):
            payload = os.urandom(size)
            client.send(payload)
            assert await client.reader.readexactly(size) == payload
        assert any(conn.detached for conn in proxy.connections)
        proxy.stop_accepting()
        await proxy.drain(0.2)  # the tunnel outlives the grace period: closed
        assert await client.reader.read() == b""
        for _ in range(100):
            if not proxy.connections:
                break
            await asyncio.sleep(0.01)
        assert not proxy.connections  # the detached connection is released with its exchange
    finally:
        await client.close()
        await stop(proxy, server)


class FileApp(App):
    def __init__(self, peer, path):
        super().__init__(peer)
        self.path = path

    async def request_filter(self, session):
        if session.request.target == b"/file":
            fd = os.open(self.path, os.O_RDONLY)
            session.respond_file(200, [(b"content-type", b"application/octet-stream")], fd, 10, os.path.getsize(self.path) - 10)
            return True
        return False


async def test_respond_file_sends_a_file_range_by_sendfile_then_keeps_serving() -> None:
    server, peer = await origin()
    data = os.urandom(2 * 1024 * 1024 + 7)
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        proxy = await start_proxy(FileApp(peer, f.name))
        client = await Client.open(proxy)
        try:
            client.send(get("/file") + get("/file").replace(b"GET", b"HEAD") + get("/"))
            status, headers, body = await client.response()
            assert status == 200 and body == data[10:]
            head = await client.reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"content-length: %d" % (len(data) - 10) in head
            status, _, body = await client.response()
            assert status == 200 and b"o1" in body
        finally:
            await client.close()
            await stop(proxy, server)


async def test_connections_opened_with_a_proxy_header_are_not_shared_between_clients() -> None:
    """Each pooled connection that began with a PROXY header names one client; a second
    client must get its own connection (and header), never the first client's."""
    headers: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers.append((await reader.readuntil(b"\r\n")).strip())
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = await start_proxy(App(Peer(parse_address(f"127.0.0.1:{port}"), connect_timeout=2.0, proxy_protocol=1)))
    clients = []
    try:
        for _ in range(2):
            client = await Client.open(proxy)
            clients.append(client)
            for _ in range(2):  # the second request of a client reuses its connection
                client.send(get("/"))
                assert (await client.response())[0] == 200
            await client.close()
        ports = [c.writer.get_extra_info("sockname")[1] for c in clients]
        assert len(headers) == 2, headers
        assert [int(h.split()[4]) for h in headers] == ports  # PROXY TCP4 src dst sport dport
    finally:
        await stop(proxy, server)


async def _echo_forwarded_origin() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                xff = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"x-forwarded-for:")]
                body = xff[0] if xff else b"-"
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_an_http_listener_accepting_proxy_headers_uses_their_client_address() -> None:
    from ferryman.protocol import proxy_protocol

    server, port = await _echo_forwarded_origin()
    proxy = await start_proxy(App(Peer(parse_address(f"127.0.0.1:{port}"), connect_timeout=2.0)), accept_proxy=True)
    try:
        v1 = await Client.open(proxy)
        v1.send(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n" + get("/") + get("/"))
        assert (await v1.response())[2] == b"203.0.113.7"
        assert (await v1.response())[2] == b"203.0.113.7"  # the whole connection speaks for that client
        await v1.close()
        v2 = await Client.open(proxy)
        header = proxy_protocol.build(2, ("2001:db8::1", 4444), ("::1", 80))
        for byte in header:  # a header split across reads
            v2.send(bytes([byte]))
            await v2.writer.drain()
        v2.send(get("/"))
        assert (await v2.response())[2] == b"2001:db8::1"
        await v2.close()
        bad = await Client.open(proxy)
        bad.send(get("/"))  # no header: the connection is closed without an answer
        assert await bad.closed()
        await bad.close()
    finally:
        await stop(proxy, server)


async def test_clients_outside_the_trusted_networks_need_no_proxy_header() -> None:
    import ipaddress

    server, port = await _echo_forwarded_origin()
    app = App(Peer(parse_address(f"127.0.0.1:{port}"), connect_timeout=2.0))
    proxy = await start_proxy(app, accept_proxy=True, proxy_trusted=[ipaddress.ip_network("10.0.0.0/8")], proxy_header_timeout=0.3)
    slow = await start_proxy(app, accept_proxy=True, proxy_header_timeout=0.2)
    try:
        client = await Client.open(proxy)
        client.send(get("/"))
        assert (await client.response())[2] == b"127.0.0.1"
        await client.close()
        idle = await Client.open(slow)
        idle.send(b"PROXY TCP4 1.2.3.4")  # never completed: closed after the timeout
        assert await asyncio.wait_for(idle.closed(), 5)
        await idle.close()
    finally:
        await stop(proxy, slow, server)


async def test_hooks_may_be_plain_functions() -> None:
    """``def`` hooks are called inline (no coroutine), ``async def`` ones awaited; both mix."""
    server, peer = await origin()
    logged: list[int] = []

    class Sync(App):
        def request_filter(self, session):
            if session.request.target == b"/blocked":
                session.respond(403, b"no")
                return True
            return False

        def upstream_peer(self, session):
            return self.peer

        def response_filter(self, session, headers):
            headers.append((b"x-sync", b"1"))

        async def upstream_request_filter(self, session, headers):
            await asyncio.sleep(0)  # a hook that really waits
            headers.append((b"x-async", b"1"))

        def logging(self, session, error):
            logged.append(session.response_status)

    proxy = await start_proxy(Sync(peer))
    try:
        client = await Client.open(proxy)
        client.send(get("/echo") + get("/blocked"))
        status, headers, body = await client.response()
        assert status == 200 and headers[b"x-sync"] == b"1" and b"x-async: 1" in body
        assert (await client.response())[0] == 403
        await client.close()
        assert logged == [200, 403]
    finally:
        await stop(proxy, server)


async def _counting_origin() -> tuple[asyncio.Server, int, list[int]]:
    """An origin answering 200 on keep-alive connections; counts connections accepted."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], accepted


async def test_pooled_connections_follow_their_peers_pool_settings() -> None:
    server, port, accepted = await _counting_origin()
    address = parse_address(f"127.0.0.1:{port}")
    no_pool = await start_proxy(App(Peer(address, connect_timeout=2.0, pool_size=0)))
    short = await start_proxy(App(Peer(address, connect_timeout=2.0, pool_idle_timeout=0.2)))
    try:
        for proxy in (no_pool, no_pool):  # pool_size 0: every request opens a connection
            client = await Client.open(proxy)
            client.send(get("/"))
            assert (await client.response())[0] == 200
            await client.close()
        assert len(accepted) == 2
        client = await Client.open(short)
        for _ in range(2):  # reused while fresh
            client.send(get("/"))
            assert (await client.response())[0] == 200
        assert len(accepted) == 3
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while short.pool.idle_count and loop.time() < deadline:  # closed after 0.2 s idle
            await asyncio.sleep(0.02)
        assert short.pool.idle_count == 0
        client.send(get("/"))
        assert (await client.response())[0] == 200
        assert len(accepted) == 4
        await client.close()
    finally:
        await stop(no_pool, short, server)


async def test_a_connection_not_yet_heard_from_is_served_while_draining() -> None:
    """Its first request may have been sent before the stop: closing it at once would fail it."""
    server, peer = await origin()
    proxy = await start_proxy(App(peer))
    client = await Client.open(proxy)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not proxy.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        proxy.stop_accepting()
        drain = asyncio.ensure_future(proxy.drain(5.0))
        await asyncio.sleep(0.05)
        client.send(get("/echo"))
        status, headers, _ = await client.response()
        assert status == 200 and headers.get(b"connection") == b"close"
        assert await client.closed()
        await drain
    finally:
        await client.close()
        await stop(server)


async def test_a_hook_may_read_the_whole_body_and_answer_or_proxy_it() -> None:
    """Session.read_body(): bounded (413 beyond the limit), works past the 64 KiB buffer, and a
    body read by a hook still goes upstream when the request is proxied."""
    server, peer = await origin()

    class Api(App):
        async def request_filter(self, session):
            if session.request.target == b"/echo":
                return False  # proxied: the origin echoes what it got
            body = await session.read_body(limit=200_000)
            if session.request.target == b"/peek":
                session.upstream_target = b"/echo"  # the demo origin echoes /echo
                return False
            session.respond(200, b"%d bytes, %s" % (len(body), body[:5]))
            return True

    proxy = await start_proxy(Api(peer))
    try:
        client = await Client.open(proxy)
        big = b"x" * 150_000  # over the 64 KiB buffer
        client.send(b"POST /api HTTP/1.1\r\nHost: t\r\ncontent-length: %d\r\n\r\n" % len(big) + big)
        assert (await client.response())[2] == b"150000 bytes, xxxxx"
        client.send(b"POST /api HTTP/1.1\r\nHost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        assert (await client.response())[2] == b"5 bytes, hello"
        client.send(b"POST /peek HTTP/1.1\r\nHost: t\r\ncontent-length: 11\r\n\r\nhello world")
        status, _, body = await client.response()
        assert status == 200 and body.endswith(b"hello world")  # read by the hook, then proxied
        too_big = b"y" * 300_000
        client.send(b"POST /api HTTP/1.1\r\nHost: t\r\ncontent-length: %d\r\n\r\n" % len(too_big) + too_big)
        status, _, body = await client.response()
        assert status == 413 and b"over the limit of 200000 bytes" in body
        await client.close()
    finally:
        await stop(proxy, server)

"""``send_timeout`` (nginx's): a client that stops reading a response is disconnected once it
has taken none of it for that long, so it cannot hold its connection, the response buffered
for it and an upstream connection forever (a "slow read" attack). A client that reads, even
slowly, is not cut."""

from __future__ import annotations

import asyncio
import socket

from support.h2_origin import H2Client
from support.http_proxy import App, origin, start_proxy, stop

BIG = 32 << 20  # far more than the socket buffers and our write buffer hold


async def connect_small(port: int) -> socket.socket:
    """A client socket whose receive buffer fills at once (it never reads)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def wait_for_no_connections(proxy, seconds: float) -> bool:  # noqa: ANN001
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while proxy.connections and loop.time() < deadline:
        await asyncio.sleep(0.05)
    return not proxy.connections


async def test_a_client_that_stops_reading_is_disconnected() -> None:
    server, peer = await origin()
    app = App(peer)
    proxy = await start_proxy(app, send_timeout=0.5)
    sock = await connect_small(proxy.sock.getsockname()[1])
    try:
        await asyncio.get_running_loop().sock_sendall(sock, b"GET /bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % BIG)
        assert await wait_for_no_connections(proxy, 10)
        assert len(app.errors) == 1 and app.errors[0] is not None  # the exchange ended, failed
    finally:
        sock.close()
        await stop(proxy, server)


async def test_without_send_timeout_the_stalled_client_stays() -> None:
    """The control: the same client is still connected three timeouts later without it."""
    server, peer = await origin()
    app = App(peer)
    proxy = await start_proxy(app, send_timeout=None)
    sock = await connect_small(proxy.sock.getsockname()[1])
    try:
        await asyncio.get_running_loop().sock_sendall(sock, b"GET /bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % BIG)
        assert not await wait_for_no_connections(proxy, 1.5)
        assert app.errors == []  # still in flight
    finally:
        sock.close()
        await stop(proxy, server)


async def test_a_slow_reader_is_not_cut() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer), send_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.sock.getsockname()[1], limit=1 << 20)
    try:
        size = 4 << 20
        writer.write(b"GET /bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % size)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        got = 0
        while got < size:  # 256 KiB every 0.1 s: never idle for the timeout
            chunk = await asyncio.wait_for(reader.read(256 << 10), 5)
            assert chunk, "cut off"
            got += len(chunk)
            await asyncio.sleep(0.1)
        assert got == size
    finally:
        writer.close()
        await stop(proxy, server)


async def test_an_http2_client_that_stops_reading_is_disconnected() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer), send_timeout=0.5)
    sock = await connect_small(proxy.sock.getsockname()[1])
    reader, writer = await asyncio.open_connection(sock=sock)
    client = H2Client(reader, writer)
    try:
        client.conn.update_settings({4: 2**31 - 1})  # a huge stream window: the proxy may send
        client.conn.increment_flow_control_window(2**31 - 1 - 65535)  # ... and the connection's
        client.flush()
        client.get(f"/bytes/{BIG}")
        assert await wait_for_no_connections(proxy, 10)
    finally:
        writer.transport.abort()
        await stop(proxy, server)


async def test_an_http2_stream_whose_window_never_opens_is_reset_and_the_connection_goes_on() -> None:
    """The client reads the connection but grants no flow-control credit: the stream (and
    its upstream connection) would wait forever; it is reset after send_timeout."""
    server, peer = await origin()
    app = App(peer)
    proxy = await start_proxy(app, send_timeout=0.5)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        stalled = client.get("/bytes/1000000")  # more than the default 64 KiB window
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not app.errors and loop.time() < deadline:
            await asyncio.sleep(0.05)  # not reading: no WINDOW_UPDATE goes out
        assert len(app.errors) == 1 and app.errors[0] is not None
        response = await client.response(stalled)  # now read: what came, then the reset
        assert response["status"] == 200 and response["reset"] is not None
        fine = await client.response(client.get("/"))
        assert fine["status"] == 200 and fine["reset"] is None
    finally:
        await client.close()
        await stop(proxy, server)

"""HTTP/2 rapid reset (CVE-2023-44487) and streams cancelled before their turn.

A client that opens streams and resets them at once never exceeds the concurrent stream
limit, yet would make the proxy start a request upstream for each. Streams reset before
their exchange ran never reach the upstream; a connection where most streams are reset
early gets GOAWAY(ENHANCE_YOUR_CALM) and is closed; a client that cancels a minority of its
streams (gRPC deadlines, a browser leaving a page) keeps its connection."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated
from support.h2_origin import H2Client
from support.http_proxy import App, origin, start_proxy, stop

from ferryman.http.downstream_h2 import EARLY_RESET_ALLOWANCE

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"example.test")]


class CountingApp(App):
    """Counts the requests that got as far as choosing a peer (work done upstream)."""

    def __init__(self, peer) -> None:  # noqa: ANN001
        super().__init__(peer)
        self.chosen = 0

    async def upstream_peer(self, session):  # noqa: ANN001, ANN201
        self.chosen += 1
        return self.peer


def open_and_reset(client: H2Client, count: int) -> None:
    """HEADERS then RST_STREAM(CANCEL) for ``count`` new streams, in one write."""
    for _ in range(count):
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, GET, end_stream=True)
        client.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
    client.flush()


async def goaway(client: H2Client) -> ConnectionTerminated | None:
    for _ in range(1000):
        for event in client.events:
            if isinstance(event, ConnectionTerminated):
                return event
        if not await client.pump():
            break
    return next((e for e in client.events if isinstance(e, ConnectionTerminated)), None)


async def test_rapid_reset_ends_the_connection_with_enhance_your_calm(caplog: pytest.LogCaptureFixture) -> None:
    server, peer = await origin()
    app = CountingApp(peer)
    proxy = await start_proxy(app)
    port = proxy.sock.getsockname()[1]
    client = await H2Client.open(port)
    try:
        with caplog.at_level(logging.INFO, logger="ferryman"):
            open_and_reset(client, 3 * EARLY_RESET_ALLOWANCE)
            event = await asyncio.wait_for(goaway(client), 10)
        assert event is not None and event.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert not await client.pump()  # and the connection is closed
        assert app.chosen == 0  # streams reset in the batch that opened them never went upstream
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "rapid reset" in warnings[0].getMessage()  # one line, not one per stream
        other = await H2Client.open(port)  # everyone else is served as before
        try:
            assert (await other.response(other.get("/")))["status"] == 200
        finally:
            await other.close()
    finally:
        await client.close()
        await stop(proxy, server)


async def test_a_client_cancelling_a_minority_of_its_streams_keeps_its_connection() -> None:
    server, peer = await origin()
    app = CountingApp(peer)
    proxy = await start_proxy(app)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        cancelled = 0
        for _ in range(3 * EARLY_RESET_ALLOWANCE // 2):
            assert (await client.response(client.get("/")))["status"] == 200
            assert (await client.response(client.get("/")))["status"] == 200
            open_and_reset(client, 1)
            cancelled += 1
        assert cancelled > EARLY_RESET_ALLOWANCE  # over the allowance, but a third of the streams
        response = await client.response(client.get("/"))
        assert response["status"] == 200 and response["reset"] is None
        assert not any(isinstance(e, ConnectionTerminated) for e in client.events)
    finally:
        await client.close()
        await stop(proxy, server)


async def test_a_stream_reset_before_its_turn_is_logged_at_info_and_never_goes_upstream(caplog: pytest.LogCaptureFixture) -> None:
    server, peer = await origin()
    app = CountingApp(peer)
    proxy = await start_proxy(app)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        with caplog.at_level(logging.INFO, logger="ferryman"):
            open_and_reset(client, 5)
            response = await client.response(client.get("/"))
            assert response["status"] == 200
        assert app.chosen == 1  # only the stream that was not reset
        assert len(app.errors) == 6  # the logging hook saw all six
        gone = [r for r in caplog.records if "client closed the connection" in r.getMessage()]
        assert len(gone) == 5 and all(r.levelno == logging.INFO for r in gone)
    finally:
        await client.close()
        await stop(proxy, server)


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
PING = b"\x00\x00\x08\x06\x00\x00\x00\x00\x0012345678"  # 17 bytes
PING_ACK = b"\x00\x00\x08\x06\x01\x00\x00\x00\x0012345678"


async def test_a_ping_flood_from_a_client_that_does_not_read_is_not_buffered() -> None:
    """CVE-2019-9512: each PING makes us queue an ACK. A client that never reads finds its
    sends blocked once our buffer is full (we stop reading it); one that reads gets every ACK."""
    server, peer = await origin()
    proxy = await start_proxy(CountingApp(peer))
    try:
        port = proxy.sock.getsockname()[1]
        assert await flood_without_reading(port, limit=16 << 20) < 16 << 20  # stalled in the sockets
        assert await ping_and_read(port, count=20000) == 20000  # a client that reads loses nothing
    finally:
        await stop(proxy, server)


async def flood_without_reading(port: int, limit: int) -> int:
    """Send PINGs and never read; the bytes sent when a write stayed blocked for 2 s (or
    ``limit`` if none did within 30 s)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # our ACKs fill it at once
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    _, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(PREFACE + EMPTY_SETTINGS)
        burst, sent, deadline = PING * 4000, 0, loop.time() + 30
        while sent < limit and loop.time() < deadline:
            writer.write(burst)
            sent += len(burst)
            try:
                await asyncio.wait_for(writer.drain(), 2.0)
            except TimeoutError:
                return sent
        return limit
    finally:
        writer.transport.abort()


async def ping_and_read(port: int, count: int) -> int:
    """Send ``count`` PINGs while reading: how many ACKs came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(PREFACE + EMPTY_SETTINGS)

        async def acks() -> int:
            seen, data = 0, b""
            while seen < count:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    break
                data += chunk
                seen = data.count(PING_ACK)
            return seen

        counting = asyncio.ensure_future(acks())
        for _ in range(count // 1000):
            writer.write(PING * 1000)
            await writer.drain()
        return await asyncio.wait_for(counting, 30)
    finally:
        writer.close()

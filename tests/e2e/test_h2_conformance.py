"""RFC 9113 conformance of the HTTP/2 downstream, and flow control as backpressure.

Malformed requests (§8.1.1, §8.2, §8.3) are stream errors: RST_STREAM(PROTOCOL_ERROR) on
that stream while the connection keeps serving; frame-level violations are connection
errors (GOAWAY). A client that reads slowly gets a large body through the proxy without
the proxy holding more than its windows and buffers of it."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated
from hyperframe.frame import HeadersFrame
from support.h2_origin import H2Client
from support.http_proxy import App, origin, start_proxy, stop

from ferryman.net.addr import parse_address
from ferryman.net.connect import Peer

BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"example.test")]
POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/echo"), (b":authority", b"example.test")]

MALFORMED = {
    "uppercase name": BASE + [(b"X-Upper", b"1")],
    "connection header": BASE + [(b"connection", b"keep-alive")],
    "transfer-encoding": BASE + [(b"transfer-encoding", b"chunked")],
    "te other than trailers": BASE + [(b"te", b"gzip")],
    "missing :path": [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"example.test")],
    "missing :method": [(b":scheme", b"http"), (b":path", b"/"), (b":authority", b"example.test")],
    "duplicate :method": BASE + [(b":method", b"POST")],
    "pseudo after regular": [(b":method", b"GET"), (b"x-a", b"1"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"e")],
    "unknown pseudo": BASE + [(b":nonsense", b"1")],
    "response pseudo in a request": BASE + [(b":status", b"200")],
    "empty :path": [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b""), (b":authority", b"example.test")],
    "newline in a value": BASE + [(b"x-a", b"1\r\nx-b: 2")],
    "non-numeric content-length": POST + [(b"content-length", b"abc")],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_request_is_a_stream_error_and_the_connection_keeps_serving(case: str) -> None:
    server, peer = await origin()
    app = App(peer)
    proxy = await start_proxy(app)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        bad = client.request(MALFORMED[case])
        response = await client.response(bad)
        assert response["reset"] == ErrorCodes.PROTOCOL_ERROR and response["status"] is None
        good = await client.response(client.get("/"))
        assert good["status"] == 200 and good["reset"] is None
        assert app.errors == [None]  # the malformed one never became a request
    finally:
        await client.close()
        await stop(proxy, server)


@pytest.mark.parametrize("declared, sent", [(10, b"short"), (3, b"too long"), (5, b"")])
async def test_content_length_must_match_the_data(declared: int, sent: bytes) -> None:
    server, peer = await origin()
    app = App(peer)
    proxy = await start_proxy(app)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        bad = client.request(POST + [(b"content-length", b"%d" % declared)], sent)
        assert (await client.response(bad))["reset"] == ErrorCodes.PROTOCOL_ERROR
        # ended by trailers, short of the declared length
        bad = client.request(POST + [(b"content-length", b"9")], b"abc", trailers=[(b"x-t", b"1")])
        assert (await client.response(bad))["reset"] == ErrorCodes.PROTOCOL_ERROR
        ok = client.request(POST + [(b"content-length", b"2")], b"ok")
        response = await client.response(ok)
        assert response["status"] == 200 and response["body"].endswith(b"\n\nok")
    finally:
        await client.close()
        await stop(proxy, server)


async def test_a_frame_level_violation_is_a_connection_error() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer))
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        client.writer.write(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0: a connection error (§6.1)
        while await asyncio.wait_for(client.pump(), 5):
            pass
        goaway = [e for e in client.events if isinstance(e, ConnectionTerminated)]
        assert goaway and goaway[0].error_code == ErrorCodes.PROTOCOL_ERROR
    finally:
        await client.close()
        await stop(proxy, server)


async def test_a_client_stream_with_an_even_id_is_a_connection_error() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer))
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        frame = HeadersFrame(2)
        frame.data = client.conn.encoder.encode(BASE)
        frame.flags.add("END_HEADERS")
        frame.flags.add("END_STREAM")
        client.writer.write(frame.serialize())
        while await asyncio.wait_for(client.pump(), 5):
            pass
        assert [e for e in client.events if isinstance(e, ConnectionTerminated) and e.error_code == ErrorCodes.PROTOCOL_ERROR]
    finally:
        await client.close()
        await stop(proxy, server)


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


BODY = 64 << 20
BLOCK = os.urandom(1 << 16)


async def test_a_slow_http2_reader_holds_back_the_upstream_instead_of_filling_the_proxy() -> None:
    """64 MiB from a fast HTTP/1.1 origin to an HTTP/2 client that reads slowly: the proxy
    keeps at most about one window queued for the client, the origin is held back (its
    socket fills), and the process does not grow by anything like the body."""
    loop = asyncio.get_running_loop()
    sent = [0]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)

    async def serve() -> None:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        try:
            await loop.sock_recv(conn, 65536)
            await loop.sock_sendall(conn, b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % BODY)
            while sent[0] < BODY:
                await loop.sock_sendall(conn, BLOCK)
                sent[0] += len(BLOCK)
        finally:
            conn.close()

    task = loop.create_task(serve())
    app = App(Peer(parse_address(f"127.0.0.1:{listener.getsockname()[1]}"), connect_timeout=2.0))
    proxy = await start_proxy(app)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    before = _rss()
    try:
        stream = client.get("/big")
        exchanges = proxy.exchanges
        # without reading, the client grants 64 KiB: the proxy must stop the origin
        for _ in range(200):
            if exchanges and all(e.upstream is not None and e.downstream.write_paused for e in exchanges):
                break
            await asyncio.sleep(0.01)  # polling for the pause, bounded by the loop count
        [exchange] = list(exchanges)
        assert exchange.downstream.write_paused
        queued = sum(map(len, exchange.downstream.out))
        assert queued <= 512 * 1024
        assert sent[0] < BODY // 4  # the origin is held back by TCP: the proxy stopped reading it
        received = 0
        peak_queue = queued
        while True:  # now read slowly: each read, then a 1 ms pause (the slowness under test)
            data = await client.reader.read(256 * 1024)
            if not data:
                break
            for event in client.conn.receive_data(data):
                if getattr(event, "stream_id", None) == stream and hasattr(event, "flow_controlled_length"):
                    received += len(event.data)
                    client.conn.acknowledge_received_data(event.flow_controlled_length, stream)
                if type(event).__name__ in ("StreamEnded", "StreamReset"):
                    received = -received if type(event).__name__ == "StreamReset" else received
            client.flush()
            if exchange.downstream.out:
                peak_queue = max(peak_queue, sum(map(len, exchange.downstream.out)))
            if received >= BODY or received < 0:
                break
            await asyncio.sleep(0.001)
        assert received == BODY
        assert peak_queue <= 1 << 20
        assert _rss() - before < 32 << 20
    finally:
        await client.close()
        await stop(proxy)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        listener.close()

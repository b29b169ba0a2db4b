"""HTTP/2 request bodies that stop arriving get 408, as over HTTP/1.1 (``body_timeout``,
nginx's client_body_timeout): a client cannot hold a stream (and its upstream connection)
open by never finishing its body. Other streams of the connection go on."""

from __future__ import annotations

import asyncio

from support.h2_origin import H2Client
from support.http_proxy import App, origin, start_proxy, stop

POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/echo"), (b":authority", b"example.test")]


async def test_a_body_that_stops_gets_408_and_the_connection_goes_on() -> None:
    server, peer = await origin()
    app = App(peer)
    proxy = await start_proxy(app, body_timeout=0.5)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        stalled = client.request(POST + [(b"content-length", b"100")], b"only ten b", end=False)
        response = await asyncio.wait_for(client.response(stalled), 10)
        assert response["status"] == 408
        assert app.errors[-1] is not None and "no request body" in str(app.errors[-1])
        fine = await client.response(client.get("/"))
        assert fine["status"] == 200 and fine["reset"] is None
    finally:
        await client.close()
        await stop(proxy, server)


async def test_a_slow_body_that_keeps_coming_is_not_cut() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer), body_timeout=0.5)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        stream = client.request(POST + [(b"content-length", b"12")], b"ab", end=False)
        for piece in (b"cd", b"ef", b"gh", b"ij"):
            await asyncio.sleep(0.3)  # each gap under the timeout, the whole body over it
            await client.send_body(stream, piece, end=False)
        await client.send_body(stream, b"kl")
        response = await asyncio.wait_for(client.response(stream), 10)
        assert response["status"] == 200 and response["body"].endswith(b"\n\nabcdefghijkl")
    finally:
        await client.close()
        await stop(proxy, server)

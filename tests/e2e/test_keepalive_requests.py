"""``keepalive_requests`` (nginx's): an HTTP/1.1 client connection serves at most that many
requests; the last response says ``Connection: close`` and the connection closes after it."""

from __future__ import annotations

import asyncio

from support.http_proxy import App, Client, origin, start_proxy, stop

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


async def test_the_last_allowed_request_closes_the_connection() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer), keepalive_requests=3)
    client = await Client.open(proxy)
    try:
        for _ in range(2):
            client.send(GET)
            status, headers, _ = await client.response()
            assert status == 200 and headers.get(b"connection") != b"close"
        client.send(GET)
        status, headers, _ = await client.response()
        assert status == 200 and headers.get(b"connection") == b"close"
        assert await asyncio.wait_for(client.reader.read(1), 5) == b""  # closed after it
    finally:
        client.writer.close()
        await stop(proxy, server)


async def test_pipelined_requests_beyond_the_limit_are_not_served() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer), keepalive_requests=2)
    client = await Client.open(proxy)
    try:
        client.send(GET * 4)
        assert (await client.response())[0] == 200
        status, headers, _ = await client.response()
        assert status == 200 and headers.get(b"connection") == b"close"
        assert await asyncio.wait_for(client.reader.read(1), 5) == b""
    finally:
        client.writer.close()
        await stop(proxy, server)


async def test_no_limit() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer), keepalive_requests=None)
    client = await Client.open(proxy)
    try:
        client.send(GET * 1500)
        for _ in range(1500):
            status, headers, _ = await client.response()
            assert status == 200 and headers.get(b"connection") != b"close"
    finally:
        client.writer.close()
        await stop(proxy, server)

"""HTTP/2 to upstreams, and every pairing of client and upstream versions (h1→h1 is the
rest of the suite): h1→h2, h2→h1, h2→h2, cleartext (h2c) and over TLS (h2), with Host ⇄
:authority, hop-by-hop fields, ``te: trailers``, chunked ⇄ DATA and trailers both ways;
multiplexed pooled connections within the backend's stream limit; GOAWAY retries."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import pytest
from support.certs import Authority
from support.h2_origin import H2Client, H2Origin
from support.http_proxy import App, Client, get, start_proxy, stop

from ferryman.net.addr import parse_address
from ferryman.net.connect import Peer
from ferryman.net.tls import TlsOptions


def _h2_peer(origin: H2Origin, protocol: str = "h2c", **options) -> Peer:
    return Peer(parse_address(f"127.0.0.1:{origin.port}"), connect_timeout=2.0, protocol=protocol, **options)


def _echo(body: bytes) -> dict:
    data = json.loads(body)
    data["headers"] = dict((k, v) for k, v in data["headers"])
    return data


async def _h2_origin(**options) -> H2Origin:
    return await H2Origin(**options).start()


async def test_h1_client_to_h2c_upstream_translates_the_head_and_streams_both_bodies() -> None:
    origin = await _h2_origin()
    app = App(_h2_peer(origin))
    proxy = await start_proxy(app)
    client = await Client.open(proxy)
    try:
        client.send(b"POST /echo?q=1 HTTP/1.1\r\nHost: site.test\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n"
                    b"Transfer-Encoding: chunked\r\nTE: trailers\r\nCookie: a=1\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-check: 7\r\n\r\n")
        status, headers, body = await client.response()
        assert status == 200 and headers[b"x-origin"] == b"h2o"
        echo = _echo(body)
        sent = echo["headers"]
        assert sent[":method"] == "POST" and sent[":path"] == "/echo?q=1" and sent[":scheme"] == "http" and sent[":authority"] == "site.test"
        assert "host" not in sent and "connection" not in sent and "x-hop" not in sent and "keep-alive" not in sent
        assert "transfer-encoding" not in sent and sent["te"] == "trailers" and sent["cookie"] == "a=1"
        assert echo["body"] == "hello world" and echo["trailers"] == [["x-check", "7"]]
        # a response with trailers goes to the HTTP/1.1 client chunked, trailers at the end
        client.send(get("/trailers"))
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        rest = await client.reader.readuntil(b"0\r\n")
        assert rest.endswith(b"with trailers\r\n0\r\n")
        assert await client.reader.readuntil(b"\r\n\r\n") == b"x-sum: 42\r\ngrpc-status: 0\r\n\r\n"
        # the same connection: keep-alive both ways, one upstream connection
        client.send(get("/bytes/200000"))
        status, _, body = await client.response()
        assert status == 200 and len(body) == 200000
        assert origin.connections == 1 and app.errors == [None, None, None]
    finally:
        await client.close()
        await stop(proxy)
        await origin.close()


async def test_h2_client_to_h2c_upstream_keeps_trailers_both_ways_and_multiplexes() -> None:
    origin = await _h2_origin()
    app = App(_h2_peer(origin))
    proxy = await start_proxy(app)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        stream = client.request(
            [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/echo"), (b":authority", b"grpc.test"), (b"te", b"trailers")],
            b"payload", trailers=[(b"x-request-trailer", b"yes")],
        )
        response = await client.response(stream)
        echo = _echo(response["body"])
        assert echo["headers"][":authority"] == "grpc.test" and echo["headers"]["te"] == "trailers"
        assert echo["body"] == "payload" and echo["trailers"] == [["x-request-trailer", "yes"]]
        response = await client.response(client.get("/trailers"))
        assert response["body"] == b"with trailers" and response["trailers"] == {b"x-sum": b"42", b"grpc-status": b"0"}
        streams = [client.get(f"/bytes/{1000 * n}") for n in range(1, 21)]
        bodies = [len((await client.response(s))["body"]) for s in streams]
        assert bodies == [1000 * n for n in range(1, 21)]
        assert origin.connections == 1  # twenty requests at once, one multiplexed connection
        assert set(app.errors) == {None}
    finally:
        await client.close()
        await stop(proxy)
        await origin.close()


async def test_the_backend_stream_limit_is_respected_by_opening_more_connections() -> None:
    origin = await _h2_origin(max_streams=2)
    proxy = await start_proxy(App(_h2_peer(origin)))
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        await client.response(client.get("/bytes/1"))  # one connection learns the limit (SETTINGS)
        streams = [client.get("/bytes/1000000") for _ in range(6)]
        results = [await client.response(s) for s in streams]
        assert all(r["status"] == 200 and len(r["body"]) == 1000000 for r in results)
        assert origin.max_open == 2 and origin.connections >= 2  # never more than 2 streams on one connection
        assert not origin.errors
    finally:
        await client.close()
        await stop(proxy)
        await origin.close()


async def test_goaway_sends_unprocessed_requests_again_on_a_new_connection() -> None:
    origin = await _h2_origin()
    app = App(_h2_peer(origin))
    proxy = await start_proxy(app)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        await client.response(client.get("/bytes/1"))  # warm: the connection exists
        origin.seen.clear()
        origin.goaway_after = 1
        first, second = client.get("/bytes/10"), client.get("/bytes/20")
        a, b = await client.response(first), await client.response(second)
        assert (a["status"], len(a["body"])) == (200, 10) and (b["status"], len(b["body"])) == (200, 20)
        assert origin.connections == 2  # the stream above GOAWAY's last id went to a new connection
        assert set(app.errors) == {None}
    finally:
        await client.close()
        await stop(proxy)
        await origin.close()


async def test_h2_client_to_h1_upstream_gets_chunked_trailers_as_trailing_headers() -> None:
    async def trailing(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n2\r\nok\r\n0\r\nx-sum: 1\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(trailing, "127.0.0.1", 0)
    proxy = await start_proxy(App(Peer(parse_address(f"127.0.0.1:{server.sockets[0].getsockname()[1]}"), connect_timeout=2.0)))
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        response = await client.response(client.get("/"))
        assert response["status"] == 200 and response["body"] == b"ok" and response["trailers"] == {b"x-sum": b"1"}
        assert b"connection" not in response["headers"] and b"transfer-encoding" not in response["headers"]
    finally:
        await client.close()
        await stop(proxy, server)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    directory: Path = tmp_path_factory.mktemp("h2up")
    ca = Authority(directory)
    return ca, ca.issue("backend.test", dns=("backend.test",), ips=("127.0.0.1",))


async def test_h2_over_tls_upstream_with_alpn_from_h1_and_h2_clients(pki) -> None:
    ca, leaf = pki
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf.cert, leaf.key)
    origin = await H2Origin("tls-origin").start(ctx)
    app = App(_h2_peer(origin, "h2", tls=TlsOptions(ca_file=ca.cert, sni="backend.test")))
    proxy = await start_proxy(app)
    h1 = await Client.open(proxy)
    h2c = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        h1.send(get("/echo"))
        status, headers, body = await h1.response()
        assert status == 200 and headers[b"x-origin"] == b"tls-origin"
        assert _echo(body)["headers"][":scheme"] == "https"
        response = await h2c.response(h2c.get("/trailers"))
        assert response["trailers"][b"grpc-status"] == b"0"
        assert origin.connections == 1 and set(app.errors) == {None}
    finally:
        await h1.close()
        await h2c.close()
        await stop(proxy)
        await origin.close()


async def test_an_h2_upstream_that_does_not_negotiate_h2_is_an_error(pki) -> None:
    ca, leaf = pki
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf.cert, leaf.key)

    async def h1_only(reader, writer):
        writer.close()

    server = await asyncio.start_server(h1_only, "127.0.0.1", 0, ssl=ctx)  # no ALPN at all
    app = App(Peer(parse_address(f"127.0.0.1:{server.sockets[0].getsockname()[1]}"), connect_timeout=2.0, protocol="h2",
                   tls=TlsOptions(ca_file=ca.cert, sni="backend.test")))
    app.max_tries = 1
    proxy = await start_proxy(app)
    client = await Client.open(proxy)
    try:
        client.send(get("/"))
        status, _, body = await client.response()
        assert status == 502 and b"does not speak HTTP/2" in body
    finally:
        await client.close()
        await stop(proxy, server)


def test_peer_protocol_is_checked_and_part_of_the_pool_key() -> None:
    address = parse_address("127.0.0.1:1")
    assert Peer(address).pool_key != Peer(address, protocol="h2c").pool_key != Peer(address, protocol="h2").pool_key
    with pytest.raises(ValueError, match="protocol"):
        Peer(address, protocol="http3")

"""TLS from the TOML config, end to end: an https listener serving certificates by SNI (and
swapping them on reload), TLS to an upstream with verification, routing TLS by name on a tcp
listener without terminating it, and config errors with their paths."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import pytest
from support.certs import Authority

from ferryman.config.load import load_file, load_text
from ferryman.demo.origin import start_origin
from ferryman.errors import ConfigError
from ferryman.gateway.app import Gateway


def client_context(ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    return ctx


async def https_get(port: int, host: str, ca: str, path: str = "/echo") -> tuple[bytes, bytes, str]:
    """(status line, body, served certificate's CN) over a fresh TLS connection with SNI ``host``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(ca), server_hostname=host)
    try:
        cn = dict(item[0] for item in writer.get_extra_info("peercert")["subject"])["commonName"]
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body, cn


async def serve(gw: Gateway):
    server = gw.make_server()
    for service in server.services:
        started = service.start()
        if started is not None:
            await started
    return server


async def stop(gw: Gateway, server) -> None:
    for service in server.services:
        service.stop_accepting()
        await service.drain(1.0)
    gw.close()


async def test_an_https_listener_serves_certificates_by_sni_and_swaps_them_on_reload(tmp_path: Path) -> None:
    ca = Authority(tmp_path)
    site = ca.issue("site.test", dns=("site.test",), file="site")
    wild = ca.issue("wildcard", dns=("*.apps.test",), file="wild")
    origin = await start_origin("127.0.0.1", 0, "o")
    origin_port = origin.sockets[0].getsockname()[1]
    path = tmp_path / "ferryman.toml"
    text = f"""
[listeners.web]
addr = "127.0.0.1:0"
protocol = "http"
upstream = "o"
tls = ["site", "wild"]

[certificates.site]
cert = "{site.cert}"
key = "{site.key}"

[certificates.wild]
cert = "{wild.cert}"
key = "{wild.key}"

[upstreams.o]
backends = ["127.0.0.1:{origin_port}"]
"""
    path.write_text(text)
    gw = Gateway(load_file(path), path)
    gw.bind()
    server = await serve(gw)
    port = server.services[0].sock.getsockname()[1]
    try:
        status, body, cn = await https_get(port, "site.test", ca.cert)
        assert status == b"HTTP/1.1 200 OK" and cn == "site.test"
        assert b"x-forwarded-proto: https" in body.lower()
        assert (await https_get(port, "a.apps.test", ca.cert))[2] == "wildcard"
        renewed = ca.issue("site.test renewed", dns=("site.test",), file="site")  # same files, new certificate
        assert renewed.cert == site.cert
        runtime = server.on_reload[0].__self__
        assert await runtime.reload()
        assert (await https_get(port, "site.test", ca.cert))[2] == "site.test renewed"
    finally:
        await stop(gw, server)
        origin.close()
        await origin.wait_closed()


async def _tls_origin(ctx: ssl.SSLContext, name: bytes) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(name), name))
                if b"connection: close" in head.lower():
                    await writer.drain()
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)


def _server_ctx(issued) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(issued.cert, issued.key)
    return ctx


async def test_tls_to_an_upstream_is_verified_and_pooled(tmp_path: Path) -> None:
    ca = Authority(tmp_path)
    backend = ca.issue("api.internal", dns=("api.internal",), file="api")
    origin = await _tls_origin(_server_ctx(backend), b"tls-origin")
    port = origin.sockets[0].getsockname()[1]

    def config(sni: str) -> Gateway:
        gw = Gateway(load_text(f"""
[listeners.web]
addr = "127.0.0.1:0"
protocol = "http"
upstream = "api"

[upstreams.api]
backends = ["127.0.0.1:{port}"]
tls = {{ ca = "{ca.cert}", sni = "{sni}" }}
"""))
        gw.bind()
        return gw

    from support.http_proxy import Client

    good = config("api.internal")
    server = await serve(good)
    web = server.services[0]
    try:
        client = await Client.open(web)
        for _ in range(3):
            client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = await client.response()
            assert (status, body) == (200, b"tls-origin")
        await client.close()
        assert web.pool.misses == 1 and web.pool.hits == 2  # one TLS connection, reused
    finally:
        await stop(good, server)
    bad = config("other.internal")  # the certificate does not name it: refused
    server = await serve(bad)
    try:
        client = await Client.open(server.services[0])
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await client.response()
        assert status == 502 and b"TLS handshake with" in body
        await client.close()
    finally:
        await stop(bad, server)
        origin.close()
        await origin.wait_closed()


async def test_a_tcp_listener_routes_tls_by_server_name_without_terminating_it(tmp_path: Path) -> None:
    ca = Authority(tmp_path)
    a = await _tls_origin(_server_ctx(ca.issue("a.db.test", dns=("a.db.test",), file="a")), b"a")
    b = await _tls_origin(_server_ctx(ca.issue("b.db.test", dns=("*.db.test",), file="b")), b"b")
    gw = Gateway(load_text(f"""
[listeners.db]
addr = "127.0.0.1:0"
upstream = "b"
sni_upstreams = {{ "a.db.test" = "a", "*.db.test" = "b" }}

[upstreams.a]
backends = ["127.0.0.1:{a.sockets[0].getsockname()[1]}"]

[upstreams.b]
backends = ["127.0.0.1:{b.sockets[0].getsockname()[1]}"]
"""))
    gw.bind()
    server = await serve(gw)
    port = server.services[0].sock.getsockname()[1]
    try:
        for host, expected in (("a.db.test", "a.db.test"), ("x.db.test", "b.db.test")):
            status, body, cn = await https_get(port, host, ca.cert, "/")
            assert (status, cn) == (b"HTTP/1.1 200 OK", expected)  # the origin's own certificate
    finally:
        await stop(gw, server)
        for s in (a, b):
            s.close()
            await s.wait_closed()


def test_tls_config_errors_name_their_paths(tmp_path: Path) -> None:
    ca = Authority(tmp_path)
    other = ca.issue("other", dns=("other.test",), file="other")
    mine = ca.issue("mine", dns=("mine.test",), file="mine")
    with pytest.raises(ConfigError) as info:
        load_text(f"""
[listeners.web]
addr = "127.0.0.1:0"
protocol = "http"
upstream = "u"
tls = ["mixed", "ghost"]
tls_client_verify = "required"

[certificates.mixed]
cert = "{mine.cert}"
key = "{other.key}"

[certificates.gone]
cert = "{tmp_path}/nope.pem"
key = "{tmp_path}/nope.key"

[upstreams.u]
backends = ["127.0.0.1:1"]
tls = {{ key = "{mine.key}" }}
""")
    errors = dict(info.value.errors)
    assert "does not match" in errors["certificates.mixed"]
    assert "nope.pem" in errors["certificates.gone"]
    assert "no certificate named 'ghost'" in errors["listeners.web.tls[1]"]
    assert "client CA" in errors["listeners.web.tls"]
    assert "without a client certificate" in errors["upstreams.u.tls"]


async def test_http_health_checks_speak_tls_to_tls_backends(tmp_path: Path) -> None:
    from ferryman.runtime.upstreams import build_upstreams

    ca = Authority(tmp_path)
    origin = await _tls_origin(_server_ctx(ca.issue("api.internal", dns=("api.internal",), file="api")), b"ok")
    port = origin.sockets[0].getsockname()[1]
    try:
        for sni, healthy in (("api.internal", True), ("wrong.internal", False)):
            config = load_text(f"""
[upstreams.api]
backends = ["127.0.0.1:{port}"]
tls = {{ ca = "{ca.cert}", sni = "{sni}" }}
health_check = {{ kind = "http", path = "/health", rise = 1, fall = 1 }}
""")
            checker = build_upstreams(config)["api"].checker
            await checker.run_once()
            assert checker.backends[0].healthy is healthy
    finally:
        origin.close()
        await origin.wait_closed()


async def test_a_proxy_header_before_tls_gives_the_client_address(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Behind an L4 balancer (HAProxy's `send-proxy`, AWS NLB): the PROXY header comes first,
    in clear, then the TLS handshake. Only the header's bytes are read before TLS."""
    from ferryman.protocol import proxy_protocol

    ca = Authority(tmp_path)
    site = ca.issue("site.test", dns=("site.test",), file="site")
    origin = await start_origin("127.0.0.1", 0, "o")
    path = tmp_path / "ferryman.toml"
    path.write_text(f"""
[listeners.web]
addr = "127.0.0.1:0"
protocol = "http"
upstream = "o"
tls = ["site"]
proxy_protocol = true
proxy_protocol_timeout = "500ms"

[certificates.site]
cert = "{site.cert}"
key = "{site.key}"

[upstreams.o]
backends = ["127.0.0.1:{origin.sockets[0].getsockname()[1]}"]
""")
    gw = Gateway(load_file(path), path)
    gw.bind()
    server = await serve(gw)
    port = server.services[0].sock.getsockname()[1]

    async def get(*pieces: bytes) -> bytes:
        """Send ``pieces`` in clear (one write each), then GET /echo over TLS."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)  # separate segments: the header arrives in pieces
        await writer.start_tls(client_context(ca.cert), server_hostname="site.test")
        writer.write(b"GET /echo HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        return data

    v2 = proxy_protocol.build_v2(("198.51.100.9", 40000), ("127.0.0.1", 443))
    try:
        v1_answer = await get(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\r\n")
        assert v1_answer.startswith(b"HTTP/1.1 200") and b"203.0.113.7" in v1_answer
        v2_answer = await get(v2[:5], v2[5:20], v2[20:])
        assert v2_answer.startswith(b"HTTP/1.1 200") and b"198.51.100.9" in v2_answer
        # no header, or a broken one: the connection is closed with a log line, others go on
        with caplog.at_level("INFO", logger="ferryman.http.service"):
            for bad in (b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(bad)
                try:  # closed with the bytes unread: the kernel may reset instead of a FIN
                    assert await asyncio.wait_for(reader.read(), 5) == b""
                except ConnectionResetError:
                    pass
                writer.close()
                with contextlib.suppress(ConnectionResetError):
                    await writer.wait_closed()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # silent: the timeout closes it
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await writer.wait_closed()
        assert caplog.text.count("PROXY header") >= 3 and "within 0.5s" in caplog.text
        assert b"203.0.113.7" in await get(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\r\n")
        # a graceful stop waits for a connection still in its PROXY header or TLS handshake
        service = server.services[0]
        late = asyncio.create_task(get(b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 443\r\n"))
        for _ in range(100):
            if service.adopting:
                break
            await asyncio.sleep(0.005)
        assert service.adopting and not service.connections  # accepted, not yet a connection
        service.stop_accepting()
        await service.drain(5.0)
        assert not service.adopting and not service.connections  # drain returned once it was served
        answer = await late
        assert answer.startswith(b"HTTP/1.1 200") and b"192.0.2.1" in answer
    finally:
        await stop(gw, server)
        origin.close()
        await origin.wait_closed()

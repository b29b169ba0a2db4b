"""Backends given as DNS names, end to end: the config-driven HTTP gateway pieces (router,
service, upstreams from ``build_upstreams``) proxying to a name, resolved by the system
resolver (``localhost``) or by a DNS server on loopback whose answer moves while requests flow.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from support.http_proxy import Client

from ferryman.config.load import load_text
from ferryman.config.model import Config
from ferryman.demo.origin import start_origin
from ferryman.gateway.http import build_filters, build_http_service, build_router
from ferryman.net.connect import Connector
from ferryman.net.listener import bind_socket
from ferryman.protocol import dns
from ferryman.runtime.upstreams import Upstream, build_upstreams


class NameServer(asyncio.DatagramProtocol):
    """Answers A queries from ``names`` (name → address), TTL 1; NXDOMAIN for the rest."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.decode_message(data)
        question = query.questions[0]
        address = self.names.get(question.name)
        flags = dns.FLAG_QR | dns.FLAG_AA | (dns.NOERROR if address else dns.NXDOMAIN)
        answers = (dns.Record(question.name, dns.TYPE_A, address, 1),) if address and question.qtype == dns.TYPE_A else ()
        assert self.transport is not None
        self.transport.sendto(dns.encode_message(dns.Message(query.id, flags, query.questions, answers)), addr)


@asynccontextmanager
async def serving(config: Config) -> AsyncIterator[tuple[object, dict[str, Upstream]]]:
    """The gateway's HTTP service for listener ``web``, over upstreams built from ``config``;
    resolvers are started here (as the running server starts them) and stopped at the end."""
    upstreams = build_upstreams(config)
    cfg = config.listeners["web"]
    sock = bind_socket(cfg.addr)
    router = build_router(config, cfg, upstreams, build_filters(config))
    service = build_http_service("web", cfg, router, sock, Connector(), upstreams)
    await service.start()
    try:
        yield service, upstreams
    finally:
        service.stop_accepting()
        await service.drain(1.0)
        sock.close()
        for upstream in upstreams.values():
            if upstream.resolver is not None:
                await upstream.resolver.stop()


async def get(service: object, path: str = "/") -> tuple[int, bytes, bytes]:
    """One request on a new connection: (status, x-origin, body)."""
    client = await Client.open(service)  # type: ignore[arg-type]
    try:
        client.send(f"GET {path} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        status, headers, body = await client.response()
        return status, headers.get(b"x-origin", b""), body
    finally:
        await client.close()


async def test_localhost_backend_resolved_by_the_system_resolver_proxies() -> None:
    origin = await start_origin("127.0.0.1", 0, "local")
    port = origin.sockets[0].getsockname()[1]
    config = load_text(f"""
[listeners.web]
addr = "127.0.0.1:0"
protocol = "http"
upstream = "app"

[upstreams.app]
backends = ["localhost:{port}"]
ipv4_only = true
""")
    try:
        async with serving(config) as (service, upstreams):
            resolver = upstreams["app"].resolver
            assert resolver is not None
            status, _, body = await get(service)
            assert status == 503 and b"no healthy backend" in body  # not resolved yet: no backend
            assert await resolver.resolve_now()
            assert [b.key for b in upstreams["app"].balancer.backends] == [f"127.0.0.1:{port}"]
            for _ in range(3):
                assert (await get(service))[:2] == (200, b"local")
    finally:
        origin.close()
        await origin.wait_closed()


async def test_a_name_that_moves_takes_requests_to_the_new_origin_after_its_ttl() -> None:
    loop = asyncio.get_running_loop()
    transport, names = await loop.create_datagram_endpoint(NameServer, local_addr=("127.0.0.1", 0))
    dns_port = transport.get_extra_info("sockname")[1]
    origins: list[asyncio.Server] = []
    try:
        # two origins on one port, at 127.0.0.1 and 127.0.0.2: only the name's address tells them apart
        for _ in range(20):
            first = await start_origin("127.0.0.1", 0, "old")
            port = first.sockets[0].getsockname()[1]
            try:
                second = await start_origin("127.0.0.2", port, "new")
            except OSError as exc:
                first.close()
                await first.wait_closed()
                assert exc.errno == errno.EADDRINUSE, exc
                continue
            origins += [first, second]
            break
        assert origins, "no port free on both 127.0.0.1 and 127.0.0.2"
        names.names["app.test"] = "127.0.0.1"
        config = load_text(f"""
[server]
resolvers = ["127.0.0.1:{dns_port}"]

[listeners.web]
addr = "127.0.0.1:0"
protocol = "http"
upstream = "app"

[upstreams.app]
backends = ["app.test:{port}"]
resolve_interval = "1h"
""")
        async with serving(config) as (service, upstreams):
            resolver = upstreams["app"].resolver
            assert resolver is not None
            resolver.start()
            assert await resolver.resolve_now()
            client = await Client.open(service)  # type: ignore[arg-type]
            try:
                seen: list[bytes] = []
                for _ in range(3):
                    client.send(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                    status, headers, _ = await client.response()
                    seen.append(headers[b"x-origin"])
                assert seen == [b"old"] * 3
                names.names["app.test"] = "127.0.0.2"  # the name moves; its TTL is 1 s
                deadline = loop.time() + 10.0
                while seen[-1] != b"new":  # requests keep flowing on the same client connection
                    assert loop.time() < deadline, f"requests never reached the new origin: {seen[-5:]}"
                    client.send(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                    status, headers, _ = await client.response()
                    assert status == 200
                    seen.append(headers[b"x-origin"])
                    await asyncio.sleep(0.05)
                for _ in range(3):
                    client.send(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                    status, headers, _ = await client.response()
                    assert (status, headers[b"x-origin"]) == (200, b"new")
            finally:
                await client.close()
            assert [b.key for b in upstreams["app"].balancer.backends] == [f"127.0.0.2:{port}"]
    finally:
        transport.close()
        for origin in origins:
            origin.close()
            await origin.wait_closed()


def test_ferryman_run_resolves_a_named_backend_before_it_serves(tmp_path) -> None:
    """The product path: ``ferryman run`` with ``localhost:PORT`` (system resolver); the
    first request already finds the backend (the listener opens after the first resolution)."""
    from support.process import LOCAL, HttpOrigin, free_port, http_get, running

    origin = HttpOrigin()
    port = free_port()
    path = tmp_path / "ferryman.toml"
    path.write_text(f"""
[listeners.web]
addr = "{LOCAL}:{port}"
protocol = "http"
upstream = "app"

[upstreams.app]
backends = ["localhost:{origin.port}"]
ipv4_only = true
""")
    try:
        with running(path) as proc:
            proc.wait_ready()
            assert http_get(port, "/x") == (200, b"origin /x")
            proc.wait_for(r"upstream app: localhost resolved")
            assert proc.stop(10) == 0
    finally:
        origin.close()

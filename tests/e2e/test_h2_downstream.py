"""HTTP/2 clients end to end: h2c by prior knowledge and h2 over TLS (ALPN), to HTTP/1.1
upstreams, with every ProxyHttp hook running as for HTTP/1.1. Clients: the ``h2`` library
as a raw client, curl (``--http2-prior-knowledge``, ``--http2`` over TLS) and nghttp."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from support.certs import Authority
from support.h2_origin import H2Client
from support.http_proxy import App, Client, get, origin, start_proxy, stop

from ferryman.net.tls import CertificateSpec, CertStore
from ferryman.protocol.h2 import PREFACE

pytestmark = pytest.mark.filterwarnings("error")


def _headers(path: str, method: str = "GET", extra: list | None = None) -> list[tuple[bytes, bytes]]:
    return [(b":method", method.encode()), (b":scheme", b"http"), (b":path", path.encode()), (b":authority", b"example.test")] + (extra or [])


async def _run(*argv: str, timeout: float = 20.0) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out, err  # type: ignore[return-value]


class Recording(App):
    """Records the hooks in the order they run, and the HTTP version each request saw."""

    def __init__(self, peer) -> None:
        super().__init__(peer)
        self.calls: list[str] = []
        self.versions: list[bytes] = []

    def new_ctx(self):
        self.calls.append("new_ctx")

    async def early_request_filter(self, session):
        self.calls.append("early_request_filter")
        self.versions.append(session.http_version)

    async def request_filter(self, session):
        self.calls.append("request_filter")
        if session.request.target == b"/refused":
            session.respond(403, b"no\n")
            return True
        return False

    def request_body_filter(self, session, chunk, end):
        if end:
            self.calls.append("request_body_filter(end)")
        return chunk

    async def proxy_upstream_filter(self, session):
        self.calls.append("proxy_upstream_filter")
        return True

    async def upstream_peer(self, session):
        self.calls.append("upstream_peer")
        return self.peer

    async def connected_to_upstream(self, session, peer, reused):
        self.calls.append("connected_to_upstream")

    async def upstream_request_filter(self, session, headers):
        self.calls.append("upstream_request_filter")
        headers.append((b"x-h2-hooked", b"yes"))

    def upstream_response_filter(self, session, headers):
        self.calls.append("upstream_response_filter")

    async def response_filter(self, session, headers):
        self.calls.append("response_filter")
        headers.append((b"x-response-filter", b"ran"))

    def response_body_filter(self, session, chunk, end):
        if end:
            self.calls.append("response_body_filter(end)")
        return chunk.upper()

    async def logging(self, session, error):
        self.calls.append("logging")
        await super().logging(session, error)


ORDER = [
    "new_ctx", "early_request_filter", "request_filter", "proxy_upstream_filter", "upstream_peer", "connected_to_upstream",
    "upstream_request_filter", "request_body_filter(end)", "upstream_response_filter", "response_filter", "response_body_filter(end)", "logging",
]


async def test_h2c_prior_knowledge_runs_every_hook_in_the_http1_order() -> None:
    server, peer = await origin()
    app = Recording(peer)
    proxy = await start_proxy(app)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        stream = client.request(_headers("/echo", "POST", [(b"content-length", b"5")]), b"hello")
        response = await client.response(stream)
        assert response["status"] == 200 and response["reset"] is None
        assert response["headers"][b"x-response-filter"] == b"ran"
        body = response["body"]
        assert body.startswith(b"POST /ECHO HTTP/1.1\n")  # the h1 upstream got an HTTP/1.1 request (uppercased by the body filter)
        assert b"\nHOST: EXAMPLE.TEST\n" in body and b"\nX-H2-HOOKED: YES\n" in body and body.endswith(b"\n\nHELLO")
        assert b"TRANSFER-ENCODING: CHUNKED" in body  # a request body filter may change the length
        # the body filter runs as the body arrives (here with the head), the rest in lifecycle order
        assert [c for c in app.calls if c != "request_body_filter(end)"] == [c for c in ORDER if c != "request_body_filter(end)"]
        assert app.calls.count("request_body_filter(end)") == 1
        assert app.versions == [b"2.0"] and app.errors == [None]
        # a direct answer from request_filter, on the same connection
        app.calls.clear()
        response = await client.response(client.get("/refused"))
        assert response["status"] == 403 and response["body"] == b"no\n"
        assert app.calls == ["new_ctx", "early_request_filter", "request_filter", "logging"]
    finally:
        await client.close()
        await stop(proxy, server)


async def test_concurrent_streams_share_one_connection_and_bodies_of_unknown_length_go_chunked() -> None:
    server, peer = await origin()
    app = App(peer)
    proxy = await start_proxy(app)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        streams = [client.get(f"/bytes/{n}") for n in (10, 70_000, 300_000, 5)]
        upload = client.request(_headers("/echo", "POST"), end=False)  # no content-length: chunked upstream
        await client.send_body(upload, b"a" * 100_000)
        results = [await client.response(s) for s in streams]
        assert [len(r["body"]) for r in results] == [10, 70_000, 300_000, 5]
        assert all(r["status"] == 200 and r["reset"] is None for r in results)
        echoed = (await client.response(upload))["body"]
        assert b"transfer-encoding: chunked" in echoed.lower() and echoed.endswith(b"\n\n" + b"a" * 100_000)
        assert len(app.errors) == 5 and set(app.errors) == {None}
    finally:
        await client.close()
        await stop(proxy, server)


async def test_http1_still_served_on_an_h2c_listener_and_http2_false_refuses_the_preface() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer))
    plain = await start_proxy(App(peer), http2=False)
    h1 = await Client.open(proxy)
    try:
        h1.send(get("/"))
        status, _, _ = await h1.response()
        assert status == 200
        raw = await Client.open(plain)
        try:
            raw.send(PREFACE)
            answer = await raw.reader.read()  # HTTP/1.1 only: the parser refuses the preface
        finally:
            await raw.close()
        assert answer.startswith(b"HTTP/1.1 4") or answer.startswith(b"HTTP/1.1 505"), answer
    finally:
        await h1.close()
        await stop(proxy, plain, server)


async def test_curl_and_nghttp_with_prior_knowledge() -> None:
    server, peer = await origin()
    proxy = await start_proxy(App(peer))
    port = proxy.sock.getsockname()[1]
    try:
        code, out, err = await _run("curl", "-sS", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_version}", "-d", "posted", f"http://127.0.0.1:{port}/echo")
        assert code == 0, err
        assert out.endswith(b"\n2") and b"\n\nposted" in out
        code, out, err = await _run("nghttp", "-n", "-s", f"http://127.0.0.1:{port}/bytes/1000000", f"http://127.0.0.1:{port}/bytes/20")
        assert code == 0, err + out
        assert out.count(b"\n") >= 3  # nghttp -s prints one statistics line per request
        code, out, err = await _run("h2load", "-c2", "-m5", "-n200", f"http://127.0.0.1:{port}/")
        assert code == 0, err
        assert b"200 succeeded, 0 failed, 0 errored" in out, out
    finally:
        await stop(proxy, server)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, object]:
    directory: Path = tmp_path_factory.mktemp("h2pki")
    ca = Authority(directory)
    return ca, ca.issue("h2.test", dns=("h2.test",), ips=("127.0.0.1",))


async def test_tls_alpn_h2_and_http2_false_offers_only_http1(pki) -> None:
    ca, leaf = pki
    server, peer = await origin()
    store = CertStore([CertificateSpec("h2", leaf.cert, leaf.key)])
    proxy = await start_proxy(App(peer), tls=store)
    store1 = CertStore([CertificateSpec("h2", leaf.cert, leaf.key)])
    h1_only = await start_proxy(App(peer), tls=store1, http2=False)
    port, port1 = proxy.sock.getsockname()[1], h1_only.sock.getsockname()[1]
    try:
        assert store.settings.alpn == ("h2", "http/1.1") and store1.settings.alpn == ("http/1.1",)
        code, out, err = await _run("curl", "-sS", "--http2", "--cacert", ca.cert, "--resolve", f"h2.test:{port}:127.0.0.1",
                                    "-w", "\n%{http_version}", f"https://h2.test:{port}/echo")
        assert code == 0, err
        assert out.endswith(b"\n2") and b"x-forwarded-proto: https" in out.lower()
        code, out, err = await _run("curl", "-sS", "--http2", "--cacert", ca.cert, "--resolve", f"h2.test:{port1}:127.0.0.1",
                                    "-w", "\n%{http_version}", f"https://h2.test:{port1}/")
        assert code == 0, err
        assert out.endswith(b"\n1.1")
        # the raw client over TLS with ALPN h2, several streams
        ctx = ssl.create_default_context(cafile=ca.cert)
        ctx.set_alpn_protocols(["h2"])
        client = await H2Client.open(port, ssl_context=ctx, server_hostname="h2.test")
        try:
            assert client.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
            first, second = client.get("/bytes/50000"), client.get("/echo")
            assert len((await client.response(first))["body"]) == 50000
            assert b"x-forwarded-proto: https" in (await client.response(second))["body"].lower()
        finally:
            await client.close()
    finally:
        await stop(proxy, h1_only, server)


async def test_a_client_reset_stops_the_upstream_and_the_connection_keeps_serving() -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        try:
            await reader.read()  # EOF: the proxy closed the upstream connection
        finally:
            release.set()
            writer.close()

    slow_server = await asyncio.start_server(slow, "127.0.0.1", 0)
    from ferryman.net.addr import parse_address
    from ferryman.net.connect import Peer

    app = App(Peer(parse_address(f"127.0.0.1:{slow_server.sockets[0].getsockname()[1]}"), connect_timeout=2.0))
    proxy = await start_proxy(app)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        stream = client.get("/slow")
        await asyncio.wait_for(arrived.wait(), 5)
        from h2.errors import ErrorCodes

        client.conn.reset_stream(stream, ErrorCodes.CANCEL)
        client.flush()
        await asyncio.wait_for(release.wait(), 5)  # the upstream connection was closed
        assert app.errors and app.errors[-1] is not None
        server, peer = await origin()
        app.peer = peer
        response = await client.response(client.get("/"))
        assert response["status"] == 200
        await stop(server)
    finally:
        await client.close()
        await stop(proxy, slow_server)



async def test_drain_sends_goaway_lets_open_streams_finish_and_refuses_new_ones() -> None:
    from h2.events import ConnectionTerminated

    release = asyncio.Event()
    arrived = asyncio.Event()

    async def held(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(held, "127.0.0.1", 0)
    from ferryman.net.addr import parse_address
    from ferryman.net.connect import Peer

    proxy = await start_proxy(App(Peer(parse_address(f"127.0.0.1:{server.sockets[0].getsockname()[1]}"), connect_timeout=2.0)))
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        stream = client.get("/held")
        await asyncio.wait_for(arrived.wait(), 5)
        proxy.stop_accepting()
        drained = asyncio.get_running_loop().create_task(proxy.drain(5.0))
        while not [e for e in client.events if isinstance(e, ConnectionTerminated)]:
            assert await asyncio.wait_for(client.pump(), 5)
        [goaway] = [e for e in client.events if isinstance(e, ConnectionTerminated)]
        assert goaway.error_code == 0 and goaway.last_stream_id == stream
        release.set()
        response = await client.response(stream)
        assert response["status"] == 200 and response["body"] == b"done"
        await asyncio.wait_for(drained, 5)
        assert not proxy.connections
    finally:
        release.set()
        await client.close()
        await stop(proxy, server)


async def test_an_idle_h2_connection_gets_goaway_and_is_closed() -> None:
    from h2.events import ConnectionTerminated

    server, peer = await origin()
    proxy = await start_proxy(App(peer), keepalive_timeout=0.2)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        assert (await client.response(client.get("/")))["status"] == 200
        while await asyncio.wait_for(client.pump(), 5):
            pass  # until the proxy closes the idle connection
        assert [e for e in client.events if isinstance(e, ConnectionTerminated) and e.error_code == 0]
    finally:
        await client.close()
        await stop(proxy, server)

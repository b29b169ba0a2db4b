"""WebSocket through ferryman (HTTP/1.1 Upgrade, ws and wss), checked with a real
``websockets`` client and server on loopback.

Each check runs through the framework (``HttpProxyService`` + a ProxyHttp app) and, for
the main ones, through the product (a TOML config served by the Gateway in-process, or
``ferryman run`` as a subprocess). Topologies: ws → ws (both ends plain: the tunnel moves
to the splice pump), wss → ws (TLS terminated by ferryman), ws → wss and wss → wss (TLS to
the origin, verified against a test CA): an end that is TLS keeps the callback tunnel.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.certs import Authority
from support.http_proxy import App, Client, start_proxy
from support.process import LOCAL, free_port, running
from support.ws import WsOrigin, client, close_frame_size, frame_size
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from ferryman.config.load import load_text
from ferryman.gateway.app import Gateway
from ferryman.http.service import HttpProxyService
from ferryman.net.addr import parse_address
from ferryman.net.connect import Peer
from ferryman.net.tls import CertificateSpec, CertStore, TlsOptions

SIZES = (0, 1, 125, 126, 65535, 65536, 1 << 20, 16 << 20)
ORIGIN_NAME = "origin.test"
FRAMEWORK = [("framework", "ws", "ws"), ("framework", "wss", "ws"), ("framework", "ws", "wss"), ("framework", "wss", "wss")]
PRODUCT = [("product", "ws", "ws"), ("product", "wss", "wss")]
ALL = FRAMEWORK + PRODUCT


def ids(params: tuple[str, str, str]) -> str:
    mode, front, back = params
    return f"{mode}-{front}-{back}"


# PKI and set-ups ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: str
    proxy_cert: str
    proxy_key: str
    origin_cert: str
    origin_key: str

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def origin_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.origin_cert, self.origin_key)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("ws-pki")
    ca = Authority(directory)
    proxy = ca.issue("ws.test", dns=("ws.test",), ips=(LOCAL,), file="proxy")
    origin = ca.issue(ORIGIN_NAME, dns=(ORIGIN_NAME,), file="origin")
    return Pki(ca.cert, proxy.cert, proxy.key, origin.cert, origin.key)


class Recorder(App):
    """The framework app: one upstream, and what the logging hook saw for each request."""

    def __init__(self, peer: Peer) -> None:
        super().__init__(peer)
        self.logged: list[tuple[int | None, int, int, Any]] = []

    async def logging(self, session, error):
        self.logged.append((session.response_status, session.bytes_sent, session.body_bytes_received, error))


@dataclass
class Setup:
    """One proxy in front of one websockets origin."""

    origin: WsOrigin
    service: HttpProxyService | None  # None: ferryman runs as a subprocess
    port: int
    front: str
    client_tls: ssl.SSLContext | None
    app: Recorder | None = None  # framework
    log: Path | None = None  # product: the JSON access log

    @property
    def proxy(self) -> HttpProxyService:
        assert self.service is not None, "ferryman runs in another process"
        return self.service

    def uri(self, path: str) -> str:
        return f"{self.front}://{LOCAL}:{self.port}{path}"

    def connect(self, path: str, **options: Any) -> Any:
        return client(self.uri(path), tls=self.client_tls, **options)

    async def logged(self, count: int) -> list[tuple[int | None, int, int]]:
        """(status, body bytes sent, body bytes received) of the first ``count`` requests,
        waiting (bounded) for their logging hook."""
        assert self.app is not None
        await poll(lambda: len(self.app.logged) >= count, f"{count} logged requests")  # type: ignore[union-attr]
        return [entry[:3] for entry in self.app.logged[:count]]


async def poll(predicate: Any, what: str, timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` is true, polling; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def proxied(
    pki: Pki, tmp_path: Path, mode: str, front: str, back: str, *, compression: str | None = None, **options: Any,
) -> AsyncIterator[Setup]:
    """A websockets origin (``back``: ws | wss) behind ferryman (``front``: ws | wss), as the
    framework or as the product. ``options``: HttpProxyService keywords (framework) or TOML
    listener lines (product)."""
    origin = await WsOrigin.start(tls=pki.origin_context() if back == "wss" else None, compression=compression)
    client_tls = pki.client_context() if front == "wss" else None
    try:
        if mode == "framework":
            tls = TlsOptions(ca_file=pki.ca, sni=ORIGIN_NAME) if back == "wss" else None
            app = Recorder(Peer(parse_address(origin.address), connect_timeout=2.0, tls=tls))
            store = CertStore([CertificateSpec("ws", pki.proxy_cert, pki.proxy_key)]) if front == "wss" else None
            service = await start_proxy(app, tls=store, **options)
            try:
                yield Setup(origin, service, service.sock.getsockname()[1], front, client_tls, app=app)
            finally:
                service.stop_accepting()
                await service.drain(1.0)
        else:
            log = tmp_path / "access.log"
            gw = Gateway(load_text(product_config(pki, origin, front, back, log, options)))
            gw.bind()
            server = gw.make_server()
            for background in server.background:
                background.start()
            for service in server.services:
                await service.start()
            try:
                web = server.services[0]
                yield Setup(origin, web, web.sock.getsockname()[1], front, client_tls, log=log)
            finally:
                for service in server.services:
                    service.stop_accepting()
                    await service.drain(1.0)
                for background in server.background:
                    await background.stop()
                gw.close()
    finally:
        await origin.aclose()


def product_config(pki: Pki, origin: WsOrigin, front: str, back: str, log: Path, options: dict[str, Any], addr: str = f"{LOCAL}:0") -> str:
    listener = "".join(f"{key} = {json.dumps(value)}\n" for key, value in options.items())
    text = f"""
[listeners.web]
addr = "{addr}"
protocol = "http"
routes = ["ws"]
access_log = "{log}"
access_log_format = ["request_uri", "status", "body_bytes_sent", "request_length"]
{listener}
[routes.ws]
path = "/"
upstream = "ws"

[upstreams.ws]
backends = ["{origin.address}"]
connect_timeout = "2s"
"""
    if back == "wss":
        text += f'tls = {{ ca = "{pki.ca}", sni = "{ORIGIN_NAME}" }}\n'
    if front == "wss":
        text = text.replace('routes = ["ws"]', 'routes = ["ws"]\ntls = ["ws"]')
        text += f'\n[certificates.ws]\ncert = "{pki.proxy_cert}"\nkey = "{pki.proxy_key}"\n'
    return text


def reset(ws: Any) -> None:
    """Drop a client connection with a TCP reset: no close frame, no FIN."""
    ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


def detached(setup: Setup) -> bool:
    """Some client connection of the proxy moved to the splice pump."""
    return any(conn.detached for conn in setup.proxy.connections)


def message(size: int, kind: str) -> str | bytes:
    """A random message: bytes, or text of ``size`` ASCII characters."""
    data = os.urandom(size)
    return data if kind == "binary" else data.hex()[:size]


# messages -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("topology", ALL, ids=ids)
async def test_text_and_binary_messages_of_every_size_arrive_intact(pki: Pki, tmp_path: Path, topology: tuple[str, str, str]) -> None:
    mode, front, back = topology
    async with proxied(pki, tmp_path, mode, front, back) as setup, setup.connect("/echo") as ws:
        for size in SIZES:
            for kind in ("binary", "text"):
                sent = message(size, kind)
                await ws.send(sent)
                received = await ws.recv()
                assert type(received) is type(sent) and len(received) == size
                assert received == sent, f"{kind} message of {size} bytes changed on the way"
        # where both ends are plain sockets the tunnel runs on the splice pump
        assert detached(setup) == (front == back == "ws")


@pytest.mark.parametrize("topology", [("framework", "ws", "ws"), ("framework", "wss", "wss")], ids=ids)
async def test_fragmented_messages_keep_their_fragments_both_ways(pki: Pki, tmp_path: Path, topology: tuple[str, str, str]) -> None:
    async with proxied(pki, tmp_path, *topology) as setup, setup.connect("/fragments") as ws:
        for fragments in ([b"ab", b"cde", b"", b"f" * 70000], ["une ", "phrase ", "découpée"]):
            # websockets ends a message sent from an iterable with an empty final frame
            # (it cannot know which part is the last): one more for each way
            await ws.send(fragments)
            echoed = [part async for part in ws.recv_streaming()]
            assert echoed == fragments + [fragments[0][:0]] * 2
        assert setup.origin.fragments == [[2, 3, 0, 70000, 0], [4, 7, 10, 0]]  # UTF-8 bytes per frame


@pytest.mark.parametrize("topology", [("framework", "ws", "ws"), ("framework", "wss", "ws"), ("product", "wss", "wss")], ids=ids)
async def test_server_pushes_interleave_with_client_messages(pki: Pki, tmp_path: Path, topology: tuple[str, str, str]) -> None:
    count = 500
    async with proxied(pki, tmp_path, *topology) as setup, setup.connect(f"/push/{count}") as ws:
        async def send() -> None:
            for i in range(count):
                await ws.send(f"mine {i}".encode() * (1 + i % 50))

        sender = asyncio.ensure_future(send())
        pushes, echoes = [], []
        while len(pushes) < count or len(echoes) < count:
            received = await ws.recv()
            (pushes if isinstance(received, str) else echoes).append(received)
        await sender
        assert pushes == [f"push {i}" for i in range(count)]
        assert echoes == [f"mine {i}".encode() * (1 + i % 50) for i in range(count)]


@pytest.mark.parametrize("topology", [("framework", "ws", "ws"), ("framework", "wss", "wss")], ids=ids)
async def test_ping_and_pong_carry_their_payloads_both_ways(pki: Pki, tmp_path: Path, topology: tuple[str, str, str]) -> None:
    async with proxied(pki, tmp_path, *topology) as setup, setup.connect("/ping") as ws:
        # the origin pings us with this payload; its pong waiter resolves only on a pong
        # with the same payload, then it confirms
        await ws.send(b"origin-ping \x00\xff")
        assert await asyncio.wait_for(ws.recv(), 10) == b"pong origin-ping \x00\xff"
        for payload in (b"", b"client-ping", os.urandom(125)):
            waiter = await ws.ping(payload)
            await asyncio.wait_for(waiter, 10)  # websockets matches the pong's payload
        await ws.send("still open")
        assert await ws.recv() == "still open"


# closing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("topology", ALL, ids=ids)
async def test_close_codes_and_reasons_arrive_intact_from_either_side(pki: Pki, tmp_path: Path, topology: tuple[str, str, str]) -> None:
    async with proxied(pki, tmp_path, *topology) as setup:
        for code in (1000, 1001, 4000):
            # the origin closes
            async with setup.connect(f"/close/{code}") as ws:
                await ws.send("close please")
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None
                assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (code, f"bye {code}")
                assert ws.close_code == code
            # the client closes
            reason = f"client leaves with {code}" if code == 4000 else ""
            async with setup.connect("/echo") as ws:
                await ws.send("hello")
                assert await ws.recv() == "hello"
                await ws.close(code, reason)
            seen = ("/echo", code, reason)
            await poll(lambda seen=seen: seen in setup.origin.closes, f"the origin to see close {code}")
        assert [c for c in setup.origin.closes if c[0].startswith("/close/")] == [
            (f"/close/{code}", code, f"bye {code}") for code in (1000, 1001, 4000)
        ]


@pytest.mark.parametrize("topology", FRAMEWORK + [("product", "ws", "ws")], ids=ids)
async def test_a_reset_reaches_the_other_side_as_an_abnormal_closure(pki: Pki, tmp_path: Path, topology: tuple[str, str, str]) -> None:
    async with proxied(pki, tmp_path, *topology) as setup:
        async with setup.connect("/reset") as ws:
            await ws.send("reset me")
            with pytest.raises(ConnectionClosedError) as closed:
                await asyncio.wait_for(ws.recv(), 10)  # bounded: an abnormal close must not hang
            assert closed.value.rcvd is None  # no close frame came
            assert ws.close_code == 1006
        await poll(lambda: not setup.proxy.connections, "the proxy to drop the connection")
        # the client resets: the origin sees an abnormal closure too
        async with setup.connect("/echo") as ws:
            await ws.send("then I vanish")
            assert await ws.recv() == "then I vanish"
            reset(ws)
        await poll(lambda: any(path == "/echo" and code == 1006 for path, code, _ in setup.origin.closes), "the origin to see 1006")
        await poll(lambda: not setup.proxy.connections, "the proxy to drop the connection")
        # the proxy keeps serving
        async with setup.connect("/echo") as ws:
            await ws.send("after the reset")
            assert await ws.recv() == "after the reset"


# extensions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("topology", [("framework", "ws", "ws"), ("framework", "wss", "wss"), ("product", "ws", "ws")], ids=ids)
async def test_permessage_deflate_is_negotiated_end_to_end(pki: Pki, tmp_path: Path, topology: tuple[str, str, str]) -> None:
    mode = topology[0]
    async with proxied(pki, tmp_path, *topology, compression="deflate") as setup:
        text = "compressible " * 80000  # about 1 MiB
        async with setup.connect("/echo", compression="deflate") as ws:
            assert [ext.name for ext in ws.protocol.extensions] == ["permessage-deflate"]
            await ws.send(text)
            assert await ws.recv() == text
        assert setup.origin.extensions == [["permessage-deflate"]]
        offered = setup.origin.requests[0].headers["Sec-WebSocket-Extensions"]
        assert "permessage-deflate" in offered  # the client's offer went through unchanged
        if mode == "framework":
            ((status, sent, received),) = await setup.logged(1)
            assert status == 101
            assert 0 < sent < len(text) // 10 and 0 < received < len(text) // 10  # compressed on the wire


# upgrade refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize("topology", [("framework", "ws", "ws"), ("framework", "wss", "wss"), ("product", "ws", "ws")], ids=ids)
async def test_a_refused_upgrade_is_an_ordinary_response_and_the_connection_keeps_serving(
    pki: Pki, tmp_path: Path, topology: tuple[str, str, str],
) -> None:
    async with proxied(pki, tmp_path, *topology) as setup:
        with pytest.raises(InvalidStatus) as refused:
            async with setup.connect("/refuse"):
                pass
        assert refused.value.response.status_code == 403
        # on one raw connection: the refused upgrade, then plain HTTP, then a working upgrade
        reader, writer = await asyncio.open_connection(LOCAL, setup.port, ssl=setup.client_tls)
        http = Client(reader, writer)
        try:
            upgrade = (
                "GET {} HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            http.send(upgrade.format("/refuse").encode())
            status, _, body = await http.response()
            assert (status, body) == (403, b"refused\n")
            http.send(b"GET /plain HTTP/1.1\r\nHost: ws.test\r\n\r\n")
            status, _, body = await http.response()
            assert (status, body) == (200, b"plain\n")
            http.send(upgrade.format("/echo").encode())
            status, headers, _ = await http.response()
            assert status == 101 and headers[b"sec-websocket-accept"] == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        finally:
            await http.close()


# bookkeeping -------------------------------------------------------------------------------------


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def exchange_on_many(setup: Setup, count: int, messages: int) -> None:
    """``count`` concurrent websocket connections, each echoing ``messages`` messages, then
    all closed by their clients."""
    async def one(i: int) -> None:
        async with setup.connect("/echo") as ws:
            for j in range(messages):
                payload = f"{i}:{j}:".encode() * (1 + j * 100)
                await ws.send(payload)
                assert await ws.recv() == payload

    await asyncio.gather(*(one(i) for i in range(count)))


@pytest.mark.parametrize("topology", [("framework", "ws", "ws"), ("framework", "wss", "wss")], ids=ids)
async def test_many_concurrent_websockets_leave_no_tunnel_or_fd_behind(pki: Pki, tmp_path: Path, topology: tuple[str, str, str]) -> None:
    count = 200 if topology[1] == "ws" else 50  # TLS handshakes cost CPU on a shared machine
    async with proxied(pki, tmp_path, *topology) as setup:
        await exchange_on_many(setup, 1, 1)  # warm up: pools, pipes, TLS contexts
        await poll(lambda: not setup.proxy.connections and not setup.proxy.exchanges, "the warm-up connection to end")
        await poll(lambda: not setup.origin.conns, "the origin to close the warm-up connection")
        before = open_fds()
        await exchange_on_many(setup, count, 5)
        await poll(lambda: not setup.proxy.connections and not setup.proxy.exchanges, "every tunnel to end")
        await poll(lambda: not setup.origin.conns, "the origin to close every connection")
        pipes = len(setup.proxy._pipes._idle) if setup.proxy._pipes is not None else 0
        await poll(lambda: open_fds() <= before + 2 * pipes, f"open fds back to {before} (+{pipes} idle pipes)")
        logged = await setup.logged(count + 1)
        assert {entry[0] for entry in logged} == {101} and all(entry[3] is None for entry in setup.app.logged)  # type: ignore[union-attr]
        assert setup.origin.closes.count(("/echo", 1000, "")) == count + 1


def test_many_concurrent_websockets_through_ferryman_run_leave_no_fd_behind(pki: Pki, tmp_path: Path) -> None:
    """The product as a process: 200 websockets at once through ``ferryman run``, then its
    open file descriptors (/proc/PID/fd) are back where they were."""
    port = free_port()
    log = tmp_path / "access.log"

    async def main() -> None:
        origin = await WsOrigin.start()
        try:
            config = tmp_path / "ferryman.toml"
            config.write_text("[server]\nworkers = 1\ngrace_period = \"1s\"\n" + product_config(pki, origin, "ws", "ws", log, {}, f"{LOCAL}:{port}"))
            with running(config) as proc:
                await asyncio.to_thread(proc.wait_ready)
                setup = Setup(origin, None, port, "ws", None)
                await exchange_on_many(setup, 1, 1)
                await poll(lambda: not origin.conns, "the warm-up connection to end")
                before = open_fds(proc.pid)
                await exchange_on_many(setup, 200, 5)
                await poll(lambda: not origin.conns, "the origin to close every connection")
                await poll(lambda: open_fds(proc.pid) <= before, f"ferryman's open fds back to {before}", timeout=15)
                assert proc.stop(10) == 0
            lines = [json.loads(line) for line in log.read_text().splitlines()]
            assert len(lines) == 201 and {line["status"] for line in lines} == {101}
        finally:
            await origin.aclose()

    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 60))


# idle tunnels -------------------------------------------------------------------------------------

SHORT = 0.2  # the HTTP timeouts in the idle tests: a tunnel must outlive them all


@pytest.mark.parametrize("topology", [("framework", "ws", "ws"), ("framework", "wss", "wss")], ids=ids)
async def test_an_idle_tunnel_outlives_every_http_timeout(pki: Pki, tmp_path: Path, topology: tuple[str, str, str]) -> None:
    timeouts = {"header_timeout": SHORT, "body_timeout": SHORT, "keepalive_timeout": SHORT, "upstream_read_timeout": SHORT}
    async with proxied(pki, tmp_path, *topology, tunnel_idle_timeout=30.0, **timeouts) as setup:
        async with setup.connect("/echo") as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            await asyncio.sleep(SHORT * 5)  # the idle period under test, not a synchronisation
            await ws.send("after a long silence")
            assert await ws.recv() == "after a long silence"
        ((status, _, _),) = await setup.logged(1)
        assert status == 101 and setup.app.logged[0][3] is None  # type: ignore[union-attr]


@pytest.mark.parametrize("topology", [("framework", "ws", "ws"), ("framework", "wss", "wss"), ("product", "ws", "ws")], ids=ids)
async def test_a_tunnel_idle_past_its_tunnel_idle_timeout_is_closed(pki: Pki, tmp_path: Path, topology: tuple[str, str, str]) -> None:
    mode = topology[0]
    idle = 0.5  # long enough for the handshake and one echo on a busy machine
    options = {"tunnel_idle_timeout": idle} if mode == "framework" else {"tunnel_idle_timeout": f"{int(idle * 1000)}ms"}
    async with proxied(pki, tmp_path, *topology, **options) as setup:
        async with setup.connect("/echo") as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            with pytest.raises(ConnectionClosedError):
                await asyncio.wait_for(ws.recv(), 10)  # nothing more comes: the proxy closes
            assert ws.close_code == 1006
        await poll(lambda: any(c[1] == 1006 for c in setup.origin.closes), "the origin to see the tunnel close")
        await poll(lambda: not setup.proxy.connections, "the proxy to release the connection")


# logging ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("topology", FRAMEWORK, ids=ids)
async def test_the_logging_hook_sees_the_101_with_the_tunnels_byte_counts(pki: Pki, tmp_path: Path, topology: tuple[str, str, str]) -> None:
    async with proxied(pki, tmp_path, *topology) as setup:
        sizes = (5, 300, 70000)
        async with setup.connect("/echo") as ws:
            for size in sizes:
                payload = os.urandom(size)
                await ws.send(payload)
                assert await ws.recv() == payload
            await ws.close(4000, "done")
        ((status, sent, received),) = await setup.logged(1)
        assert status == 101
        # exactly the frames: the client's are masked, the origin's are not
        assert received == sum(frame_size(n, masked=True) for n in sizes) + close_frame_size("done", masked=True)
        assert sent == sum(frame_size(n, masked=False) for n in sizes) + close_frame_size("done", masked=False)


async def test_the_access_log_records_the_101_with_the_tunnels_byte_counts(pki: Pki, tmp_path: Path) -> None:
    async with proxied(pki, tmp_path, "product", "wss", "wss") as setup, setup.connect("/echo") as ws:
        await ws.send(b"x" * 1000)
        assert await ws.recv() == b"x" * 1000
        await ws.close(1000, "")
    lines = [json.loads(line) for line in setup.log.read_text().splitlines()]  # type: ignore[union-attr]
    assert lines == [{
        "request_uri": "/echo", "status": 101,
        "body_bytes_sent": frame_size(1000, masked=False) + close_frame_size(masked=False),
        "request_length": frame_size(1000, masked=True) + close_frame_size(masked=True),
    }]

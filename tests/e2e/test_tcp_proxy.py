"""The TCP proxy end to end on loopback, driven from Python (no config file).

Data-path tests run on every pump mode: ``splice="auto"`` (copy first, splice(2) through a
pooled pipe once a direction proves bulk), ``splice="always"`` (splice from the first byte)
and ``splice="never"`` (the transport copy pump).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from ferryman.errors import ErrorKind, ProxyError
from ferryman.l4.hooks import ProxyL4
from ferryman.l4.session import L4Session
from ferryman.l4.tcp import TcpProxyService
from ferryman.net.addr import Address, parse_address
from ferryman.net.connect import Peer
from ferryman.net.listener import bind_socket
from ferryman.protocol import proxy_protocol

MiB = 1 << 20
V1_HEADER = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
V2_HEADER = proxy_protocol.build_v2(("203.0.113.7", 40000), ("198.51.100.2", 443))
V2_HEADER_V6 = proxy_protocol.build_v2(("2001:db8::1", 1234), ("2001:db8::2", 443))

Logged = tuple[L4Session, ProxyError | None]


class Recorder(ProxyL4):
    """Dials ``peers[session.tries]`` (the last one for later tries) and records the hooks."""

    def __init__(self, *peers: Peer, max_tries: int = 3, allow: bool = True) -> None:
        self.peers = list(peers)
        self.max_tries = max_tries
        self.allow = allow
        self.peer_calls = 0
        self.filtered: list[Any] = []  # session.client_addr as connection_filter saw it
        self.logs: asyncio.Queue[Logged] = asyncio.Queue()

    async def connection_filter(self, session: L4Session) -> bool:
        self.filtered.append(session.client_addr)
        return self.allow

    async def upstream_peer(self, session: L4Session) -> Peer:
        self.peer_calls += 1
        return self.peers[min(session.tries, len(self.peers) - 1)]

    async def logging(self, session: L4Session, error: ProxyError | None) -> None:
        self.logs.put_nowait((session, error))

    async def logged(self, timeout: float = 5.0) -> Logged:
        async with asyncio.timeout(timeout):
            return await self.logs.get()


async def start_proxy(net: Any, app: ProxyL4, *, address: Address | None = None, **options: Any) -> TcpProxyService:
    """A started TcpProxyService on an ephemeral loopback port (or ``address``)."""
    sock = bind_socket(address or parse_address("127.0.0.1:0"))
    try:
        service = TcpProxyService("e2e", sock, app, **options)
    except BaseException:
        sock.close()
        raise
    service.start()

    async def stop() -> None:
        service.stop_accepting()
        await service.drain(1.0)
        service.pipes.close()

    net.defer(stop)
    return service


async def roundtrip(net: Any, sock: socket.socket, data: bytes) -> None:
    """Send ``data`` to an echo origin through the proxy and check it comes back."""
    sender = asyncio.get_running_loop().create_task(net.send_all(sock, data))
    assert await net.recv_exactly(sock, len(data)) == data
    await sender


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture(params=["auto", "always", "never"])
def splice(request: pytest.FixtureRequest) -> str:
    return request.param


# data path -------------------------------------------------------------------------------------
async def test_bytes_flow_both_ways_intact(net: Any, splice: str) -> None:
    up, down = os.urandom(5 * MiB), os.urandom(5 * MiB)
    origin_got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def sink_source(conn: socket.socket) -> None:
        sender = asyncio.get_running_loop().create_task(net.send_all(conn, down, eof=True))
        origin_got.set_result(await net.recv_to_eof(conn))
        await sender

    origin = await net.origin(sink_source)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, splice=splice)
    client = await net.connect(proxy.local_addr)
    sender = asyncio.get_running_loop().create_task(net.send_all(client, up, eof=True))
    received = await net.recv_to_eof(client)
    await sender
    session, error = await app.logged()

    seen = f"got {len(received)} bytes; proxy: {error}, up={session.bytes_up} down={session.bytes_down} reset_by={session.reset_by}"
    assert len(received) == len(down) and sha(received) == sha(down), seen
    assert error is None
    uploaded = await origin_got
    assert len(uploaded) == len(up) and sha(uploaded) == sha(up)
    assert (session.bytes_up, session.bytes_down) == (len(up), len(down))
    assert session.reset_by is None and not session.timed_out


async def test_many_concurrent_connections(net: Any, splice: str) -> None:
    origin = await net.origin(net.echo)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, splice=splice)

    async def one() -> None:
        client = await net.connect(proxy.local_addr)
        await roundtrip(net, client, os.urandom(256 * 1024))
        client.shutdown(socket.SHUT_WR)
        assert await net.outcome(client) == "eof"

    await asyncio.gather(*(one() for _ in range(50)))
    results = [await app.logged() for _ in range(50)]
    assert [error for _, error in results] == [None] * 50
    assert all(s.bytes_up == s.bytes_down == 256 * 1024 for s, _ in results)
    assert origin.count == 50


async def test_half_close_client_first(net: Any, splice: str) -> None:
    response = os.urandom(2 * MiB)

    async def server(conn: socket.socket) -> None:
        assert await net.recv_to_eof(conn) == b"the whole request"
        await net.send_all(conn, response)

    origin = await net.origin(server)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, splice=splice)
    client = await net.connect(proxy.local_addr)
    await net.send_all(client, b"the whole request", eof=True)

    assert await net.recv_to_eof(client) == response
    session, error = await app.logged()
    assert error is None and session.reset_by is None
    assert session.bytes_down == len(response)


async def test_half_close_response_finished_before_client_reads(net: Any, splice: str) -> None:
    """The origin's last bytes and FIN arrive while the proxy is paused by a client that
    has not read yet (both directions shut: the socket reports HUP with data queued)."""
    response = os.urandom(4 * MiB)
    sent = asyncio.Event()

    async def server(conn: socket.socket) -> None:
        assert await net.recv_to_eof(conn) == b"request"
        await net.send_all(conn, response)
        sent.set()  # the handler returns and the origin closes: FIN after the data

    origin = await net.origin(server)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, splice=splice)
    client = await net.connect(proxy.local_addr, rcvbuf=16 * 1024)
    await net.send_all(client, b"request", eof=True)
    await sent.wait()

    assert await net.recv_to_eof(client) == response
    session, error = await app.logged()
    assert error is None and session.reset_by is None
    assert session.bytes_down == len(response)


async def test_half_close_server_first(net: Any, splice: str) -> None:
    upload = os.urandom(2 * MiB)
    origin_got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def server(conn: socket.socket) -> None:
        await net.send_all(conn, b"greeting, now your turn", eof=True)
        origin_got.set_result(await net.recv_to_eof(conn))

    origin = await net.origin(server)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, splice=splice)
    client = await net.connect(proxy.local_addr)

    assert await net.recv_to_eof(client) == b"greeting, now your turn"
    await net.send_all(client, upload, eof=True)
    assert await net.outcome(client) == "eof"
    session, error = await app.logged()
    assert error is None
    assert await origin_got == upload
    assert session.bytes_up == len(upload)


# resets ----------------------------------------------------------------------------------------
async def test_origin_reset_closes_client(net: Any, splice: str) -> None:
    async def resetting(conn: socket.socket) -> None:
        assert await net.recv_exactly(conn, 4) == b"ping"
        net.reset_close(conn)

    origin = await net.origin(resetting)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, splice=splice)
    client = await net.connect(proxy.local_addr)
    await net.send_all(client, b"ping")

    assert await net.outcome(client) == "reset"
    session, error = await app.logged()
    assert session.reset_by == "upstream"
    assert error is None


async def test_client_reset_closes_origin(net: Any, splice: str) -> None:
    origin = await net.origin()
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, splice=splice)
    client = await net.connect(proxy.local_addr)
    await net.send_all(client, b"ping")
    upstream = await origin.next_conn()
    assert await net.recv_exactly(upstream, 4) == b"ping"

    net.reset_close(client)
    assert await net.outcome(upstream) == "reset"
    session, _ = await app.logged()
    assert session.reset_by == "client"


# backpressure ----------------------------------------------------------------------------------
async def test_backpressure_bounds_proxy_memory(net: Any, splice: str) -> None:
    """A client that does not read while the origin sends 64 MiB: the proxy (in this
    process) holds a bounded amount, and every byte arrives once the client reads."""
    block, blocks = os.urandom(256 * 1024), 256  # 64 MiB in all
    total = len(block) * blocks
    sent = [0]

    async def source(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 128 * 1024)
        for _ in range(blocks):
            await net.send_all(conn, block)
            sent[0] += len(block)

    origin = await net.origin(source)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, splice=splice)
    before = rss_bytes()
    client = await net.connect(proxy.local_addr, rcvbuf=128 * 1024)

    # the client reads nothing. No event says "nothing moves any more", so sample the
    # origin's progress until it has stood still for half a second.
    last, still = -1, 0
    while still < 5:
        await asyncio.sleep(0.1)
        still = still + 1 if sent[0] == last else 0
        last = sent[0]
    grown = rss_bytes() - before
    assert sent[0] < total, "the whole 64 MiB left the origin although the client read nothing"
    assert grown < 32 * MiB, f"proxy RSS grew by {grown / MiB:.1f} MiB while the client did not read"

    expected = hashlib.sha256()
    for _ in range(blocks):
        expected.update(block)
    got, digest = 0, hashlib.sha256()
    loop = asyncio.get_running_loop()
    while data := await loop.sock_recv(client, 256 * 1024):
        got += len(data)
        digest.update(data)
    assert got == total and digest.hexdigest() == expected.hexdigest()
    client.shutdown(socket.SHUT_WR)
    session, error = await app.logged()
    assert error is None and session.bytes_down == total


async def test_backpressure_with_small_writes(net: Any, splice: str) -> None:
    """Small writes keep splice="auto" in its copy phase while the client does not read:
    the unsent tail must be held and the origin left unread, never overwritten."""
    chunk, chunks = 8 * 1024, 1024  # 8 MiB in writes smaller than one copy buffer
    data = os.urandom(chunk * chunks)
    halfway = asyncio.Event()

    async def trickle(conn: socket.socket) -> None:
        view = memoryview(data)
        for i in range(chunks):
            await net.send_all(conn, view[i * chunk : (i + 1) * chunk])
            await asyncio.sleep(0)  # let the proxy read each write on its own
            if i == chunks // 2:
                halfway.set()

    origin = await net.origin(trickle)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, splice=splice)
    client = await net.connect(proxy.local_addr, rcvbuf=16 * 1024)
    await halfway.wait()  # 4 MiB sent while the client read nothing

    received = await net.recv_to_eof(client)
    assert len(received) == len(data) and sha(received) == sha(data)
    client.shutdown(socket.SHUT_WR)
    session, error = await app.logged()
    assert error is None and session.bytes_down == len(data)


# timeouts --------------------------------------------------------------------------------------
async def test_idle_timeout_closes_connection(net: Any, splice: str) -> None:
    origin = await net.origin(net.echo)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, splice=splice, idle_timeout=0.3)
    client = await net.connect(proxy.local_addr)
    await roundtrip(net, client, b"hello")

    assert await net.outcome(client) == "eof"
    session, error = await app.logged()
    assert session.timed_out is True
    assert error is None


async def test_termination_delay_closes_after_first_fin(net: Any, splice: str) -> None:
    origin_saw_eof = asyncio.Event()

    async def never_fin(conn: socket.socket) -> None:
        assert await net.recv_to_eof(conn) == b"bye"
        origin_saw_eof.set()
        await asyncio.Event().wait()  # never sends its own FIN

    origin = await net.origin(never_fin)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, splice=splice, idle_timeout=None, termination_delay=0.2)
    client = await net.connect(proxy.local_addr)
    start = time.monotonic()
    await net.send_all(client, b"bye", eof=True)

    assert await net.outcome(client) == "eof"
    assert time.monotonic() - start >= 0.15
    assert origin_saw_eof.is_set()
    session, error = await app.logged()
    assert error is None and session.timed_out is False


# connection limit ------------------------------------------------------------------------------
async def test_max_connections_queues_the_third_client(net: Any) -> None:
    origin = await net.origin(net.echo)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, max_connections=2)
    first = await net.connect(proxy.local_addr)
    second = await net.connect(proxy.local_addr)
    await roundtrip(net, first, b"one")
    await roundtrip(net, second, b"two")

    third = await net.connect(proxy.local_addr)  # completes in the kernel backlog
    await net.send_all(third, b"three")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await net.recv_exactly(third, 5)
    assert app.peer_calls == 2 and origin.count == 2

    first.close()
    assert await net.recv_exactly(third, 5) == b"three"
    assert origin.count == 3
    await roundtrip(net, second, b"still served")


# failover --------------------------------------------------------------------------------------
async def test_failover_to_next_peer(net: Any, splice: str) -> None:
    origin = await net.origin(net.echo)
    good = origin.peer()
    app = Recorder(Peer(address=net.refused_address()), good)
    proxy = await start_proxy(net, app, splice=splice)
    client = await net.connect(proxy.local_addr)
    await roundtrip(net, client, b"after failover")
    client.shutdown(socket.SHUT_WR)
    assert await net.outcome(client) == "eof"

    session, error = await app.logged()
    assert error is None
    assert session.tries == 1 and session.peer == good
    assert session.last_error is not None and session.last_error.kind is ErrorKind.CONNECT_REFUSED
    assert app.peer_calls == 2


async def test_failover_exhausted_closes_client(net: Any) -> None:
    first, last = Peer(address=net.refused_address()), Peer(address=net.refused_address())
    app = Recorder(first, last, max_tries=2)
    proxy = await start_proxy(net, app)
    client = await net.connect(proxy.local_addr)

    assert await net.outcome(client) == "eof"
    session, error = await app.logged()
    assert error is not None and error.kind is ErrorKind.CONNECT_REFUSED
    assert str(last.address) in str(error)
    assert session.tries == 2 and app.peer_calls == 2
    assert session.peer is None


async def test_fail_to_connect_can_stop_failover(net: Any) -> None:
    class NoRetry(Recorder):
        def fail_to_connect(self, session: L4Session, peer: Peer, error: ProxyError) -> ProxyError:
            self.failed_peer = peer
            error.retry = False
            return error

    origin = await net.origin(net.echo)
    refused = Peer(address=net.refused_address())
    app = NoRetry(refused, origin.peer())
    proxy = await start_proxy(net, app)
    client = await net.connect(proxy.local_addr)

    assert await net.outcome(client) == "eof"
    session, error = await app.logged()
    assert error is not None and error.kind is ErrorKind.CONNECT_REFUSED and error.retry is False
    assert app.failed_peer == refused
    assert app.peer_calls == 1 and session.tries == 1
    assert origin.count == 0


async def test_connection_filter_refuses_client(net: Any) -> None:
    origin = await net.origin(net.echo)
    app = Recorder(origin.peer(), allow=False)
    proxy = await start_proxy(net, app)
    client = await net.connect(proxy.local_addr)

    assert await net.outcome(client) == "eof"
    session, error = await app.logged()
    assert error is not None and error.kind is ErrorKind.ACCESS_DENIED
    assert app.peer_calls == 0 and origin.count == 0
    assert app.filtered == [client.getsockname()]


async def test_upstream_peer_exception_keeps_listener_serving(net: Any, splice: str) -> None:
    class Broken(Recorder):
        async def upstream_peer(self, session: L4Session) -> Peer:
            self.peer_calls += 1
            if self.peer_calls == 1:
                raise RuntimeError("selector bug")
            return self.peers[0]

    origin = await net.origin(net.echo)
    app = Broken(origin.peer())
    proxy = await start_proxy(net, app, splice=splice)
    broken = await net.connect(proxy.local_addr)
    assert await net.outcome(broken) == "eof"
    _, error = await app.logged()
    assert error is not None and error.kind is ErrorKind.INTERNAL and "selector bug" in str(error)

    client = await net.connect(proxy.local_addr)
    await roundtrip(net, client, b"next one works")


async def test_new_ctx_exception_closes_only_that_client(net: Any) -> None:
    class BrokenCtx(Recorder):
        ctx_calls = 0

        def new_ctx(self) -> Any:
            self.ctx_calls += 1
            if self.ctx_calls == 1:
                raise RuntimeError("ctx bug")
            return None

    origin = await net.origin(net.echo)
    app = BrokenCtx(origin.peer())
    proxy = await start_proxy(net, app, max_connections=1)  # a leaked slot would block the next client
    broken = await net.connect(proxy.local_addr)
    assert await net.outcome(broken) == "eof"

    client = await net.connect(proxy.local_addr)
    await roundtrip(net, client, b"next one works")
    assert app.peer_calls == 1


# PROXY protocol, accepting -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "source"),
    [
        (V1_HEADER, ("192.0.2.1", 56324)),
        (V2_HEADER, ("203.0.113.7", 40000)),
        (V2_HEADER_V6, ("2001:db8::1", 1234)),
    ],
    ids=["v1", "v2", "v2-ipv6"],
)
async def test_accept_proxy_header(net: Any, splice: str, header: bytes, source: tuple) -> None:
    origin = await net.origin(net.echo)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, splice=splice, accept_proxy=True)
    client = await net.connect(proxy.local_addr)
    payload = b"payload right after the header " + os.urandom(1000)
    await net.send_all(client, header + payload)  # one send: header and payload share a packet

    assert await net.recv_exactly(client, len(payload)) == payload
    await roundtrip(net, client, b"and later bytes too")
    client.shutdown(socket.SHUT_WR)
    assert await net.outcome(client) == "eof"
    session, error = await app.logged()
    assert error is None
    assert app.filtered == [source] and session.client_addr == source
    assert session.socket_peer == client.getsockname()
    assert session.bytes_up == len(payload) + len(b"and later bytes too")


async def test_accept_proxy_header_in_pieces(net: Any) -> None:
    origin = await net.origin(net.echo)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, accept_proxy=True)
    client = await net.connect(proxy.local_addr)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await net.send_all(client, V2_HEADER[:10])
    await asyncio.sleep(0)  # let the proxy see the incomplete header first
    await net.send_all(client, V2_HEADER[10:] + b"payload")

    assert await net.recv_exactly(client, 7) == b"payload"
    assert app.filtered == [("203.0.113.7", 40000)]


async def test_malformed_proxy_header_closes_only_that_connection(net: Any) -> None:
    origin = await net.origin(net.echo)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, accept_proxy=True)
    good = await net.connect(proxy.local_addr)
    await net.send_all(good, V1_HEADER)
    await roundtrip(net, good, b"good before")

    bad = await net.connect(proxy.local_addr)
    await net.send_all(bad, b"GET / HTTP/1.1\r\n")
    assert await net.outcome(bad) in ("eof", "reset")
    _, error = await app.logged()
    assert error is not None and error.kind is ErrorKind.PROTOCOL_ERROR

    await roundtrip(net, good, b"good after")
    assert origin.count == 1


async def test_missing_proxy_header_times_out(net: Any) -> None:
    origin = await net.origin(net.echo)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, accept_proxy=True, proxy_header_timeout=0.3)
    client = await net.connect(proxy.local_addr)

    assert await net.outcome(client) == "eof"
    _, error = await app.logged()
    assert error is not None and error.kind is ErrorKind.READ_TIMEOUT
    assert app.peer_calls == 0


async def test_untrusted_client_served_without_header(net: Any) -> None:
    origin = await net.origin(net.echo)
    app = Recorder(origin.peer())
    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    proxy = await start_proxy(net, app, accept_proxy=True, trusted=trusted)
    client = await net.connect(proxy.local_addr)

    # an untrusted client's PROXY line is not honoured: it is payload like any other byte
    await roundtrip(net, client, V1_HEADER + b"plain bytes")
    client.shutdown(socket.SHUT_WR)
    assert await net.outcome(client) == "eof"
    session, error = await app.logged()
    assert error is None
    assert session.client_addr == client.getsockname() and session.proxy_header is None


async def test_trusted_client_must_send_header(net: Any) -> None:
    origin = await net.origin(net.echo)
    app = Recorder(origin.peer())
    trusted = [ipaddress.ip_network("127.0.0.0/8")]
    proxy = await start_proxy(net, app, accept_proxy=True, trusted=trusted)
    client = await net.connect(proxy.local_addr)
    await net.send_all(client, V2_HEADER)
    await roundtrip(net, client, b"data")
    client.shutdown(socket.SHUT_WR)
    assert await net.outcome(client) == "eof"
    session, _ = await app.logged()
    assert session.client_addr == ("203.0.113.7", 40000)


# PROXY protocol, sending ---------------------------------------------------------------------
def header_reader(net: Any, payload_size: int, seen: list) -> Any:
    """Origin handler: parse a PROXY header, read ``payload_size`` bytes, answer "ok"."""

    async def handler(conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        data = b""
        while True:
            chunk = await loop.sock_recv(conn, 65536)
            assert chunk, "EOF before a complete PROXY header"
            data += chunk
            header, used = proxy_protocol.parse(data)
            if header is not None:
                break
        rest = data[used:]
        rest += await net.recv_exactly(conn, payload_size - len(rest))
        seen.append((header, rest))
        await net.send_all(conn, b"ok")

    return handler


@pytest.mark.parametrize("version", [1, 2])
async def test_send_proxy_header(net: Any, splice: str, version: int) -> None:
    payload = os.urandom(300 * 1024)
    seen: list = []
    origin = await net.origin(header_reader(net, len(payload), seen))
    app = Recorder(origin.peer(proxy_protocol=version))
    proxy = await start_proxy(net, app, splice=splice)
    client = await net.connect(proxy.local_addr)
    sender = asyncio.get_running_loop().create_task(net.send_all(client, payload))

    assert await net.recv_to_eof(client) == b"ok"
    await sender
    [(header, got)] = seen
    assert header.version == version
    assert header.src == client.getsockname()
    assert header.dst == proxy.local_addr
    assert got == payload


async def test_proxy_header_chain_keeps_original_source(net: Any, splice: str) -> None:
    payload = b"through two proxies"
    seen: list = []
    origin = await net.origin(header_reader(net, len(payload), seen))
    app = Recorder(origin.peer(proxy_protocol=1))
    proxy = await start_proxy(net, app, splice=splice, accept_proxy=True)
    client = await net.connect(proxy.local_addr)
    await net.send_all(client, V2_HEADER + payload)

    assert await net.recv_to_eof(client) == b"ok"
    [(header, got)] = seen
    assert header.version == 1
    assert header.src == ("203.0.113.7", 40000) and header.dst == ("198.51.100.2", 443)
    assert got == payload


# Unix-domain sockets --------------------------------------------------------------------------
@pytest.mark.parametrize(("unix_listener", "unix_upstream"), [(False, True), (True, False), (True, True)], ids=["upstream", "listener", "both"])
async def test_unix_sockets(net: Any, splice: str, tmp_path: Path, unix_listener: bool, unix_upstream: bool) -> None:
    origin = await net.origin(net.echo, path=str(tmp_path / "origin.sock") if unix_upstream else "")
    app = Recorder(origin.peer())
    listen = Address(path=str(tmp_path / "proxy.sock")) if unix_listener else None
    proxy = await start_proxy(net, app, splice=splice, address=listen)
    client = await net.connect(proxy.local_addr)
    await roundtrip(net, client, os.urandom(1 * MiB))
    client.shutdown(socket.SHUT_WR)
    assert await net.outcome(client) == "eof"
    session, error = await app.logged()
    assert error is None and session.bytes_up == session.bytes_down == 1 * MiB
    assert session.peer.address == origin.address


# graceful drain -------------------------------------------------------------------------------
async def test_drain_lets_live_connection_finish(net: Any, splice: str) -> None:
    origin = await net.origin(net.echo)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, splice=splice)
    address = proxy.local_addr
    client = await net.connect(address)
    await roundtrip(net, client, b"before drain")

    proxy.stop_accepting()
    draining = asyncio.get_running_loop().create_task(proxy.drain(10.0))
    await roundtrip(net, client, b"during drain")
    with pytest.raises(ConnectionRefusedError):
        await net.connect(address)
    assert not draining.done()

    client.shutdown(socket.SHUT_WR)
    assert await net.outcome(client) == "eof"
    async with asyncio.timeout(5):
        await draining
    _, error = await app.logged()
    assert error is None


async def test_drain_closes_connection_at_deadline(net: Any, splice: str) -> None:
    origin = await net.origin(net.echo)
    app = Recorder(origin.peer())
    proxy = await start_proxy(net, app, splice=splice)
    client = await net.connect(proxy.local_addr)
    await roundtrip(net, client, b"before drain")

    proxy.stop_accepting()
    await proxy.drain(0.3)
    assert not proxy.connections
    assert await net.outcome(client) == "eof"
    await app.logged()

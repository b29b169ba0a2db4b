"""Connector end to end on loopback: TCP and Unix peers, errors, options, CONNECT tunnels."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from ferryman.errors import ErrorKind, ErrorSource, ProxyError
from ferryman.net.addr import Address
from ferryman.net.connect import (
    IP_BIND_ADDRESS_NO_PORT,
    MAX_CONNECT_HEAD,
    Connector,
    HttpConnectProxy,
    Peer,
    TcpKeepalive,
    tune_socket,
)

LOCAL = "127.0.0.1"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[object]]], object]:
    """Run a test coroutine on the parametrized loop, bounded in time."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(main: Callable[[], Awaitable[object]]) -> object:
        async def bounded() -> object:
            async with asyncio.timeout(10):
                return await main()

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(bounded())

    return runner


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        await _close(writer)


@contextlib.asynccontextmanager
async def serve(handler: Handler, path: str = "", host: str = LOCAL) -> AsyncIterator[tuple[Address, list]]:
    """A server on an ephemeral port (or a Unix path); yields its address and peer names."""
    peers: list = []
    tasks: list[asyncio.Task] = []

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        peers.append(writer.get_extra_info("peername"))
        try:
            await handler(reader, writer)
        finally:
            await _close(writer)

    if path:
        server = await asyncio.start_unix_server(wrapped, path)
        address = Address(path=path)
    else:
        server = await asyncio.start_server(wrapped, host, 0)
        address = Address(host=host, port=server.sockets[0].getsockname()[1])
    try:
        yield address, peers
    finally:
        server.close()
        await server.wait_closed()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def exchange(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` and read back as many bytes."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, data)
    got = b""
    while len(got) < len(data):
        chunk = await loop.sock_recv(sock, 65536)
        assert chunk, "peer closed early"
        got += chunk
    return got


async def connect_error(peer: Peer) -> ProxyError:
    with pytest.raises(ProxyError) as info:
        await Connector().connect(peer)
    return info.value


def refused_port() -> socket.socket:
    """A bound but not listening socket: connecting to its port is refused."""
    sock = socket.socket()
    sock.bind((LOCAL, 0))
    return sock


# --- direct TCP / Unix ------------------------------------------------------------------


def test_connect_and_data_flows(run) -> None:
    async def main() -> None:
        async with serve(_echo) as (address, peers):
            sock = await Connector().connect(Peer(address, connect_timeout=2))
            with sock:
                assert not sock.getblocking()
                assert await exchange(sock, b"ping" * 1000) == b"ping" * 1000
                assert peers == [sock.getsockname()]

    run(main)


def test_socket_wraps_into_a_stream(run) -> None:
    async def main() -> None:
        async with serve(_echo) as (address, _):
            sock = await Connector().connect(Peer(address))
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"hello"
            await _close(writer)

    run(main)


def test_refused_names_the_peer(run) -> None:
    with refused_port() as blocker:
        port = blocker.getsockname()[1]

        async def main() -> ProxyError:
            return await connect_error(Peer(Address(LOCAL, port), connect_timeout=2))

        err = run(main)
    assert err.kind is ErrorKind.CONNECT_REFUSED
    assert err.source is ErrorSource.UPSTREAM
    assert err.retry is True
    assert isinstance(err.__cause__, ConnectionRefusedError)
    assert f"127.0.0.1:{port}" in err.context
    assert f"127.0.0.1:{port}" in str(err)


def test_custom_name_in_errors(run) -> None:
    with refused_port() as blocker:
        port = blocker.getsockname()[1]

        async def main() -> ProxyError:
            return await connect_error(Peer(Address(LOCAL, port), name="api#1"))

        err = run(main)
    assert "api#1" in err.context


def test_connect_timeout(run) -> None:
    """A listener with backlog 0 and a full accept queue drops further SYNs (Linux),
    so a connect to it hangs until the timeout."""
    with socket.socket() as listener:
        listener.bind((LOCAL, 0))
        listener.listen(0)
        address = listener.getsockname()
        with contextlib.ExitStack() as stack:
            stack.enter_context(socket.create_connection(address, timeout=2))
            for _ in range(2):
                extra = stack.enter_context(socket.socket())
                extra.setblocking(False)
                extra.connect_ex(address)

            async def main() -> ProxyError:
                return await connect_error(Peer(Address(*address), connect_timeout=0.2))

            err = run(main)
    assert err.kind is ErrorKind.CONNECT_TIMEOUT
    assert err.retry is True
    assert f"127.0.0.1:{address[1]}" in err.context
    assert "0.2s" in err.context


def test_bind_to_source_address(run) -> None:
    async def main() -> None:
        async with serve(_echo) as (address, peers):
            peer = Peer(address, bind_to=Address("127.0.0.2", 0))
            with await Connector().connect(peer) as sock:
                assert sock.getsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT) == 1
                assert await exchange(sock, b"x") == b"x"
                source = sock.getsockname()
                assert source[0] == "127.0.0.2" and source[1] != 0
                assert peers == [source]

    run(main)


def test_bind_to_foreign_address_fails_before_connect(run) -> None:
    async def main() -> tuple[ProxyError, list]:
        async with serve(_echo) as (address, peers):
            err = await connect_error(Peer(address, bind_to=Address("192.0.2.1", 0)))
            return err, peers

    err, peers = run(main)
    assert err.kind is ErrorKind.BIND_ERROR
    assert err.retry is False
    assert "192.0.2.1" in err.context
    assert isinstance(err.__cause__, OSError)
    assert peers == []


def test_bind_to_other_family_is_a_bind_error(run) -> None:
    async def main() -> ProxyError:
        return await connect_error(Peer(Address(LOCAL, 9), bind_to=Address("::1", 0)))

    err = run(main)
    assert err.kind is ErrorKind.BIND_ERROR and err.retry is False


def test_host_name_is_resolved(run) -> None:
    async def main() -> None:
        async with serve(_echo) as (address, _):
            peer = Peer(Address("localhost", address.port), bind_to=Address(LOCAL, 0))
            with await Connector().connect(peer) as sock:
                assert sock.getpeername() == (LOCAL, address.port)
                assert await exchange(sock, b"dns") == b"dns"

    run(main)


def test_unix_socket_peer(run, tmp_path: Path) -> None:
    path = str(tmp_path / "up.sock")

    async def main() -> None:
        async with serve(_echo, path=path) as (address, _):
            peer = Peer(address, tcp_keepalive=TcpKeepalive(10, 5, 3))  # ignored for AF_UNIX
            with await Connector().connect(peer) as sock:
                assert sock.family == socket.AF_UNIX
                assert await exchange(sock, b"unix") == b"unix"

    run(main)


def test_missing_unix_path(run, tmp_path: Path) -> None:
    path = str(tmp_path / "missing.sock")

    async def main() -> ProxyError:
        return await connect_error(Peer(Address(path=path)))

    err = run(main)
    assert err.kind is ErrorKind.CONNECT_ERROR
    assert err.retry is True
    assert f"unix socket path {path} does not exist" in err.context
    assert isinstance(err.__cause__, FileNotFoundError)


def test_socket_options(run) -> None:
    async def main() -> None:
        async with serve(_echo) as (address, _):
            connector = Connector()
            keepalive = TcpKeepalive(idle=30, interval=5.4, count=4)
            with await connector.connect(Peer(address, tcp_keepalive=keepalive)) as sock:
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
            with await connector.connect(Peer(address, nodelay=False)) as sock:
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0

    run(main)


def test_tune_socket_clamps_keepalive() -> None:
    with socket.socket() as sock:
        tune_socket(sock, keepalive=TcpKeepalive(idle=0.2, interval=0, count=1000))
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 127
    with socket.socket(socket.AF_UNIX) as sock:
        tune_socket(sock, keepalive=TcpKeepalive(1, 1, 1))  # no TCP options, no error


# --- HTTP CONNECT tunnels ---------------------------------------------------------------


class ConnectProxy:
    """An in-test CONNECT proxy: records each request head and answers with ``behaviour``."""

    def __init__(self, behaviour: Callable[..., Awaitable[None]]) -> None:
        self.behaviour = behaviour
        self.heads: list[bytes] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.heads.append(await reader.readuntil(b"\r\n\r\n"))
        await self.behaviour(reader, writer)


def answer(data: bytes) -> Callable[..., Awaitable[None]]:
    """Send ``data``, then wait for the client to go away."""

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()

    return behaviour


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        await _close(writer)


def tunnel(origin: Address, early: bytes) -> Callable[..., Awaitable[None]]:
    """Answer 200 in two writes with ``early`` bytes right behind the head, then tunnel."""

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(b"HTTP/1.1 200 Connection Established\r\n")
        await writer.drain()
        writer.write(b"Via: 1.1 test\r\nContent-Length: 0\r\n\r\n" + early)
        await writer.drain()
        up_reader, up_writer = await asyncio.open_connection(origin.host, origin.port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return behaviour


def via(proxy_address: Address, target: Address, **peer: object) -> Peer:
    connect = HttpConnectProxy(
        proxy_address, target.host, target.port, headers=((b"Proxy-Authorization", b"Basic dTpw"),)
    )
    return Peer(target, proxy=connect, **peer)  # type: ignore[arg-type]


def test_connect_tunnel_data_flows_and_early_bytes_survive(run) -> None:
    early = b"greeting-from-the-far-side"

    async def main() -> None:
        async with serve(_echo) as (origin, origin_peers):
            proxy = ConnectProxy(tunnel(origin, early))
            async with serve(proxy) as (proxy_address, _):
                peer = via(proxy_address, origin, total_connect_timeout=5)
                sock = await Connector().connect(peer)
                reader, writer = await asyncio.open_connection(sock=sock)
                assert await reader.readexactly(len(early)) == early
                writer.write(b"through the tunnel")
                assert await reader.readexactly(18) == b"through the tunnel"
                await _close(writer)
        authority = f"127.0.0.1:{origin.port}".encode()
        assert proxy.heads == [
            b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority
            + b"\r\nProxy-Authorization: Basic dTpw\r\n\r\n"
        ]
        assert len(origin_peers) == 1

    run(main)


def test_connect_refused_by_proxy_status(run) -> None:
    async def main() -> tuple[ProxyError, Address]:
        response = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
        async with serve(ConnectProxy(answer(response))) as (proxy_address, _):
            err = await connect_error(via(proxy_address, Address("10.0.0.1", 443)))
            return err, proxy_address

    err, proxy_address = run(main)
    assert err.kind is ErrorKind.PROXY_FAILURE and err.retry is True
    assert err.context == (
        f"CONNECT to 10.0.0.1:443 via {proxy_address} refused: 407 Proxy Authentication Required"
    )


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    ],
    ids=["chunked", "content-length"],
)
def test_connect_2xx_with_a_body_is_refused(run, response: bytes) -> None:
    async def main() -> ProxyError:
        async with serve(ConnectProxy(answer(response))) as (proxy_address, _):
            return await connect_error(via(proxy_address, Address("10.0.0.1", 443)))

    err = run(main)
    assert err.kind is ErrorKind.PROXY_FAILURE
    assert "no body" in err.context


def test_connect_proxy_closes_mid_head(run) -> None:
    async def close_mid_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 Conn")
        await writer.drain()

    async def main() -> ProxyError:
        async with serve(ConnectProxy(close_mid_head)) as (proxy_address, _):
            return await connect_error(via(proxy_address, Address("10.0.0.1", 443)))

    err = run(main)
    assert err.kind is ErrorKind.PROXY_FAILURE and err.retry is True
    assert "closed the connection" in err.context


def test_connect_proxy_head_too_large(run) -> None:
    response = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * MAX_CONNECT_HEAD + b"\r\n\r\n"

    async def main() -> ProxyError:
        async with serve(ConnectProxy(answer(response))) as (proxy_address, _):
            return await connect_error(via(proxy_address, Address("10.0.0.1", 443)))

    err = run(main)
    assert err.kind is ErrorKind.PROXY_FAILURE
    assert "exceeds" in err.context


def test_connect_proxy_malformed_head(run) -> None:
    async def main() -> ProxyError:
        async with serve(ConnectProxy(answer(b"SSH-2.0-OpenSSH\r\n\r\n"))) as (proxy_address, _):
            return await connect_error(via(proxy_address, Address("10.0.0.1", 443)))

    err = run(main)
    assert err.kind is ErrorKind.PROXY_FAILURE
    assert "malformed" in err.context


def test_connect_proxy_that_never_answers_times_out(run) -> None:
    async def main() -> ProxyError:
        async with serve(ConnectProxy(answer(b""))) as (proxy_address, _):
            return await connect_error(
                via(proxy_address, Address("10.0.0.1", 443), total_connect_timeout=0.2)
            )

    err = run(main)
    assert err.kind is ErrorKind.CONNECT_TIMEOUT and err.retry is True
    assert "10.0.0.1:443" in err.context and "0.2s" in err.context


def test_proxy_unreachable_names_proxy_and_peer(run) -> None:
    with refused_port() as blocker:
        proxy_address = Address(LOCAL, blocker.getsockname()[1])

        async def main() -> ProxyError:
            return await connect_error(via(proxy_address, Address("10.0.0.1", 443)))

        err = run(main)
    assert err.kind is ErrorKind.CONNECT_REFUSED
    assert str(proxy_address) in err.context and "10.0.0.1:443" in err.context


@pytest.mark.parametrize(
    "kwargs",
    [
        {"host": "a\r\nX: y"},
        {"port": 0},
        {"headers": ((b"X-Bad", b"v\r\nInjected: 1"),)},
        {"headers": ((b"Bad Name", b"v"),)},
    ],
)
def test_connect_proxy_rejects_injection(kwargs: dict) -> None:
    args = {"address": Address(LOCAL, 3128), "host": "example.com", "port": 443} | kwargs
    with pytest.raises(ValueError):
        HttpConnectProxy(**args)


def test_connect_request_brackets_ipv6() -> None:
    proxy = HttpConnectProxy(Address(LOCAL, 3128), "::1", 443)
    assert proxy.request() == b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n"

"""Shared end-to-end pieces: ``async def`` tests on uvloop, loopback origins and clients.

An ``async def`` test runs on a fresh uvloop loop (the production loop), bounded by
``TEST_TIMEOUT``. The ``net`` fixture hands out origins, client sockets and cleanups that
are all closed inside the test's loop before it stops, so nothing leaks into the next test.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import socket
import struct
import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvloop

from ferryman.net.addr import Address, parse_address
from ferryman.net.connect import Peer
from ferryman.net.listener import bind_socket
from support.process import HttpOrigin

TEST_TIMEOUT = 30.0
CLEANUP_TIMEOUT = 5.0

Handler = Callable[[socket.socket], Awaitable[Any]]
SockAddr = Address | tuple | str


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests on uvloop; close their ``net`` fixture inside the loop."""
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    nets = [value for value in kwargs.values() if isinstance(value, Net)]

    async def main() -> None:
        try:
            async with asyncio.timeout(TEST_TIMEOUT):
                await func(**kwargs)
        finally:
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                for net in nets:
                    await net.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    gc.collect()  # unclosed-resource warnings belong to the test that leaked
    return True


# socket I/O --------------------------------------------------------------------------------------------
async def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes; EOF before that is an assertion failure."""
    loop = asyncio.get_running_loop()
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = await loop.sock_recv_into(sock, view[got:])
        assert n, f"EOF after {got} of {size} bytes"
        got += n
    return bytes(buf)


async def recv_to_eof(sock: socket.socket) -> bytes:
    """Read until the peer's FIN."""
    loop = asyncio.get_running_loop()
    chunks = []
    while data := await loop.sock_recv(sock, 256 * 1024):
        chunks.append(data)
    return b"".join(chunks)


async def outcome(sock: socket.socket) -> str:
    """How the peer ends the connection: "eof", "reset", or "data" if bytes arrive."""
    loop = asyncio.get_running_loop()
    try:
        data = await loop.sock_recv(sock, 65536)
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    return "data" if data else "eof"


async def send_all(sock: socket.socket, data: bytes, *, eof: bool = False) -> None:
    """Send ``data``; with ``eof`` then half-close (SHUT_WR)."""
    await asyncio.get_running_loop().sock_sendall(sock, data)
    if eof:
        sock.shutdown(socket.SHUT_WR)


def reset_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def echo(conn: socket.socket) -> None:
    """Origin handler: send back whatever arrives, until EOF."""
    loop = asyncio.get_running_loop()
    while data := await loop.sock_recv(conn, 65536):
        await loop.sock_sendall(conn, data)


# origins and clients --------------------------------------------------------------------------
class Origin:
    """A loopback server. Each accepted socket goes to ``handler`` (one task each) or,
    without a handler, to the ``accepted`` queue for the test to script."""

    def __init__(self, sock: socket.socket, handler: Handler | None) -> None:
        self.sock = sock
        name = sock.getsockname()
        self.address = Address(path=name) if isinstance(name, str) else Address(host=name[0], port=name[1])
        self.handler = handler
        self.accepted: asyncio.Queue[socket.socket] = asyncio.Queue()
        self.count = 0
        self.conns: list[socket.socket] = []
        self.errors: list[BaseException] = []
        self._tasks: set[asyncio.Task] = set()
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop())

    def peer(self, **options: Any) -> Peer:
        return Peer(address=self.address, **options)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            conn.setblocking(False)
            self.count += 1
            self.conns.append(conn)
            if self.handler is None:
                self.accepted.put_nowait(conn)
            else:
                task = loop.create_task(self._run(conn))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, conn: socket.socket) -> None:
        try:
            await self.handler(conn)  # type: ignore[misc]
        except (ConnectionResetError, BrokenPipeError):
            pass
        except Exception as exc:  # reported by aclose(): an origin's assertion fails the test
            self.errors.append(exc)
        finally:
            conn.close()

    async def next_conn(self, timeout: float = 5.0) -> socket.socket:
        async with asyncio.timeout(timeout):
            return await self.accepted.get()

    async def aclose(self) -> None:
        tasks = [self._accepting, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in self.conns:
            conn.close()
        self.sock.close()
        if self.errors:
            raise self.errors[0]


class Net:
    """Loopback resources of one test; everything is closed by :meth:`aclose`."""

    recv_exactly = staticmethod(recv_exactly)
    recv_to_eof = staticmethod(recv_to_eof)
    outcome = staticmethod(outcome)
    send_all = staticmethod(send_all)
    reset_close = staticmethod(reset_close)
    echo = staticmethod(echo)

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []
        self._cleanups: list[Callable[[], Awaitable[None]]] = []

    def track(self, sock: socket.socket) -> socket.socket:
        self._sockets.append(sock)
        return sock

    def defer(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Run ``cleanup`` at the end of the test (last registered, first run)."""
        self._cleanups.append(cleanup)

    async def origin(self, handler: Handler | None = None, *, path: str = "") -> Origin:
        sock = bind_socket(Address(path=path) if path else parse_address("127.0.0.1:0"))
        try:
            origin = Origin(sock, handler)
        except BaseException:
            sock.close()
            raise
        self.defer(origin.aclose)
        return origin

    async def connect(self, address: SockAddr, *, rcvbuf: int | None = None) -> socket.socket:
        """A connected non-blocking client socket (``rcvbuf`` fixes SO_RCVBUF first)."""
        if isinstance(address, Address):
            address = address.sockaddr
        family = socket.AF_UNIX if isinstance(address, str) else (socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        sock = self.track(socket.socket(family, socket.SOCK_STREAM))
        sock.setblocking(False)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await asyncio.get_running_loop().sock_connect(sock, address)
        return sock

    def refused_address(self) -> Address:
        """A loopback port that is bound but not listening: connecting is refused."""
        sock = self.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.bind(("127.0.0.1", 0))
        host, port = sock.getsockname()
        return Address(host=host, port=port)

    async def aclose(self) -> None:
        errors: list[BaseException] = []
        for sock in self._sockets:
            sock.close()
        while self._cleanups:
            try:
                await self._cleanups.pop()()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def net() -> Net:
    return Net()


@pytest.fixture
def origins() -> Iterator[tuple[HttpOrigin, HttpOrigin]]:
    """Two origins that answer their own name (``a``, ``b``): traffic shows which one served."""
    pair = HttpOrigin("a"), HttpOrigin("b")
    yield pair
    for origin in pair:
        origin.close()


_prefixes = itertools.count(1)


@pytest.fixture
def prefix() -> str:
    """An etcd key prefix of its own for each test (the tests of a module share one etcd)."""
    return f"/t{next(_prefixes)}/ferryman"

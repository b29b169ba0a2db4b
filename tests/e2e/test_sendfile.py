"""send_file end to end: a real temp file, a real loopback TCP connection, a slow reader;
and the static filter's big files through the HTTP service (Session.respond_file).

The reader takes small pieces and, after each, pauses until the sender is blocked again
(waiting in the reactor after EAGAIN) or done, bounded by a deadline: so the socket really
fills up over and over, and the bytes must still arrive intact and in order.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support.http_proxy import App, Client, get, start_proxy, stop

from ferryman.filters.builtin.static import Static
from ferryman.net.addr import parse_address
from ferryman.net.connect import Peer
from ferryman.net.reactor import Reactor
from ferryman.net.sendfile import send_file

if TYPE_CHECKING:
    from .conftest import Net

FILE_SIZE = 3 * 1024 * 1024 + 12345
PIECE = 16 * 1024
STEP_DEADLINE = 5.0


class CountingReactor(Reactor):
    """A real reactor that also tells whether a sender is waiting for the socket to drain."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.waits = 0
        self.waiting = False

    async def wait_writable_once(self, fd: int, deadline: float | None) -> None:
        self.waits += 1
        self.waiting = True
        try:
            await super().wait_writable_once(fd, deadline)
        finally:
            self.waiting = False


@pytest.fixture
def data_file(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """An open fd of a few MiB of incompressible, position-dependent bytes."""
    content = os.urandom(FILE_SIZE)
    path = tmp_path / "payload.bin"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd, content
    finally:
        os.close(fd)


async def pair(net: Net, *, sndbuf: int = 32 * 1024, rcvbuf: int = 32 * 1024) -> tuple[socket.socket, socket.socket]:
    """(sender, receiver): a connected loopback pair with small buffers; the sender is the
    accepted, non-blocking side."""
    origin = await net.origin()
    receiver = await net.connect(origin.address, rcvbuf=rcvbuf)
    sender = await origin.next_conn()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    assert not sender.getblocking()
    return sender, receiver


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` on the loop until true; fail after STEP_DEADLINE."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STEP_DEADLINE
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


async def slow_read(receiver: socket.socket, size: int, reactor: CountingReactor, sender: asyncio.Task) -> bytes:
    """Read ``size`` bytes in small pieces, pausing after each until the sender is blocked
    again (or finished)."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while len(buf) < size:
        data = await loop.sock_recv(receiver, min(PIECE, size - len(buf)))
        assert data, f"EOF after {len(buf)} of {size} bytes"
        buf += data
        await until(lambda: reactor.waiting or sender.done(), "the sender to fill the socket again")
    return bytes(buf)


async def test_slow_reader_gets_identical_bytes(net: Net, data_file: tuple[int, bytes]) -> None:
    file_fd, content = data_file
    loop = asyncio.get_running_loop()
    reactor = CountingReactor(loop)
    try:
        sender, receiver = await pair(net)
        offset, count = 777, FILE_SIZE - 777 - 1000
        task = loop.create_task(send_file(sender.fileno(), file_fd, offset, count, reactor))
        received = await slow_read(receiver, count, reactor, task)
        assert await task == count
        assert received == content[offset:offset + count]
        assert reactor.waits > 10  # the socket really filled up (EAGAIN), many times
        assert os.lseek(file_fd, 0, os.SEEK_CUR) == 0  # the file offset is not moved
        sender.shutdown(socket.SHUT_WR)
        assert await net.recv_to_eof(receiver) == b""  # nothing beyond count
    finally:
        reactor.close()


async def test_default_reactor_and_fast_reader(net: Net, data_file: tuple[int, bytes]) -> None:
    file_fd, content = data_file
    sender, receiver = await pair(net, sndbuf=256 * 1024, rcvbuf=256 * 1024)
    task = asyncio.get_running_loop().create_task(send_file(sender.fileno(), file_fd, 0, FILE_SIZE))
    received = await net.recv_exactly(receiver, FILE_SIZE)
    assert await task == FILE_SIZE
    assert received == content


async def test_reader_closing_early_is_an_error_not_a_hang(net: Net, data_file: tuple[int, bytes]) -> None:
    file_fd, _ = data_file
    loop = asyncio.get_running_loop()
    reactor = CountingReactor(loop)
    try:
        sender, receiver = await pair(net)
        task = loop.create_task(send_file(sender.fileno(), file_fd, 0, FILE_SIZE, reactor))
        assert await loop.sock_recv(receiver, PIECE)
        await until(lambda: reactor.waiting, "the sender to block")
        receiver.close()  # unread data in its buffer: the kernel answers with a reset
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(STEP_DEADLINE):
                await task
    finally:
        reactor.close()


async def test_reader_reset_is_an_error(net: Net, data_file: tuple[int, bytes]) -> None:
    file_fd, _ = data_file
    loop = asyncio.get_running_loop()
    reactor = CountingReactor(loop)
    try:
        sender, receiver = await pair(net)
        task = loop.create_task(send_file(sender.fileno(), file_fd, 0, FILE_SIZE, reactor))
        await until(lambda: reactor.waiting, "the sender to block")
        net.reset_close(receiver)
        with pytest.raises(OSError):
            async with asyncio.timeout(STEP_DEADLINE):
                await task
    finally:
        reactor.close()


async def test_stalled_reader_times_out(net: Net, data_file: tuple[int, bytes]) -> None:
    file_fd, _ = data_file
    sender, _receiver = await pair(net)
    with pytest.raises(TimeoutError):
        await send_file(sender.fileno(), file_fd, 0, FILE_SIZE, timeout=0.2)


async def test_file_shorter_than_count_returns_what_was_sent(net: Net, tmp_path: Path) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sender, receiver = await pair(net)
        assert await send_file(sender.fileno(), fd, 40, 500) == 60
        assert await send_file(sender.fileno(), fd, 0, 0) == 0
        sender.shutdown(socket.SHUT_WR)
        assert await net.recv_to_eof(receiver) == b"x" * 60
    finally:
        os.close(fd)


# through the HTTP service: the static filter's big files go out by Session.respond_file --------
class StaticApp(App):
    """An app whose request_filter is the static filter (the upstream is never asked)."""

    def __init__(self, root: Path) -> None:
        super().__init__(Peer(parse_address("127.0.0.1:9")))
        self.files = Static("files", Static.Config(root=str(root)))

    async def request_filter(self, session):  # type: ignore[no-untyped-def]
        return self.files.request_filter(session)


async def test_static_files_over_a_keep_alive_connection(tmp_path: Path) -> None:
    big = os.urandom(FILE_SIZE)
    (tmp_path / "big.bin").write_bytes(big)
    (tmp_path / "small.txt").write_bytes(b"small\n")
    proxy = await start_proxy(StaticApp(tmp_path))
    client = await Client.open(proxy)
    try:
        client.send(get("/big.bin"))
        status, headers, body = await client.response()
        assert (status, headers[b"content-length"]) == (200, b"%d" % FILE_SIZE)
        assert body == big
        client.send(get("/big.bin", b"Range: bytes=1000-2000999\r\n"))
        status, headers, body = await client.response()
        assert (status, headers[b"content-range"]) == (206, b"bytes 1000-2000999/%d" % FILE_SIZE)
        assert body == big[1000:2001000]
        client.send(b"HEAD /big.bin HTTP/1.1\r\nHost: t\r\n\r\n" + get("/small.txt"))
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: %d\r\n" % FILE_SIZE in head
        status, _, body = await client.response()  # the next response follows at once: HEAD sent no body
        assert (status, body) == (200, b"small\n")
    finally:
        await client.close()
        await stop(proxy)

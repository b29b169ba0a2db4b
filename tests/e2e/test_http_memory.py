"""Proxy memory under load, measured on a proxy in its own process (``/proc/PID/status``).

Acceptance: a 1 GiB upload to a slow upstream and a 1 GiB download to a slow client pass
through with proxy RSS staying under 64 MiB above its idle size (backpressure, never a
whole body in memory); 10,000 idle keep-alive connections cost under 20 KiB each.

The slow side reads 256 KiB, then pauses 1 ms: that pacing is the slowness under test
(slower than the proxy moves data, so the proxy's side fills up and only backpressure
keeps it from buffering), not a wait for something to happen. The fast side sends as fast
as the proxy lets it. Each transfer carries a CRC-32 check, so nothing is lost or reordered.
"""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import socket
import subprocess
import sys
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

import httptools
import pytest

import ferryman
from ferryman.http.hooks import ProxyHttp
from ferryman.http.service import HttpProxyService
from ferryman.http.session import Session
from ferryman.net.addr import parse_address
from ferryman.net.connect import Peer
from ferryman.net.listener import bind_socket

if TYPE_CHECKING:
    from .conftest import Net, Origin

MiB = 1 << 20
GiB = 1 << 30
BLOCK = os.urandom(MiB)  # the body is this block GiB // MiB times
BLOCKS = GiB // MiB
CHUNKED_BLOCK = b"%x\r\n" % MiB + BLOCK + b"\r\n"
SLOW_READ = 256 * 1024  # the slow side's read size...
SLOW_PAUSE = 0.001  # ...and its pause after each read
DEADLINE = 25.0  # seconds for one whole transfer, or for opening all the idle connections
RSS_BOUND = 64 * MiB
SAMPLE_INTERVAL = 0.05
MIN_SAMPLES = 20  # a transfer shorter than a second would not show much
IDLE_CONNECTIONS = 10_000
PER_CONNECTION_BOUND = 20 * 1024
OPEN_WAVE = 100  # connections opened at a time: within the proxy's upstream pool (128), no churn
FD_MARGIN = 1024  # descriptors beyond the client sockets (origin side, pipes, the runner)
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
SRC = Path(ferryman.__file__).resolve().parents[1]  # the ferryman this test imports

PROXY_SCRIPT = r'''
"""Forward every request to argv[1]; print the listening address; serve until SIGTERM."""
import resource
import sys

from ferryman.http.hooks import ProxyHttp
from ferryman.http.service import HttpProxyService
from ferryman.net.addr import parse_address
from ferryman.net.connect import Peer
from ferryman.net.listener import bind_socket
from ferryman.server import Server

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Forward(ProxyHttp):
    def __init__(self, peer):
        self.peer = peer

    async def upstream_peer(self, session):
        return self.peer


sock = bind_socket(parse_address("127.0.0.1:0"))
server = Server(grace_period=2.0)
server.add_service(HttpProxyService("memory", sock, Forward(Peer(parse_address(sys.argv[1]), connect_timeout=5.0))))
server.on_started.append(lambda: print("listening on %s:%d" % sock.getsockname()[:2], flush=True))
server.run()
'''


@functools.cache
def expected_crc(blocks: int = BLOCKS) -> int:
    """CRC-32 of a body of ``blocks`` times BLOCK."""
    crc = 0
    for _ in range(blocks):
        crc = zlib.crc32(BLOCK, crc)
    return crc


# the proxy process -------------------------------------------------------------------------------
def rss_of(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class ProxyProcess:
    """The proxy under test, alone in its process, forwarding to ``origin``."""

    def __init__(self, origin: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROXY_SCRIPT, origin],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.pid = self.proc.pid
        self.address: tuple[str, int] = ("", 0)  # known once started
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe: IO[str], lines: list[str]) -> None:
        for line in pipe:  # one at a time: started() polls for the first
            lines.append(line)  # noqa: PERF402

    @property
    def log(self) -> str:
        return "".join(self.out + self.err)

    async def started(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not self.out:
            assert self.proc.poll() is None, f"the proxy exited with {self.proc.returncode}:\n{self.log}"
            assert loop.time() < deadline, f"the proxy did not start:\n{self.log}"
            await asyncio.sleep(0.02)
        host, _, port = self.out[0].split()[-1].rpartition(":")
        self.address = (host, int(port))
        return self.address

    def rss(self) -> int:
        return rss_of(self.pid)

    async def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL; the proxy must not have crashed."""
        loop = asyncio.get_running_loop()
        if self.proc.poll() is None:
            self.proc.terminate()
        deadline = loop.time() + STOP_TIMEOUT
        while self.proc.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
        for reader in self._readers:
            reader.join(STOP_TIMEOUT)
        for pipe in (self.proc.stdout, self.proc.stderr):
            assert pipe is not None
            pipe.close()
        assert "Traceback" not in self.log, self.log


async def start_proxy(net: Net, origin: str) -> ProxyProcess:
    proxy = ProxyProcess(origin)
    net.defer(proxy.stop)
    await proxy.started()
    return proxy


class RssSampler:
    """Samples a process's RSS every ``SAMPLE_INTERVAL`` on a thread; keeps the maximum."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.max = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                rss = rss_of(self.pid)
            except FileNotFoundError:  # the process is gone: the test reports why
                return
            self.max = max(self.max, rss)
            self.samples += 1
            if self._stop.wait(SAMPLE_INTERVAL):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(STOP_TIMEOUT)


# HTTP over plain sockets ----------------------------------------------------------------------
class Message:
    """httptools callbacks: keeps the headers, counts and checksums the body, keeps its first bytes."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.size = 0
        self.crc = 0
        self.start = b""
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value.lower()))

    def on_body(self, data: bytes) -> None:
        if len(self.start) < 256:
            self.start += data[: 256 - len(self.start)]
        self.size += len(data)
        self.crc = zlib.crc32(data, self.crc)

    def on_message_complete(self) -> None:
        self.complete = True


async def receive(sock: socket.socket, parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
                  message: Message, *, read: int = SLOW_READ, pause: float = 0.0) -> None:
    """Read one message; with ``pause``, slowly: ``read`` bytes at most, then a pause."""
    loop = asyncio.get_running_loop()
    buf = bytearray(read)
    view = memoryview(buf)
    while not message.complete:
        n = await loop.sock_recv_into(sock, view)
        assert n, f"EOF after {message.size} body bytes"
        parser.feed_data(view[:n])
        if pause:
            await asyncio.sleep(pause)


async def send_body(sock: socket.socket, framing: str, blocks: int = BLOCKS) -> None:
    """Send a body of ``blocks`` MiB as fast as the proxy takes it."""
    loop = asyncio.get_running_loop()
    block = CHUNKED_BLOCK if framing == "chunked" else BLOCK
    for _ in range(blocks):
        await loop.sock_sendall(sock, block)
    if framing == "chunked":
        await loop.sock_sendall(sock, b"0\r\n\r\n")


def framing_header(framing: str, size: int = GiB) -> bytes:
    return b"Transfer-Encoding: chunked\r\n" if framing == "chunked" else b"Content-Length: %d\r\n" % size


def answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s" % (len(body), body)


# origins --------------------------------------------------------------------------------------------
def slow_reader(read: int = SLOW_READ, pause: float = SLOW_PAUSE, rcvbuf: int | None = None) -> Callable[[socket.socket], Awaitable[None]]:
    async def receive_slowly(conn: socket.socket) -> None:
        """Origin: read the request body slowly; answer with its size and CRC-32. ``rcvbuf``
        caps the connection's receive buffer (else the kernel grows it to megabytes)."""
        if rcvbuf is not None:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        message = Message()
        await receive(conn, httptools.HttpRequestParser(message), message, read=read, pause=pause)
        await asyncio.get_running_loop().sock_sendall(conn, answer(b"%d %08x" % (message.size, message.crc)))

    return receive_slowly


def fast_sender(framing: str, blocks: int = BLOCKS) -> Callable[[socket.socket], Awaitable[None]]:
    async def send(conn: socket.socket) -> None:
        """Origin: read the request head, send ``blocks`` MiB as fast as the proxy takes them."""
        request = Message()
        await receive(conn, httptools.HttpRequestParser(request), request, read=65536)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        await asyncio.get_running_loop().sock_sendall(conn, head + framing_header(framing, blocks * MiB) + b"\r\n")
        await send_body(conn, framing, blocks)

    return send


OK = answer(b"ok")


async def small_answers(conn: socket.socket) -> None:
    """Origin: answer every (bodiless) request on the connection with ``ok``."""
    loop = asyncio.get_running_loop()
    pending = b""
    while data := await loop.sock_recv(conn, 65536):
        pending += data
        while (end := pending.find(b"\r\n\r\n")) >= 0:
            pending = pending[end + 4 :]
            await loop.sock_sendall(conn, OK)


def describe(proxy: ProxyProcess, idle: int, sampler: RssSampler) -> str:
    return (
        f"proxy RSS idle {idle / MiB:.1f} MiB, max {sampler.max / MiB:.1f} MiB "
        f"(+{(sampler.max - idle) / MiB:.1f} MiB, {sampler.samples} samples)\n{proxy.log}"
    )


# 1 GiB each way ----------------------------------------------------------------------------------
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_1_gib_upload_to_a_slow_upstream_keeps_proxy_rss_bounded(net: Net, framing: str) -> None:
    origin = await net.origin(slow_reader())
    proxy = await start_proxy(net, str(origin.address))
    idle = proxy.rss()
    client = await net.connect(proxy.address)
    loop = asyncio.get_running_loop()
    response = Message()
    with RssSampler(proxy.pid) as sampler:
        async with asyncio.timeout(DEADLINE):
            head = b"POST /upload HTTP/1.1\r\nHost: memory.test\r\n" + framing_header(framing) + b"\r\n"
            await loop.sock_sendall(client, head)
            await send_body(client, framing)
            parser = httptools.HttpResponseParser(response)
            await receive(client, parser, response, read=65536)
    assert parser.get_status_code() == 200, response.start
    assert response.start == b"%d %08x" % (GiB, expected_crc())  # every byte reached the origin, in order
    assert sampler.samples >= MIN_SAMPLES, describe(proxy, idle, sampler)
    assert sampler.max - idle < RSS_BOUND, describe(proxy, idle, sampler)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_1_gib_download_to_a_slow_client_keeps_proxy_rss_bounded(net: Net, framing: str) -> None:
    origin = await net.origin(fast_sender(framing))
    proxy = await start_proxy(net, str(origin.address))
    idle = proxy.rss()
    client = await net.connect(proxy.address)
    loop = asyncio.get_running_loop()
    response = Message()
    with RssSampler(proxy.pid) as sampler:
        async with asyncio.timeout(DEADLINE):
            await loop.sock_sendall(client, b"GET /download HTTP/1.1\r\nHost: memory.test\r\n\r\n")
            parser = httptools.HttpResponseParser(response)
            await receive(client, parser, response, pause=SLOW_PAUSE)
    assert parser.get_status_code() == 200
    assert (response.size, response.crc) == (GiB, expected_crc())
    assert sampler.samples >= MIN_SAMPLES, describe(proxy, idle, sampler)
    assert sampler.max - idle < RSS_BOUND, describe(proxy, idle, sampler)


# idle keep-alive connections ------------------------------------------------------------------
GET_OK = b"GET /ok HTTP/1.1\r\nHost: memory.test\r\n\r\n"


async def exchange_ok(sock: socket.socket) -> None:
    """One request on a kept-alive connection, answered 200 ``ok``."""
    await asyncio.get_running_loop().sock_sendall(sock, GET_OK)
    response = Message()
    parser = httptools.HttpResponseParser(response)
    await receive(sock, parser, response, read=4096)
    assert parser.get_status_code() == 200 and response.start == b"ok"
    assert parser.get_http_version() == "1.1" and (b"connection", b"close") not in response.headers


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Raise this process's RLIMIT_NOFILE for the test (restored after); skip if the hard
    limit cannot hold the connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = IDLE_CONNECTIONS + FD_MARGIN
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit is {hard}; {need} descriptors are needed for {IDLE_CONNECTIONS} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_10000_idle_keep_alive_connections_cost_under_20_kib_each(net: Net, many_fds: None) -> None:
    origin = await net.origin(small_answers)
    proxy = await start_proxy(net, str(origin.address))
    loop = asyncio.get_running_loop()

    async def open_one() -> socket.socket:
        sock = net.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.setblocking(False)
        await loop.sock_connect(sock, proxy.address)
        await exchange_ok(sock)
        return sock

    warm = await open_one()  # first-request costs (code paths, the upstream pool) are not per connection
    warm.close()
    fds = open_fds(proxy.pid)
    before = proxy.rss()

    clients: list[socket.socket] = []
    async with asyncio.timeout(DEADLINE):
        while len(clients) < IDLE_CONNECTIONS:
            wave = min(OPEN_WAVE, IDLE_CONNECTIONS - len(clients))
            clients += await asyncio.gather(*(open_one() for _ in range(wave)))
    after = proxy.rss()

    assert open_fds(proxy.pid) >= fds + IDLE_CONNECTIONS  # the proxy really holds them all
    for sock in clients:  # all still open, nothing unsolicited on any of them
        with pytest.raises(BlockingIOError):
            sock.recv(1)
    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(*(exchange_ok(sock) for sock in clients[::100]))  # and they are reusable
    per_connection = (after - before) / IDLE_CONNECTIONS
    assert per_connection < PER_CONNECTION_BOUND, (
        f"{IDLE_CONNECTIONS} idle connections grew the proxy's RSS from {before / MiB:.1f} MiB to "
        f"{after / MiB:.1f} MiB: {per_connection / 1024:.1f} KiB each\n{proxy.log}"
    )


# slow transfers and the upstream read timeout -------------------------------------------------
READ_TIMEOUT = 0.5  # the proxy's upstream_read_timeout in these tests
SLOW_BLOCKS = 16  # MiB; read 64 KiB per 5 ms, so at least 256 x 5 ms = 1.28 s: longer than READ_TIMEOUT


async def in_process_proxy(net: Net, origin: Origin, **options: Any) -> HttpProxyService:
    class Forward(ProxyHttp):
        async def upstream_peer(self, session: Session) -> Peer:
            return origin.peer(connect_timeout=5.0)

    service = HttpProxyService("slow", bind_socket(parse_address("127.0.0.1:0")), Forward(), **options)
    await service.start()

    async def stop() -> None:
        service.stop_accepting()
        await service.drain(1.0)

    net.defer(stop)
    return service


@pytest.mark.parametrize("direction", ["upload", "download"])
async def test_a_slow_transfer_longer_than_the_upstream_read_timeout_completes(net: Net, direction: str) -> None:
    """The upstream read timeout bounds an upstream's silence, not a transfer's length: an
    upload the upstream keeps reading and a download the client keeps reading both outlast it.

    The upload's origin caps its receive buffer: the proxy sees an upstream read only when
    its own writes drain, and megabytes of kernel buffers between the two would be real
    silence of more than the timeout at the end of the body (nginx's proxy_read_timeout,
    which starts once the request is sent, would fire there too)."""
    upload = direction == "upload"
    origin = await net.origin(slow_reader(65536, 0.005, rcvbuf=128 * 1024) if upload else fast_sender("content-length", SLOW_BLOCKS))
    proxy = await in_process_proxy(net, origin, upstream_read_timeout=READ_TIMEOUT)
    client = await net.connect(proxy.sock.getsockname())
    loop = asyncio.get_running_loop()
    response = Message()
    parser = httptools.HttpResponseParser(response)
    async with asyncio.timeout(DEADLINE):
        if upload:
            head = b"POST /upload HTTP/1.1\r\nHost: slow.test\r\n" + framing_header("content-length", SLOW_BLOCKS * MiB)
            await loop.sock_sendall(client, head + b"\r\n")
            try:
                await send_body(client, "content-length", SLOW_BLOCKS)
            except ConnectionResetError:
                pass  # the proxy gave up on the upload: the answer it sent first says why
            await receive(client, parser, response, read=65536)
        else:
            await loop.sock_sendall(client, b"GET /download HTTP/1.1\r\nHost: slow.test\r\n\r\n")
            await receive(client, parser, response, read=65536, pause=0.005)
    assert response.complete and parser.get_status_code() == 200, (parser.get_status_code(), response.start)
    if upload:
        assert response.start == b"%d %08x" % (SLOW_BLOCKS * MiB, expected_crc(SLOW_BLOCKS))
    else:
        assert (response.size, response.crc) == (SLOW_BLOCKS * MiB, expected_crc(SLOW_BLOCKS))

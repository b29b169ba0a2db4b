"""UDP proxy end to end on loopback: datagram sizes, reply source, sessions, expiry, limits, balancing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvloop

from ferryman.config.load import load_text
from ferryman.errors import ProxyError
from ferryman.gateway.l4 import build_listener_service
from ferryman.l4.hooks import ProxyL4
from ferryman.l4.session import L4Session
from ferryman.l4.udp import UdpProxyService
from ferryman.net.addr import Address
from ferryman.net.connect import Connector, Peer
from ferryman.net.pump import PipePool
from ferryman.runtime.upstreams import build_upstreams
from support.process import ENV

LOCAL = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 5.0


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[object]]], object]:
    """Run a test coroutine on the parametrized loop, bounded in time."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(main: Callable[[], Awaitable[object]]) -> object:
        async def bounded() -> object:
            async with asyncio.timeout(20):
                return await main()

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(bounded())

    return runner


# --- loopback peers -------------------------------------------------------------------


class EchoOrigin(asyncio.DatagramProtocol):
    """Echo each datagram prefixed with the origin's name; remember who sent what."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.sources: list[tuple[str, int]] = []
        self.payloads: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sources.append(addr)
        self.payloads.append(data)
        assert self.transport is not None
        self.transport.sendto(self.name + data, addr)


class Client(asyncio.DatagramProtocol):
    """A UDP client whose replies (with their source address) land in a queue."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.put_nowait((data, addr))

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    async def reply(self) -> tuple[bytes, tuple[str, int]]:
        async with asyncio.timeout(TIMEOUT):
            return await self.replies.get()

    async def ask(self, data: bytes, addr: tuple[str, int]) -> bytes:
        self.send(data, addr)
        reply, _ = await self.reply()
        return reply


class Harness:
    def __init__(self) -> None:
        self.transports: list[asyncio.BaseTransport] = []
        self.services: list[UdpProxyService] = []

    async def origin(self, name: bytes) -> tuple[EchoOrigin, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(lambda: EchoOrigin(name), local_addr=(LOCAL, 0))
        self.transports.append(transport)
        return protocol, transport.get_extra_info("sockname")

    async def client(self, host: str = LOCAL) -> Client:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(Client, local_addr=(host, 0))
        self.transports.append(transport)
        return protocol

    def serve(self, service: UdpProxyService) -> tuple[str, int]:
        service.start()
        self.services.append(service)
        return service.local_addr

    async def close(self) -> None:
        for service in self.services:
            await service.drain(0)
        for transport in self.transports:
            transport.close()
        await asyncio.sleep(0)  # let the transports' connection_lost callbacks run


@asynccontextmanager
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        await h.close()


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCAL, 0))
    sock.setblocking(False)
    return sock


class Fixed(ProxyL4):
    """Every session to one backend; counts sessions and signals each close."""

    def __init__(self, backend: tuple[str, int]) -> None:
        self.peer = Peer(Address(*backend))
        self.opened = 0
        self.closed: asyncio.Queue[L4Session] = asyncio.Queue()

    async def upstream_peer(self, session: L4Session) -> Peer:
        self.opened += 1
        return self.peer

    async def logging(self, session: L4Session, error: ProxyError | None) -> None:
        self.closed.put_nowait(session)


def gateway_service(text: str, name: str = "dns") -> UdpProxyService:
    """A UDP service built the way ``ferryman run`` builds it, on an ephemeral port."""
    config = load_text(text)
    upstreams = build_upstreams(config)
    cfg = config.listeners[name]
    service = build_listener_service(name, cfg, upstreams[cfg.upstream], pipes=PipePool(), connector=Connector(), sock=udp_socket())
    assert isinstance(service, UdpProxyService)
    return service


# --- data path ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 1400, 65507])
def test_datagrams_come_back_whole_from_the_listener_address(run, size: int) -> None:
    async def main() -> None:
        async with harness() as h:
            origin, origin_addr = await h.origin(b"")
            listen = h.serve(UdpProxyService("dns", udp_socket(), Fixed(origin_addr)))
            client = await h.client()
            payload = bytes(i % 251 for i in range(size))
            client.send(payload, listen)
            reply, source = await client.reply()
            assert reply == payload
            assert source == listen  # the reply leaves from the address the client talked to
            assert origin.payloads == [payload]
            assert origin.sources[0] != client.transport.get_extra_info("sockname")  # type: ignore[union-attr]

    run(main)


def test_datagrams_sent_before_the_session_is_open_are_queued_in_order(run) -> None:
    async def main() -> None:
        async with harness() as h:
            origin, origin_addr = await h.origin(b"")
            listen = h.serve(UdpProxyService("dns", udp_socket(), Fixed(origin_addr)))
            client = await h.client()
            for i in range(5):
                client.send(b"%d" % i, listen)
            replies = [(await client.reply())[0] for _ in range(5)]
            assert sorted(replies) == [b"0", b"1", b"2", b"3", b"4"]
            assert origin.payloads == [b"0", b"1", b"2", b"3", b"4"]  # forwarded in arrival order

    run(main)


def test_each_client_gets_its_own_session_and_upstream_socket(run) -> None:
    async def main() -> None:
        async with harness() as h:
            origin, origin_addr = await h.origin(b"")
            app = Fixed(origin_addr)
            service = UdpProxyService("dns", udp_socket(), app)
            listen = h.serve(service)
            one, two = await h.client(), await h.client()
            for _ in range(3):
                assert await one.ask(b"one", listen) == b"one"
                assert await two.ask(b"two", listen) == b"two"
            assert app.opened == 2
            assert service.relay is not None and len(service.relay.sessions) == 2
            by_source: dict[tuple[str, int], set[bytes]] = {}
            for source, payload in zip(origin.sources, origin.payloads):
                by_source.setdefault(source, set()).add(payload)
            assert sorted(by_source.values(), key=sorted) == [{b"one"}, {b"two"}]

    run(main)


def test_idle_sessions_expire_and_a_later_datagram_opens_a_new_one(run) -> None:
    async def main() -> None:
        async with harness() as h:
            origin, origin_addr = await h.origin(b"")
            app = Fixed(origin_addr)
            service = UdpProxyService("dns", udp_socket(), app, idle_timeout=0.3)
            listen = h.serve(service)
            client = await h.client()
            assert await client.ask(b"a", listen) == b"a"
            assert service.relay is not None and len(service.relay.sessions) == 1
            async with asyncio.timeout(TIMEOUT):
                closed = await app.closed.get()
            assert len(service.relay.sessions) == 0
            assert (closed.bytes_up, closed.bytes_down, closed.last_error) == (1, 1, None)
            assert await client.ask(b"b", listen) == b"b"
            assert app.opened == 2
            assert len(service.relay.sessions) == 1

    run(main)


def test_traffic_keeps_a_session_alive(run) -> None:
    async def main() -> None:
        async with harness() as h:
            _, origin_addr = await h.origin(b"")
            app = Fixed(origin_addr)
            service = UdpProxyService("dns", udp_socket(), app, idle_timeout=0.5)
            listen = h.serve(service)
            client = await h.client()
            loop = asyncio.get_running_loop()
            end = loop.time() + 1.5  # three idle periods
            while loop.time() < end:
                assert await client.ask(b"x", listen) == b"x"
                await asyncio.sleep(0.05)  # pacing the traffic, not synchronisation
            assert app.opened == 1 and app.closed.empty()

    run(main)


def test_max_sessions_drops_new_clients_and_keeps_serving_the_first(run) -> None:
    async def main() -> None:
        async with harness() as h:
            origin, origin_addr = await h.origin(b"")
            service = UdpProxyService("dns", udp_socket(), Fixed(origin_addr), max_sessions=1)
            listen = h.serve(service)
            first, second = await h.client(), await h.client()
            assert await first.ask(b"first-1", listen) == b"first-1"
            second.send(b"second", listen)
            # the listener reads in arrival order: once this reply is back, "second" was handled
            assert await first.ask(b"first-2", listen) == b"first-2"
            assert second.replies.empty()
            assert b"second" not in origin.payloads
            assert service.relay is not None and service.relay.dropped == 1
            assert len(service.relay.sessions) == 1

    run(main)


def test_max_sessions_admits_a_new_client_once_a_session_expires(run) -> None:
    async def main() -> None:
        async with harness() as h:
            _, origin_addr = await h.origin(b"")
            app = Fixed(origin_addr)
            service = UdpProxyService("dns", udp_socket(), app, idle_timeout=0.2, max_sessions=1)
            listen = h.serve(service)
            first, second = await h.client(), await h.client()
            assert await first.ask(b"1", listen) == b"1"
            async with asyncio.timeout(TIMEOUT):
                await app.closed.get()
            assert await second.ask(b"2", listen) == b"2"

    run(main)


# --- balancing through the gateway app ------------------------------------------------


def two_origin_config(lb: str, a: tuple[str, int], b: tuple[str, int]) -> str:
    return (
        f'[listeners.dns]\naddr = "{LOCAL}:0"\nprotocol = "udp"\nupstream = "pool"\n'
        f'[upstreams.pool]\nbackends = ["{a[0]}:{a[1]}", "{b[0]}:{b[1]}"]\nlb = "{lb}"\n'
    )


def test_round_robin_balances_sessions_and_keeps_each_on_its_backend(run) -> None:
    async def main() -> None:
        async with harness() as h:
            origin_a, addr_a = await h.origin(b"A:")
            origin_b, addr_b = await h.origin(b"B:")
            listen = h.serve(gateway_service(two_origin_config("round_robin", addr_a, addr_b)))
            clients = [await h.client() for _ in range(4)]
            first = [(await c.ask(b"hi", listen))[:2] for c in clients]
            assert sorted(first) == [b"A:", b"A:", b"B:", b"B:"]
            assert first[0] != first[1] and first[1] != first[2]  # alternating per session
            again = [(await c.ask(b"hi", listen))[:2] for c in clients]
            assert again == first  # a session stays on the backend it started with
            assert len(set(origin_a.sources)) == 2 and len(set(origin_b.sources)) == 2

    run(main)


def test_consistent_hash_keeps_a_client_ip_on_one_backend(run) -> None:
    async def main() -> None:
        async with harness() as h:
            _, addr_a = await h.origin(b"A:")
            _, addr_b = await h.origin(b"B:")
            service = gateway_service(two_origin_config("consistent_hash", addr_a, addr_b))
            listen = h.serve(service)
            chosen: dict[str, set[bytes]] = {}
            for ip in [f"127.0.0.{i}" for i in range(2, 26)]:
                for _ in range(2):  # two sessions (two source ports) per client IP
                    client = await h.client(ip)
                    chosen.setdefault(ip, set()).add((await client.ask(b"hi", listen))[:2])
            assert all(len(backends) == 1 for backends in chosen.values()), chosen
            assert set().union(*chosen.values()) == {b"A:", b"B:"}  # the key spreads clients
            assert service.relay is not None and len(service.relay.sessions) == 48

    run(main)


# --- through the CLI ------------------------------------------------------------------


class ThreadEcho:
    """A blocking UDP echo origin on a thread (for a proxy running in another process)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCAL, 0))
        self.sock.settimeout(0.2)
        self.addr = self.sock.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.sock.sendto(b"echo:" + data, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCAL, 0))
        return sock.getsockname()[1]


def ask_retrying(client: socket.socket, payload: bytes, addr: tuple[str, int]) -> tuple[bytes, tuple[str, int]]:
    """Send until a reply comes (a datagram sent before the proxy is up is lost), 10s at most."""
    for _ in range(50):
        client.sendto(payload, addr)
        try:
            return client.recvfrom(65535)
        except TimeoutError:
            continue
    raise AssertionError(f"no reply to {payload!r} from {addr}")


@pytest.mark.parametrize("workers", [1, 2])
def test_udp_listener_through_ferryman_run(tmp_path: Path, workers: int) -> None:
    origin = ThreadEcho()
    port = free_udp_port()
    config = tmp_path / "udp.toml"
    config.write_text(
        f'[server]\nworkers = {workers}\ngrace_period = "2s"\n'
        f'[listeners.dns]\naddr = "{LOCAL}:{port}"\nprotocol = "udp"\nupstream = "echo"\nsession_timeout = "1s"\n'
        f'[upstreams.echo]\nbackends = ["{LOCAL}:{origin.addr[1]}"]\n'
    )
    env = ENV
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferryman", "run", "-c", str(config)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    try:
        for i, client in enumerate(clients):  # several clients: with workers, several sockets
            client.bind((LOCAL, 0))
            client.settimeout(0.2)
            payload = b"ping %d" % i
            assert ask_retrying(client, payload, (LOCAL, port)) == (b"echo:" + payload, (LOCAL, port))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        for client in clients:
            client.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        origin.close()

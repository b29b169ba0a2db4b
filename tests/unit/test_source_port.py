"""Upstream source-port affinity: real connections to a loopback listener must come from
ports of the worker's residue, and busy ports must be skipped."""

from __future__ import annotations

import asyncio
import errno
import random
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import uvloop

from ferryman.net.addr import Address
from ferryman.net.source_port import (
    PortAffinityError,
    bind_with_port_affinity,
    candidate_ports,
    connect_with_port_affinity,
    local_port_range,
    reserved_ports,
)

LOCAL = "127.0.0.1"
WAIT = 5.0
Run = Callable[[Callable[[], Awaitable[Any]]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Run a test coroutine on the parametrized loop, bounded in time."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(main: Callable[[], Awaitable[Any]]) -> Any:
        async def bounded() -> Any:
            async with asyncio.timeout(20):
                return await main()

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(bounded())

    return runner


@contextmanager
def listener(backlog: int = 128) -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind((LOCAL, 0))
    sock.listen(backlog)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def accepted_from(server: socket.socket) -> int:
    """Accept one connection and return the client's port (the server closes first)."""
    async with asyncio.timeout(WAIT):
        conn, peer = await asyncio.get_running_loop().sock_accept(server)
    conn.close()
    return peer[1]


def occupy(ports: list[int], stack: ExitStack) -> set[int]:
    """Bind each port without SO_REUSEADDR (so nobody else can take it); return those held.
    A port already in use elsewhere is just as busy, so it is not an error."""
    held = set()
    for port in ports:
        sock = stack.enter_context(socket.socket())
        try:
            sock.bind(("", port))
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE
            continue
        held.add(port)
    return held


# ---------------------------------------------------------------------------- candidates


def test_candidates_cover_the_residue_class_once() -> None:
    ports = list(candidate_ports(1, 3, rng=random.Random(5), port_range=(1000, 1020), reserved=()))
    assert sorted(ports) == [1000, 1003, 1006, 1009, 1012, 1015, 1018]
    assert all(p % 3 == 1 for p in ports)
    starts = {next(candidate_ports(0, 2, rng=random.Random(seed), port_range=(1000, 1999), reserved=())) for seed in range(20)}
    assert len(starts) > 1  # a random start, not always the bottom of the range


def test_candidates_skip_reserved_ports_and_empty_classes() -> None:
    ports = list(candidate_ports(0, 2, port_range=(10, 20), reserved={12, 14}))
    assert sorted(ports) == [10, 16, 18, 20]
    assert list(candidate_ports(4, 5, port_range=(10, 12), reserved=())) == []
    with pytest.raises(ValueError, match="worker 2 of 2"):
        list(candidate_ports(2, 2))


def test_kernel_settings_are_read() -> None:
    low, high = local_port_range()
    assert 0 < low <= high <= 65535
    assert all(0 < p <= 65535 for p in reserved_ports())


# ---------------------------------------------------------------------------- connecting


@pytest.mark.parametrize("workers", [2, 3])
def test_connections_come_from_the_workers_residue(run: Run, workers: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with listener() as server:
            for worker in range(workers):
                for _ in range(3):
                    sock = await connect_with_port_affinity(loop, server.getsockname(), worker, workers, timeout=WAIT)
                    with sock:
                        assert not sock.getblocking()
                        port = sock.getsockname()[1]
                        assert port % workers == worker
                        assert await accepted_from(server) == port

    run(main)


def test_busy_ports_are_skipped(run: Run) -> None:
    """EADDRINUSE at bind: the first candidates are held by other sockets."""
    seed, worker, workers = 1234, 1, 2
    candidates = list(candidate_ports(worker, workers, rng=random.Random(seed)))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with ExitStack() as stack, listener() as server:
            held = occupy(candidates[:6], stack)
            assert held, "could not hold any candidate port"
            address = Address(host=LOCAL, port=server.getsockname()[1])
            sock = await connect_with_port_affinity(loop, address, worker, workers, rng=random.Random(seed), timeout=WAIT)
            with sock:
                port = sock.getsockname()[1]
                assert port % workers == worker and port not in held
                assert port in candidates[6:64]
                assert await accepted_from(server) == port

    run(main)


def test_a_port_already_connected_to_the_same_address_is_skipped(run: Run) -> None:
    """EADDRNOTAVAIL at connect: the same seed tries the same port first; SO_REUSEADDR lets
    it bind, the kernel refuses the duplicate 4-tuple, and the next candidate is used."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with listener() as server:
            first = await connect_with_port_affinity(loop, server.getsockname(), 0, 2, rng=random.Random(99), timeout=WAIT)
            second = await connect_with_port_affinity(loop, server.getsockname(), 0, 2, rng=random.Random(99), timeout=WAIT)
            with first, second:
                ports = [first.getsockname()[1], second.getsockname()[1]]
                assert ports[0] != ports[1] and all(p % 2 == 0 for p in ports)
                assert sorted([await accepted_from(server), await accepted_from(server)]) == sorted(ports)

    run(main)


def test_no_free_port_is_a_clear_error(run: Run) -> None:
    seed = 77
    candidates = list(candidate_ports(1, 2, rng=random.Random(seed)))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with ExitStack() as stack, listener() as server:
            held = occupy(candidates[:4], stack)
            if len(held) < 4:
                pytest.skip("a candidate port is in use by another socket on this host")
            with pytest.raises(PortAffinityError, match=r"no free local port p with p % 2 == 1 after 4 tries .*127\.0\.0\.1:") as info:
                await connect_with_port_affinity(loop, server.getsockname(), 1, 2, attempts=4, rng=random.Random(seed))
            assert info.value.errno == errno.EADDRINUSE

    run(main)


def test_connect_errors_are_not_retried(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with listener() as server:
            address = server.getsockname()
        with pytest.raises(ConnectionRefusedError):
            await connect_with_port_affinity(loop, address, 0, 2, timeout=WAIT)

    run(main)


def test_connect_timeout(run: Run) -> None:
    """A listener whose accept queue is full drops SYNs: the connect must time out."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with listener(backlog=0) as server, ExitStack() as stack:
            for _ in range(4):  # fill the accept queue (nobody accepts)
                filler = stack.enter_context(socket.socket())
                filler.setblocking(False)
                filler.connect_ex(server.getsockname())
            with pytest.raises(TimeoutError, match="took longer than 0.3s"):
                await connect_with_port_affinity(loop, server.getsockname(), 0, 2, timeout=0.3)

    run(main)


def test_bind_with_port_affinity() -> None:
    with socket.socket() as sock:
        port = bind_with_port_affinity(sock, 2, 3, attempts=16)
        assert port % 3 == 2 and sock.getsockname()[1] == port
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)


def test_prepare_hook_tunes_each_socket(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[socket.socket] = []

        def prepare(sock: socket.socket) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            seen.append(sock)

        with listener() as server:
            sock = await connect_with_port_affinity(loop, server.getsockname(), 0, 1, prepare=prepare, timeout=WAIT)
            with sock:
                assert seen[-1] is sock and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                await accepted_from(server)

    run(main)

"""SO_REUSEPORT groups and port steering, on real loopback sockets.

Clients bind chosen source ports; the test asserts which member of the group got each
connection or datagram: with steering it must be ``source_port % n``.
"""

from __future__ import annotations

import errno
import random
import select
import socket
import struct
from collections.abc import Iterator

import pytest

from ferryman.net.addr import Address
from ferryman.net.listener import BindError
from ferryman.net.reuseport import (
    SteeringError,
    attach_port_steering,
    bind_reuseport_group,
    detach_steering,
    port_steering_program,
)

WAIT = 5.0  # seconds a test waits for one connection or datagram to arrive
PORTS_PER_RESIDUE = 3


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def _local_range() -> tuple[int, int]:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = map(int, f.read().split())
    return low, high


def client_sockets(n: int, kind: int, host: str = "127.0.0.1") -> Iterator[socket.socket]:
    """Client sockets bound to free ports of the ephemeral range, ``PORTS_PER_RESIDUE``
    for each residue modulo ``n`` (ports in use are skipped)."""
    low, high = _local_range()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    want = {r: PORTS_PER_RESIDUE for r in range(n)}
    port = random.randint(low, high)
    for _ in range(high - low + 1):  # bounded: at most the whole range once
        if not any(want.values()):
            return
        port = low if port >= high else port + 1
        if not want[port % n]:
            continue
        sock = socket.socket(family, kind)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        want[port % n] -= 1
        yield sock
    raise AssertionError(f"not enough free ports in {low}-{high}")


def receiver(group: list[socket.socket]) -> socket.socket:
    """The one member of ``group`` that has something to accept or read."""
    ready, _, _ = select.select(group, [], [], WAIT)
    assert len(ready) == 1, f"expected one ready member, got {len(ready)}"
    return ready[0]


def steered_tcp(group: list[socket.socket], host: str) -> list[tuple[int, int]]:
    """(client port, index of the member that accepted it) for a batch of clients."""
    port = group[0].getsockname()[1]
    seen = []
    for client in client_sockets(len(group), socket.SOCK_STREAM, host):
        with client:
            client.connect((host, port))
            member = receiver(group)
            conn, peer = member.accept()
            conn.close()  # the server closes first: no TIME_WAIT on the chosen client ports
            assert peer[1] == client.getsockname()[1]
            seen.append((peer[1], group.index(member)))
    return seen


def steered_udp(group: list[socket.socket], host: str) -> list[tuple[int, int]]:
    port = group[0].getsockname()[1]
    seen = []
    for client in client_sockets(len(group), socket.SOCK_DGRAM, host):
        with client:
            # the first payload bytes vary: steering must read the UDP header, not the data
            client.sendto(struct.pack("!H", random.randrange(65536)) + b"x", (host, port))
            member = receiver(group)
            _, peer = member.recvfrom(64)
            seen.append((peer[1], group.index(member)))
    return seen


@pytest.fixture
def groups() -> Iterator[list[list[socket.socket]]]:
    made: list[list[socket.socket]] = []
    yield made
    for group in made:
        for sock in group:
            sock.close()


def make_group(groups: list[list[socket.socket]], n: int, host: str = "127.0.0.1", *, udp: bool = False) -> list[socket.socket]:
    group = bind_reuseport_group(Address(host=host, port=0), n, backlog=16, udp=udp)
    groups.append(group)
    return group


# ---------------------------------------------------------------------------- binding


def test_group_shares_one_port(groups: list) -> None:
    group = make_group(groups, 3)
    ports = {sock.getsockname() for sock in group}
    assert len(ports) == 1 and next(iter(ports))[1] != 0
    assert all(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for sock in group)
    assert all(sock.getblocking() is False for sock in group)


def test_group_rejects_unix_and_bad_sizes() -> None:
    with pytest.raises(ValueError, match="Unix"):
        bind_reuseport_group(Address(path="/tmp/nope.sock"), 2)
    with pytest.raises(ValueError, match="not 0"):
        bind_reuseport_group(Address(host="127.0.0.1"), 0)


def test_group_bind_failure_names_the_address() -> None:
    with socket.socket() as taken:  # no SO_REUSEPORT: nobody may join its port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BindError, match=f"127.0.0.1:{port}: address already in use"):
            bind_reuseport_group(Address(host="127.0.0.1", port=port), 2)


# ---------------------------------------------------------------------------- steering


@pytest.mark.parametrize("n", [2, 3])
def test_tcp_steered_by_source_port(groups: list, n: int) -> None:
    group = make_group(groups, n)
    attach_port_steering(group[0], n)
    seen = steered_tcp(group, "127.0.0.1")
    assert len(seen) == n * PORTS_PER_RESIDUE
    assert [(port, port % n) for port, _ in seen] == seen


@pytest.mark.parametrize("n", [2, 3])
def test_udp_steered_by_source_port(groups: list, n: int) -> None:
    group = make_group(groups, n, udp=True)
    attach_port_steering(group[-1], n)  # any member carries the group's program
    seen = steered_udp(group, "127.0.0.1")
    assert [(port, port % n) for port, _ in seen] == seen


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("udp", [False, True])
def test_ipv6_steered_by_source_port(groups: list, udp: bool) -> None:
    group = make_group(groups, 3, "::1", udp=udp)
    attach_port_steering(group[0], 3)
    seen = (steered_udp if udp else steered_tcp)(group, "::1")
    assert [(port, port % 3) for port, _ in seen] == seen


def test_group_index_is_listen_order(groups: list) -> None:
    """The kernel numbers TCP members in listen() order, not bind() order."""
    group = make_group(groups, 1)
    port = group[0].getsockname()[1]
    late = []
    for _ in range(2):  # bound now, listening later in reverse order
        sock = socket.socket()
        groups.append([sock])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        late.append(sock)
    late[1].listen(16)
    late[0].listen(16)
    by_index = [group[0], late[1], late[0]]
    attach_port_steering(group[0], 3)
    for client_port, member in steered_tcp([group[0], *late], "127.0.0.1"):
        assert [group[0], *late][member] is by_index[client_port % 3]


def test_closing_a_member_moves_the_last_into_its_slot(groups: list) -> None:
    """Why the master must keep every member open: a close renumbers the group."""
    group = make_group(groups, 3)
    attach_port_steering(group[0], 3)
    group[0].close()
    live = group[1:]
    for client_port, member in steered_tcp(live, "127.0.0.1"):
        residue = client_port % 3
        if residue == 0:
            assert live[member] is group[2]  # index 0 now holds the former last member
        elif residue == 1:
            assert live[member] is group[1]
        # residue 2 is out of range now: the kernel falls back to its hash


def test_detach_returns_to_the_kernel_hash(groups: list) -> None:
    group = make_group(groups, 2)
    attach_port_steering(group[0], 2)
    detach_steering(group[1])
    with pytest.raises(SteeringError, match="no steering program is attached") as info:
        detach_steering(group[0])
    assert info.value.errno == errno.ENOENT
    assert len(steered_tcp(group, "127.0.0.1")) == 2 * PORTS_PER_RESIDUE  # still served


def test_attach_refused_outside_a_group() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(SteeringError, match=f"127.0.0.1:{port}: the socket is not in an SO_REUSEPORT group"):
            attach_port_steering(sock, 2)


def test_program_shape() -> None:
    program = port_steering_program(7)
    assert len(program) == 9
    assert program[7] == (0x94, 0, 0, 7)  # BPF_ALU|BPF_MOD|BPF_K
    assert program[-1] == (0x16, 0, 0, 0)  # BPF_RET|BPF_A
    with pytest.raises(ValueError):
        port_steering_program(0)

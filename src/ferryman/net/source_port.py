"""Upstream source-port affinity: worker ``i`` of ``n`` connects from a local port ``p``
with ``p % n == i`` (Seastar's ``find_port_and_connect``).

Why: an upstream that balances by client port (ferryman's ``port`` mode, or RSS-style
steering) then maps each of our workers to the same one of its workers, every time.

Ports come from the kernel's ephemeral range (``net.ipv4.ip_local_port_range``, read once
per process), minus ``ip_local_reserved_ports``, starting at a random candidate. Sockets
set SO_REUSEADDR so a port whose earlier connection is in TIME_WAIT can be bound again;
the kernel still refuses a duplicate 4-tuple at connect time (EADDRNOTAVAIL), and then
the next candidate is tried, as after EADDRINUSE at bind time.
IP_BIND_ADDRESS_NO_PORT is not used: the port must be chosen here, at bind time.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import random
import socket
from collections.abc import Callable, Collection, Iterator

from .addr import Address
from .reactor import reactor_for

__all__ = [
    "PortAffinityError",
    "bind_with_port_affinity",
    "candidate_ports",
    "connect_with_port_affinity",
    "local_port_range",
    "reserved_ports",
]

DEFAULT_RANGE = (32768, 60999)  # Linux's default, when /proc cannot be read
_RETRY_CONNECT = (errno.EADDRNOTAVAIL, errno.EADDRINUSE)


class PortAffinityError(OSError):
    """No local port of the worker's residue was free within the allowed attempts."""


@functools.cache
def local_port_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (read once per process)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
    except (OSError, ValueError):
        return DEFAULT_RANGE
    return low, high


@functools.cache
def reserved_ports() -> frozenset[int]:
    """Ports the kernel keeps out of automatic assignment (``a-b,c`` list, read once)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_reserved_ports") as f:
            text = f.read().strip()
    except OSError:
        return frozenset()
    ports: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        try:
            ports.update(range(int(low), int(high or low) + 1))
        except ValueError:
            return frozenset()
    return frozenset(ports)


def candidate_ports(
    worker: int,
    workers: int,
    *,
    rng: random.Random | None = None,
    port_range: tuple[int, int] | None = None,
    reserved: Collection[int] | None = None,
) -> Iterator[int]:
    """Every port of the range with ``port % workers == worker``, once each, from a random
    one onwards (wrapping round), reserved ports left out."""
    _check_worker(worker, workers)
    low, high = port_range or local_port_range()
    reserved = reserved_ports() if reserved is None else reserved
    first = low + (worker - low) % workers  # the smallest port >= low in the residue class
    if first > high:
        return
    count = (high - first) // workers + 1
    offset = (rng or random).randrange(count)
    for i in range(count):
        port = first + (offset + i) % count * workers
        if port not in reserved:
            yield port


def _check_worker(worker: int, workers: int) -> None:
    if workers < 1 or not 0 <= worker < workers:
        raise ValueError(f"worker {worker} of {workers}: need 0 <= worker < workers")


def bind_with_port_affinity(
    sock: socket.socket, worker: int, workers: int, *, attempts: int = 64, rng: random.Random | None = None
) -> int:
    """Bind ``sock`` (SO_REUSEADDR set) to the wildcard address and a port of the worker's
    residue; return the port. Raise :class:`PortAffinityError` when none was free."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tried = 0
    for port in candidate_ports(worker, workers, rng=rng):
        if tried >= attempts:
            break
        tried += 1
        try:
            sock.bind(("", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        return port
    raise _exhausted(worker, workers, tried, "binding")


def _exhausted(worker: int, workers: int, tried: int, what: str) -> PortAffinityError:
    low, high = local_port_range()
    return PortAffinityError(
        errno.EADDRINUSE,
        f"no free local port p with p % {workers} == {worker} after {tried} tries in {low}-{high} ({what})",
    )


async def connect_with_port_affinity(
    loop: asyncio.AbstractEventLoop,
    address: Address | tuple[str, int],
    worker: int,
    workers: int,
    *,
    timeout: float | None = None,
    attempts: int = 64,
    prepare: Callable[[socket.socket], None] | None = None,
    rng: random.Random | None = None,
) -> socket.socket:
    """Connect to ``address`` (an IP literal and port) from a port of the worker's residue.

    Returns a connected non-blocking socket. ``prepare`` tunes each new socket before it
    binds (e.g. ``tune_socket``). Raises :class:`PortAffinityError` when no port was free
    in ``attempts`` tries, TimeoutError after ``timeout`` seconds, or the connect error.
    """
    if isinstance(address, Address):
        if address.is_unix:
            raise ValueError(f"{address}: source-port affinity needs a TCP address")
        family, sockaddr = address.family, address.sockaddr
    else:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sockaddr = address
    deadline = None if timeout is None else loop.time() + timeout
    reactor = reactor_for(loop)
    tried = 0
    for port in candidate_ports(worker, workers, rng=rng):
        if tried >= attempts:
            break
        tried += 1
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if prepare is not None:
                prepare(sock)
            try:
                sock.bind(("", port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    sock.close()
                    continue
                raise
            err = sock.connect_ex(sockaddr)
            if err in _RETRY_CONNECT:  # this port already talks to that address
                sock.close()
                continue
            if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EINTR):
                try:
                    await reactor.wait_writable_once(sock.fileno(), deadline)
                except TimeoutError as exc:
                    raise TimeoutError(f"connecting to {_describe(sockaddr)} took longer than {timeout}s") from exc
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                reactor.forget(sock.fileno())
                raise OSError(err, os.strerror(err))
        except BaseException:
            sock.close()
            raise
        return sock
    raise _exhausted(worker, workers, tried, f"connecting to {_describe(sockaddr)}")


def _describe(sockaddr: tuple[str, int] | str) -> str:
    if isinstance(sockaddr, tuple):
        host, port = sockaddr[0], sockaddr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return sockaddr

"""Backends given as DNS names: resolve them at load and re-resolve them while serving.

nginx's ``server NAME resolve`` with a ``resolver``: each config line whose host is a name
becomes one :class:`Backend` per resolved address (same port and weight). Lookups go to
the system resolver (``getaddrinfo``: /etc/hosts works) unless DNS servers are configured,
in which case they are queried directly over UDP (TCP when the answer is truncated) with
:mod:`ferryman.protocol.dns`.

:class:`BackendResolver` is a background object shaped like the health checker
(``start()``, ``async stop()``, ``running``) plus ``async resolve_now()`` for the first
resolution. Control plane only: the data path just sees the balancer's new backends.

Timing of the next lookup of a name (each name has its own schedule):

- after a success: ``min(interval, smallest TTL)`` (TTL known only with DNS servers),
  never sooner than :data:`MIN_INTERVAL`; ``interval == 0``: never again;
- after a failure (NXDOMAIN, timeout, no records): 1, 2, 4 s ... capped at
  ``min(interval, RETRY_CAP)`` (``RETRY_CAP`` when ``interval`` is 0, so a name that did
  not resolve at load keeps being tried until it does). The last known addresses stay.
  A warning is logged at the first failure and when the reason changes (repeats: debug);
- when only one family's query fails (AAAA timing out while A answers, say), that
  family's last known addresses stay and the name is asked again within ``RETRY_CAP``.

Each change of a name's address set is logged once at info: upstream, name, old → new.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import math
import secrets
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..net.addr import Address
from ..protocol import dns
from .backend import Backend

log = logging.getLogger(__name__)

MIN_INTERVAL = 1.0
"""No name is looked up more often than this (seconds), whatever its TTL."""

RETRY_CAP = 5.0
"""Longest wait before retrying a name whose lookup failed (and ``resolve_interval``, if shorter)."""

QUERY_TIMEOUT = 1.0
"""One attempt at one DNS server (UDP, or the TCP retry of a truncated answer)."""

SYSTEM_TIMEOUT = 5.0
"""Bound on one ``getaddrinfo`` call (the system resolver has its own timeouts too)."""

FIRST_RESOLUTION_TIMEOUT = 5.0
"""Default bound on :meth:`BackendResolver.resolve_now`."""


class LookupFailed(Exception):
    """A name could not be resolved; the message is the reason for logs."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """The addresses of one name (IPv4 first), the smallest TTL when known, and the
    family (``socket.AF_INET6``/``AF_INET``) whose lookup failed while the other worked."""

    addresses: tuple[str, ...]
    ttl: float | None = None
    missing_family: int = 0
    missing_reason: str = ""


class Lookup(Protocol):
    """Resolves a host name: ``await lookup(host, ipv4_only)``; raises LookupFailed."""

    servers: tuple[Address, ...]

    async def __call__(self, host: str, ipv4_only: bool) -> Resolution: ...


def is_name(address: Address) -> bool:
    """True when ``address`` is a host name to resolve (not an IP literal, not a Unix socket)."""
    if address.is_unix:
        return False
    try:
        ipaddress.ip_address(address.host.partition("%")[0])
    except ValueError:
        return True
    return False


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _ordered(addresses: Iterable[str]) -> tuple[str, ...]:
    """Deduplicated, IPv4 first, otherwise in the order given."""
    seen = dict.fromkeys(addresses)
    return tuple(a for a in seen if ":" not in a) + tuple(a for a in seen if ":" in a)


# --- lookups ------------------------------------------------------------------------------------

class SystemLookup:
    """``loop.getaddrinfo``: honours /etc/hosts and nsswitch; TTLs are unknown."""

    servers: tuple[Address, ...] = ()

    def __init__(self, *, timeout: float = SYSTEM_TIMEOUT) -> None:
        self.timeout = timeout

    async def __call__(self, host: str, ipv4_only: bool) -> Resolution:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET if ipv4_only else socket.AF_UNSPEC
        try:
            async with asyncio.timeout(self.timeout):
                infos = await loop.getaddrinfo(host, None, family=family, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise LookupFailed(f"the system resolver did not answer within {self.timeout:g}s") from None
        except socket.gaierror as exc:
            raise LookupFailed(exc.strerror or str(exc)) from None
        except (OSError, UnicodeError) as exc:
            raise LookupFailed(f"{type(exc).__name__}: {exc}") from None
        addresses = _ordered(
            str(info[4][0]) for info in infos if info[0] in ((socket.AF_INET,) if ipv4_only else (socket.AF_INET, socket.AF_INET6))
        )
        if not addresses:
            raise LookupFailed("no IPv4 address" if ipv4_only else "no address")
        return Resolution(addresses)


class DnsLookup:
    """Queries the configured DNS servers directly: A (and AAAA) in parallel.

    Each query gets a random 16-bit id and its own UDP socket (so a source port the
    kernel picks at random); a reply counts only when it comes from the server (connected
    socket) with our id and our question. A timeout (``timeout`` per attempt), SERVFAIL,
    REFUSED or an ICMP error moves on to the next server; ``attempts`` (default: every
    server, at least 2) bounds the total. A truncated answer is asked again over TCP.
    NXDOMAIN ends the lookup at once.
    """

    def __init__(
        self, servers: Sequence[Address], *, timeout: float = QUERY_TIMEOUT, attempts: int | None = None, tcp: bool = True
    ) -> None:
        if not servers:
            raise ValueError("DnsLookup needs at least one server")
        self.servers = tuple(servers)
        self.timeout = timeout
        self.attempts = attempts if attempts is not None else max(2, len(self.servers))
        self.tcp = tcp

    async def __call__(self, host: str, ipv4_only: bool) -> Resolution:
        qtypes = (dns.TYPE_A,) if ipv4_only else (dns.TYPE_A, dns.TYPE_AAAA)
        results = await asyncio.gather(*(self.query(host, qtype) for qtype in qtypes), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, LookupFailed):
                raise result
        answers = [r for r in results if isinstance(r, dns.Answer)]
        failures = [r for r in results if isinstance(r, LookupFailed)]
        for failure in failures:
            if str(failure).startswith("NXDOMAIN"):
                raise failure
        if not answers:
            raise failures[0]
        addresses = _ordered(a for answer in answers for a in answer.addresses)
        if not addresses:
            if failures:
                raise failures[0]
            raise LookupFailed(f"no {' or '.join(dns.type_name(t) for t in qtypes)} records")
        ttls = [answer.ttl for answer in answers if answer.ttl is not None]
        missing = 0
        if failures:
            missing = socket.AF_INET6 if isinstance(results[0], dns.Answer) else socket.AF_INET
        return Resolution(addresses, float(min(ttls)) if ttls else None, missing, str(failures[0]) if failures else "")

    async def query(self, name: str, qtype: int) -> dns.Answer:
        """One question, trying the servers in turn; raises LookupFailed with every reason."""
        problems: list[str] = []
        what = dns.type_name(qtype)
        for attempt in range(self.attempts):
            server = self.servers[attempt % len(self.servers)]
            qid = secrets.randbits(16)
            try:
                packet = dns.encode_query(qid, name, qtype)
            except dns.DnsError as exc:
                raise LookupFailed(str(exc)) from None
            try:
                async with asyncio.timeout(self.timeout):
                    message = await _udp_exchange(server, packet, qid, name, qtype)
                if message.truncated and self.tcp:
                    try:
                        async with asyncio.timeout(self.timeout):
                            message = await _tcp_exchange(server, packet, qid, name, qtype)
                    except (TimeoutError, OSError, dns.DnsError, asyncio.IncompleteReadError) as exc:
                        problems.append(f"{server}: truncated answer, TCP retry failed ({_reason(exc, self.timeout)})")
                        if not message.answers:
                            continue  # otherwise use what the truncated answer holds
            except (TimeoutError, OSError, dns.DnsError) as exc:
                problems.append(f"{server}: {_reason(exc, self.timeout)}")
                continue
            rcode = message.rcode
            if rcode == dns.NXDOMAIN:
                raise LookupFailed(f"NXDOMAIN from {server}")
            if rcode != dns.NOERROR:
                problems.append(f"{server}: {dns.rcode_name(rcode)}")
                continue
            try:
                return dns.answer_addresses(message, name, qtype)
            except dns.DnsError as exc:
                raise LookupFailed(f"{what} from {server}: {exc}") from None
        raise LookupFailed(f"{what} query failed: {'; '.join(problems)}")


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "port unreachable"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed mid-answer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class _Reply(asyncio.DatagramProtocol):
    """Waits for the datagram answering one query; ignores stray or malformed ones."""

    def __init__(self, qid: int, name: str, qtype: int) -> None:
        self.qid, self.name, self.qtype = qid, name, qtype
        self.future: asyncio.Future[dns.Message] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.future.done():
            return
        try:
            message = dns.decode_message(data)
        except dns.DnsError:
            return  # garbage: keep waiting for the real answer until the attempt times out
        if dns.is_answer_to(message, self.qid, self.name, self.qtype):
            self.future.set_result(message)

    def error_received(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.future.done():
            self.future.set_exception(exc or ConnectionError("socket closed"))


async def _udp_exchange(server: Address, packet: bytes, qid: int, name: str, qtype: int) -> dns.Message:
    loop = asyncio.get_running_loop()
    transport, reply = await loop.create_datagram_endpoint(lambda: _Reply(qid, name, qtype), remote_addr=(server.host, server.port))
    try:
        transport.sendto(packet)
        return await reply.future
    finally:
        transport.close()
        if not reply.future.done():
            reply.future.cancel()


async def _tcp_exchange(server: Address, packet: bytes, qid: int, name: str, qtype: int) -> dns.Message:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(len(packet).to_bytes(2, "big") + packet)
        while True:  # a stray message with another id is skipped, as over UDP
            size = int.from_bytes(await reader.readexactly(2), "big")
            message = dns.decode_message(await reader.readexactly(size))
            if dns.is_answer_to(message, qid, name, qtype):
                return message
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def make_lookup(servers: Sequence[Address]) -> Lookup:
    """The system resolver when ``servers`` is empty, else those DNS servers."""
    return DnsLookup(servers) if servers else SystemLookup()


# --- re-resolution ------------------------------------------------------------------------------

@dataclass(slots=True)
class NameState:
    """What is known about one name (tests and the admin API read it)."""

    host: str
    addresses: tuple[str, ...] = ()
    resolved: bool = False  # at least one lookup succeeded
    lookups: int = 0  # completed lookups, successful or not
    failures: int = 0  # consecutive failed lookups
    error: str = ""  # reason of the last failure ("" after a success)
    ttl: float | None = None
    due: float = 0.0  # loop time of the next lookup (inf: none)


class _Line:
    """One config line whose host is a name: its Backends, one per resolved address."""

    __slots__ = ("backends", "host", "port", "weight")

    def __init__(self, host: str, port: int, weight: int) -> None:
        self.host, self.port, self.weight = host, port, weight
        self.backends: dict[str, Backend] = {}

    def update(self, addresses: Sequence[str]) -> None:
        """Keep the Backend of every address that stays; new addresses get new ones."""
        old = self.backends
        self.backends = {a: old.get(a) or Backend(Address(host=a, port=self.port), self.weight) for a in addresses}


Apply = Callable[[tuple[Backend, ...]], None]


class BackendResolver:
    """Resolves the named lines of one upstream and hands the full backend list to ``apply``
    (config order: literal addresses as they are, each name expanded to its addresses)
    whenever an address set changes. A Backend whose address stays is the same object."""

    def __init__(
        self,
        upstream: str,
        backends: Sequence[Backend],
        *,
        lookup: Lookup,
        apply: Apply,
        interval: float = 30.0,
        ipv4_only: bool = False,
    ) -> None:
        self.upstream = upstream
        self.lookup = lookup
        self.apply = apply
        self.interval = interval
        self.ipv4_only = ipv4_only
        self._entries: list[Backend | _Line] = []
        self.names: dict[str, NameState] = {}
        for backend in backends:
            if is_name(backend.address):
                host = backend.address.host
                self._entries.append(_Line(host, backend.address.port, backend.weight))
                self.names.setdefault(host, NameState(host))
            else:
                self._entries.append(backend)
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def backends(self) -> tuple[Backend, ...]:
        """The current list: what ``apply`` last received (static backends before any lookup)."""
        out: list[Backend] = []
        for entry in self._entries:
            if isinstance(entry, _Line):
                out.extend(entry.backends.values())
            else:
                out.append(entry)
        return tuple(out)

    def state(self, host: str) -> NameState:
        return self.names[host]

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Re-resolve in the background (names never looked up yet: at once). Idempotent."""
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"resolver-{self.upstream}")

    async def stop(self) -> None:
        """Cancel the background task and any lookup in flight; wait for them."""
        tasks = [t for t in (self._task, *self._pending.values()) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def resolve_now(self, timeout: float | None = FIRST_RESOLUTION_TIMEOUT) -> bool:
        """Look every name up now (joining lookups already in flight) and apply the results.

        Blocks at most ``timeout`` seconds (None: the lookups' own bounds, a few seconds);
        lookups still running then go on in the background and apply when they finish.
        Returns True when every name has at least one address.
        """
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(self._refresh(state) for state in self.names.values()))
        except TimeoutError:
            waiting = [s.host for s in self.names.values() if not s.resolved]
            log.warning("upstream %s: lookups still running after %gs (never resolved yet: %s); going on without waiting",
                        self.upstream, timeout, ", ".join(waiting) or "none")
        return all(state.addresses for state in self.names.values())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            due = [state for state in self.names.values() if state.due <= now]
            if due:
                try:
                    await asyncio.gather(*(self._refresh(state) for state in due))
                except Exception:  # a bug must not stop re-resolution, nor spin
                    log.exception("upstream %s: re-resolution round failed", self.upstream)
                    for state in due:
                        state.due = max(state.due, now + RETRY_CAP)
                continue
            wake = min((state.due for state in self.names.values()), default=math.inf)
            if math.isinf(wake):
                await loop.create_future()  # nothing left to do until stopped
            await asyncio.sleep(wake - now)

    async def _refresh(self, state: NameState) -> None:
        """One lookup of ``state.host``, shared with any caller that asks meanwhile."""
        task = self._pending.get(state.host)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(state), name=f"resolve-{state.host}")
            self._pending[state.host] = task
            task.add_done_callback(functools.partial(self._done, state.host))
        await asyncio.shield(task)

    def _done(self, host: str, task: asyncio.Task[None]) -> None:
        if self._pending.get(host) is task:
            del self._pending[host]

    async def _lookup(self, state: NameState) -> None:
        try:
            result = await self.lookup(state.host, self.ipv4_only)
        except LookupFailed as exc:
            self._failed(state, str(exc))
        except Exception as exc:  # a bug must not stop re-resolution
            log.exception("upstream %s: resolving %s raised", self.upstream, state.host)
            self._failed(state, f"{type(exc).__name__}: {exc}")
        else:
            self._resolved(state, result)

    def _resolved(self, state: NameState, result: Resolution) -> None:
        loop = asyncio.get_running_loop()
        addresses = result.addresses
        if result.missing_family:
            # one family's query failed while the other answered: keep that family's old addresses
            addresses = _ordered((*addresses, *(a for a in state.addresses if _family(a) == result.missing_family)))
        state.lookups += 1
        was_failing, state.failures, state.error = state.error, 0, ""
        state.resolved, state.ttl = True, result.ttl
        if self.interval <= 0:
            delay = RETRY_CAP if result.missing_family else math.inf
        else:
            delay = max(MIN_INTERVAL, min(self.interval, result.ttl if result.ttl is not None else math.inf))
            if result.missing_family:
                delay = min(delay, max(MIN_INTERVAL, min(self.interval, RETRY_CAP)))
        state.due = loop.time() + delay
        if result.missing_family:
            log.debug("upstream %s: %s: one address family failed (%s)", self.upstream, state.host, result.missing_reason)
        if set(addresses) == set(state.addresses):
            if was_failing:
                log.info("upstream %s: %s resolves again (%s)", self.upstream, state.host, ", ".join(addresses))
            return
        old, state.addresses = state.addresses, addresses
        log.info("upstream %s: %s resolved %s → %s", self.upstream, state.host, ", ".join(old) or "(none)", ", ".join(addresses))
        self._publish()

    def _failed(self, state: NameState, reason: str) -> None:
        loop = asyncio.get_running_loop()
        state.lookups += 1
        state.failures += 1
        cap = min(self.interval, RETRY_CAP) if self.interval > 0 else RETRY_CAP
        state.due = loop.time() + max(MIN_INTERVAL, min(cap, 2.0 ** (state.failures - 1)))
        keeping = ", ".join(state.addresses) or "no addresses"
        if reason != state.error:
            log.warning("upstream %s: resolving %s failed: %s; keeping %s", self.upstream, state.host, reason, keeping)
        else:
            log.debug("upstream %s: resolving %s failed again: %s", self.upstream, state.host, reason)
        state.error = reason

    def _publish(self) -> None:
        for entry in self._entries:
            if isinstance(entry, _Line):
                entry.update(self.names[entry.host].addresses)
        try:
            self.apply(self.backends)
        except Exception:
            log.exception("upstream %s: applying resolved backends failed", self.upstream)


class FirstResolution:
    """A service to add before the listeners: ``start()`` waits, bounded by ``timeout``, for
    the first resolution of every backend name, so listeners open with addresses in place.
    It accepts nothing, so stopping and draining are no-ops."""

    def __init__(self, resolvers: Iterable[BackendResolver], timeout: float = FIRST_RESOLUTION_TIMEOUT) -> None:
        self.resolvers = tuple(resolvers)
        self.timeout = timeout

    async def start(self) -> None:
        await asyncio.gather(*(r.resolve_now(self.timeout) for r in self.resolvers))

    def stop_accepting(self) -> None:
        pass

    async def drain(self, timeout: float) -> None:
        pass

"""Backends given as DNS names: resolution against a real tiny DNS server on loopback (and the
system resolver), re-resolution by TTL, Backend identity across changes, failures, fail-over
between servers, TCP after truncation, and the upstream wiring (balancer, peers, checker)."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from ferryman.config.load import load_text
from ferryman.errors import ErrorKind, ProxyError
from ferryman.net.addr import Address
from ferryman.protocol import dns
from ferryman.protocol.dns import Message, Record
from ferryman.runtime.upstreams import Upstream, build_upstreams
from ferryman.upstream.backend import Backend
from ferryman.upstream.balancer import Balancer, WeightedUpstreams
from ferryman.upstream.passive import PassiveHealth
from ferryman.upstream.resolver import (
    BackendResolver,
    DnsLookup,
    FirstResolution,
    LookupFailed,
    Resolution,
    SystemLookup,
    is_name,
)

TEST_TIMEOUT = 30.0


def on_loop(func: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an ``async def`` test on a fresh uvloop loop, bounded by TEST_TIMEOUT."""

    @functools.wraps(func)
    def test(*args: Any, **kwargs: Any) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(TEST_TIMEOUT):
                await func(*args, **kwargs)

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(bounded())
        gc.collect()  # unclosed-resource warnings belong to the test that leaked

    return test


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# --- a tiny DNS server --------------------------------------------------------------------------

class DnsServer(asyncio.DatagramProtocol):
    """Authoritative for whatever ``zone`` holds (change it during a test); UDP and TCP on one
    loopback port. ``mode``: "answer", "drop" (never answers) or "servfail"; ``fail_types``:
    query types answered SERVFAIL; ``truncate``: UDP answers carry TC and no records."""

    def __init__(self) -> None:
        self.zone: dict[str, list[Record]] = {}
        self.mode = "answer"
        self.fail_types: set[int] = set()
        self.truncate = False
        self.queries: list[tuple[str, int, int, int]] = []  # (name, qtype, id, source port) over UDP
        self.tcp_queries: list[tuple[str, int]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.Server | None = None
        self.address = Address()

    @classmethod
    async def start(cls, *, tcp: bool = True) -> DnsServer:
        loop = asyncio.get_running_loop()
        for _ in range(20):  # the TCP side needs the port the UDP side got
            server = cls()
            transport, _ = await loop.create_datagram_endpoint(lambda server=server: server, local_addr=("127.0.0.1", 0))
            port = transport.get_extra_info("sockname")[1]
            if not tcp:
                break
            try:
                server.tcp = await asyncio.start_server(server._serve_tcp, "127.0.0.1", port)
                break
            except OSError:
                transport.close()
        else:
            raise AssertionError("no port free for both UDP and TCP")
        server.address = Address("127.0.0.1", port)
        return server

    def set(self, name: str, *addresses: str, ttl: int = 1) -> None:
        self.zone[name] = [Record(name, dns.TYPE_AAAA if ":" in a else dns.TYPE_A, a, ttl) for a in addresses]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.decode_message(data)
        question = query.questions[0]
        self.queries.append((question.name, question.qtype, query.id, addr[1]))
        if self.mode != "drop":
            assert self.transport is not None
            self.transport.sendto(self.answer(query, udp=True), addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            size = int.from_bytes(await reader.readexactly(2), "big")
            query = dns.decode_message(await reader.readexactly(size))
            self.tcp_queries.append((query.questions[0].name, query.questions[0].qtype))
            reply = self.answer(query, udp=False)
            writer.write(len(reply).to_bytes(2, "big") + reply)
            await writer.drain()
        finally:
            writer.close()

    def answer(self, query: Message, *, udp: bool) -> bytes:
        question = query.questions[0]
        flags = dns.FLAG_QR | dns.FLAG_AA | (query.flags & dns.FLAG_RD)
        answers: list[Record] = []
        if self.mode == "servfail" or question.qtype in self.fail_types:
            flags |= dns.SERVFAIL
        elif udp and self.truncate:
            flags |= dns.FLAG_TC
        else:
            name = question.name.lower()
            for _ in range(10):
                records = self.zone.get(name)
                if records is None:
                    if not answers:
                        flags |= dns.NXDOMAIN
                    break
                answers += [r for r in records if r.rtype == question.qtype]
                cname = [r for r in records if r.rtype == dns.TYPE_CNAME]
                if not cname:
                    break
                answers.insert(0, cname[0])
                name = str(cname[0].data)
        return dns.encode_message(Message(query.id, flags, query.questions, tuple(answers)))

    async def aclose(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.tcp is not None:
            self.tcp.close()
            await self.tcp.wait_closed()


def config(servers: list[DnsServer], upstreams: str) -> Any:
    resolvers = ", ".join(f'"{s.address}"' for s in servers)
    return load_text(f"[server]\nresolvers = [{resolvers}]\n\n{upstreams}")


def addresses(upstream: Upstream) -> list[str]:
    return [b.key for b in upstream.balancer.backends]


# --- pieces -------------------------------------------------------------------------------------

def test_is_name_tells_names_from_literals() -> None:
    assert is_name(Address("app.internal", 80)) and is_name(Address("localhost", 80))
    assert not is_name(Address("10.0.0.1", 80)) and not is_name(Address("::1", 80))
    assert not is_name(Address("fe80::1%eth0", 80)) and not is_name(Address(path="/run/app.sock"))


def test_balancer_replace_backends_keeps_the_object_for_nested_upstreams() -> None:
    a, b, c = (Backend(Address(f"10.0.0.{i}", 80)) for i in (1, 2, 3))
    leaf = Balancer([a, b], "weighted")
    other = Balancer([Backend(Address("10.1.0.1", 80))])
    split = WeightedUpstreams([(leaf, 1), (other, 1)])
    leaf.replace_backends([b, c])
    assert leaf.backends == (b, c)
    assert set(split.backends) == {b, c, *other.backends}
    assert {next(leaf.select()) for _ in range(4)} == {b, c}
    leaf.replace_backends([])  # a name with no address yet: the member has nothing to offer
    assert list(leaf.select()) == [] and leaf.healthy_count == 0
    assert [list(split.select()) for _ in range(2)] == [list(other.backends)] * 2


# --- resolution through the upstream ------------------------------------------------------------

@on_loop
async def test_first_resolution_expands_names_into_backends(caplog: pytest.LogCaptureFixture) -> None:
    server = await DnsServer.start()
    try:
        server.set("app.test", "10.0.0.1", "10.0.0.2", "fd00::1")
        ups = build_upstreams(config([server], """
[upstreams.api]
backends = ["app.test:8080 weight=3", "10.9.9.9:80", "unix:/run/app.sock"]
lb = "weighted"
"""))
        api = ups["api"]
        assert api.resolver is not None and not api.resolver.running
        assert addresses(api) == ["10.9.9.9:80", "unix:/run/app.sock"]  # before resolution: literals only
        with caplog.at_level(logging.INFO, "ferryman.upstream.resolver"):
            assert await api.resolver.resolve_now() is True
        assert addresses(api) == ["10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080", "10.9.9.9:80", "unix:/run/app.sock"]
        assert [b.weight for b in api.balancer.backends] == [3, 3, 3, 1, 1]
        for backend in api.balancer.backends:
            assert api.peer_for(backend).address == backend.address
        assert len(api.peers) == 5
        assert "upstream api: app.test resolved (none) → 10.0.0.1, 10.0.0.2, fd00::1" in caplog.text
        assert sorted(q[1] for q in server.queries) == [dns.TYPE_A, dns.TYPE_AAAA]
        assert len({q[3] for q in server.queries}) == 2  # each query on its own socket
        state = api.resolver.state("app.test")
        assert state.resolved and state.ttl == 1 and state.error == ""
    finally:
        await server.aclose()


@on_loop
async def test_ttl_drives_re_resolution_and_backends_that_stay_are_kept(caplog: pytest.LogCaptureFixture) -> None:
    server = await DnsServer.start()
    ups: dict[str, Upstream] = {}
    try:
        server.set("app.test", "10.0.0.1", "10.0.0.2", ttl=1)
        ups = build_upstreams(config([server], """
[upstreams.api]
backends = ["app.test:8080"]
resolve_interval = "1h"
ipv4_only = true

[upstreams.other]
backends = ["10.5.0.1:80"]

[upstreams.split]
members = ["api weight=3", "other"]
"""))
        api, split = ups["api"], ups["split"]
        balancer = api.balancer
        assert api.resolver is not None
        await api.resolver.resolve_now()
        first, second = api.balancer.backends
        second.active, second.healthy = 7, False  # live state that must carry over
        old_peer, old_id = api.peer_for(first), id(first)
        assert split.peer_for(first) is old_peer
        server.set("app.test", "10.0.0.2", "10.0.0.3", ttl=1)
        with caplog.at_level(logging.INFO, "ferryman.upstream.resolver"):
            api.resolver.start()
            await until(lambda: addresses(api) == ["10.0.0.2:8080", "10.0.0.3:8080"], "the new address set")
        kept, new = api.balancer.backends
        assert api.balancer is balancer  # same object: the nested upstream holds it
        assert kept is second and (kept.active, kept.healthy) == (7, False)
        assert new.healthy and new.active == 0
        assert old_id not in api.peers and set(api.peers) == {id(kept), id(new)}
        assert "upstream api: app.test resolved 10.0.0.1, 10.0.0.2 → 10.0.0.2, 10.0.0.3" in caplog.text
        # the nested upstream sees the change through the shared balancer and the peers view
        assert split.peer_for(new).address == Address("10.0.0.3", 8080)
        assert old_id not in split.peers and id(new) in split.peers and len(split.peers) == 3
        assert {b.key for b in split.balancer.backends} == {"10.0.0.2:8080", "10.0.0.3:8080", "10.5.0.1:80"}
        picked = {b.key for _ in range(8) for b in split.candidates()._it}  # type: ignore[attr-defined]
        assert "10.0.0.3:8080" in picked and "10.0.0.1:8080" not in picked
        # a backend dropped while a connection still held it in its fail-over order is still dialled right
        assert api.peer_for(first).address == first.address and split.peer_for(first).address == first.address
        assert all(q[1] == dns.TYPE_A for q in server.queries)  # ipv4_only: A queries only
        assert len({q[2] for q in server.queries}) > 1 and len({q[3] for q in server.queries}) > 1  # random ids, ports
    finally:
        for upstream in ups.values():
            if upstream.resolver is not None:
                await upstream.resolver.stop()
        await server.aclose()


@on_loop
async def test_a_failure_keeps_the_last_addresses_until_the_name_resolves_again(caplog: pytest.LogCaptureFixture) -> None:
    server = await DnsServer.start()
    ups: dict[str, Upstream] = {}
    try:
        server.set("app.test", "10.0.0.1")
        ups = build_upstreams(config([server], '[upstreams.api]\nbackends = ["app.test:80"]\nipv4_only = true\n'))
        api = ups["api"]
        resolver = api.resolver
        assert resolver is not None
        await resolver.resolve_now()
        backend = api.balancer.backends[0]
        del server.zone["app.test"]  # NXDOMAIN from now on
        state = resolver.state("app.test")
        with caplog.at_level(logging.INFO, "ferryman.upstream.resolver"):
            resolver.start()
            await until(lambda: state.failures >= 1, "a failed lookup")
            assert api.balancer.backends == (backend,) and id(backend) in api.peers
            assert "upstream api: resolving app.test failed: NXDOMAIN" in caplog.text
            assert "keeping 10.0.0.1" in caplog.text
            assert state.error.startswith("NXDOMAIN") and state.addresses == ("10.0.0.1",)
            server.set("app.test", "10.0.0.9")
            await until(lambda: addresses(api) == ["10.0.0.9:80"], "the name to come back")
        assert state.failures == 0 and state.error == ""
    finally:
        if ups and ups["api"].resolver is not None:
            await ups["api"].resolver.stop()
        await server.aclose()


@on_loop
async def test_a_name_that_does_not_resolve_at_load_leaves_no_backend_and_does_not_crash() -> None:
    server = await DnsServer.start()
    ups: dict[str, Upstream] = {}
    try:
        ups = build_upstreams(config([server], '[upstreams.api]\nbackends = ["missing.test:80"]\n'))
        api = ups["api"]
        assert api.resolver is not None
        assert await api.resolver.resolve_now() is False
        assert api.balancer.backends == ()
        with pytest.raises(ProxyError) as info:
            api.next_backend(api.candidates(), None)
        assert info.value.kind is ErrorKind.NO_BACKEND
        state = api.resolver.state("missing.test")
        assert not state.resolved and state.failures == 1 and "NXDOMAIN" in state.error
        assert math.isfinite(state.due)  # retried later (resolve_interval 0 would retry too)
    finally:
        if ups:
            await ups["api"].resolver.stop()  # type: ignore[union-attr]
        await server.aclose()


@on_loop
async def test_resolve_interval_zero_resolves_once() -> None:
    server = await DnsServer.start()
    try:
        server.set("app.test", "10.0.0.1")
        ups = build_upstreams(config([server], '[upstreams.api]\nbackends = ["app.test:80"]\nresolve_interval = "0s"\n'))
        resolver = ups["api"].resolver
        assert resolver is not None
        resolver.start()
        await until(lambda: resolver.state("app.test").resolved, "the first resolution")
        assert resolver.state("app.test").due == math.inf and resolver.running
        await resolver.stop()
        assert not resolver.running
    finally:
        await server.aclose()


@on_loop
async def test_cname_chain_and_the_smallest_ttl() -> None:
    server = await DnsServer.start()
    try:
        server.zone["www.test"] = [Record("www.test", dns.TYPE_CNAME, "edge.test", 300)]
        server.set("edge.test", "10.0.0.7", ttl=120)
        result = await DnsLookup([server.address])("www.test", True)
        assert result == Resolution(("10.0.0.7",), 120.0)
    finally:
        await server.aclose()


# --- servers failing ----------------------------------------------------------------------------

@on_loop
async def test_a_server_that_does_not_answer_makes_the_next_one_asked() -> None:
    silent, good = await DnsServer.start(), await DnsServer.start()
    try:
        silent.mode = "drop"
        good.set("app.test", "10.0.0.1")
        result = await DnsLookup([silent.address, good.address])("app.test", True)
        assert result.addresses == ("10.0.0.1",)
        assert [q[0] for q in silent.queries] == ["app.test"] and [q[0] for q in good.queries] == ["app.test"]
    finally:
        await silent.aclose()
        await good.aclose()


@on_loop
async def test_servfail_moves_on_and_every_reason_is_reported() -> None:
    bad, good = await DnsServer.start(), await DnsServer.start()
    try:
        bad.mode = "servfail"
        good.set("app.test", "10.0.0.1")
        assert (await DnsLookup([bad.address, good.address])("app.test", True)).addresses == ("10.0.0.1",)
        good.mode = "servfail"
        with pytest.raises(LookupFailed, match=f"A query failed: {bad.address}: SERVFAIL; {good.address}: SERVFAIL"):
            await DnsLookup([bad.address, good.address])("app.test", True)
    finally:
        await bad.aclose()
        await good.aclose()


@on_loop
async def test_a_closed_port_fails_over_at_once_and_a_timeout_is_named() -> None:
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    closed_address = Address("127.0.0.1", closed.getsockname()[1])
    closed.close()  # nobody listens: the kernel answers ICMP port unreachable
    silent = await DnsServer.start(tcp=False)
    try:
        silent.mode = "drop"
        with pytest.raises(LookupFailed) as info:
            await DnsLookup([closed_address, silent.address], timeout=0.2)("app.test", True)
        assert str(info.value) == f"A query failed: {closed_address}: port unreachable; {silent.address}: no answer within 0.2s"
    finally:
        await silent.aclose()


@on_loop
async def test_a_truncated_answer_is_asked_again_over_tcp() -> None:
    server = await DnsServer.start()
    try:
        server.truncate = True
        server.set("app.test", *(f"10.0.0.{i}" for i in range(1, 6)))
        result = await DnsLookup([server.address])("app.test", True)
        assert result.addresses == tuple(f"10.0.0.{i}" for i in range(1, 6))
        assert server.tcp_queries == [("app.test", dns.TYPE_A)]
    finally:
        await server.aclose()


@on_loop
async def test_when_only_aaaa_fails_the_old_ipv6_addresses_are_kept() -> None:
    server = await DnsServer.start()
    try:
        server.set("app.test", "10.0.0.1", "fd00::1")
        ups = build_upstreams(config([server], '[upstreams.api]\nbackends = ["app.test:80"]\n'))
        api = ups["api"]
        assert api.resolver is not None
        await api.resolver.resolve_now()
        assert addresses(api) == ["10.0.0.1:80", "[fd00::1]:80"]
        v6 = api.balancer.backends[1]
        server.set("app.test", "10.0.0.2", "fd00::2")
        server.fail_types = {dns.TYPE_AAAA}
        await api.resolver.resolve_now()
        assert addresses(api) == ["10.0.0.2:80", "[fd00::1]:80"] and api.balancer.backends[1] is v6
    finally:
        await server.aclose()


@on_loop
async def test_resolve_now_is_bounded_and_stop_cancels_what_is_left() -> None:
    silent = await DnsServer.start(tcp=False)
    try:
        silent.mode = "drop"
        ups = build_upstreams(config([silent], '[upstreams.api]\nbackends = ["app.test:80"]\n'))
        resolver = ups["api"].resolver
        assert resolver is not None
        gate = FirstResolution([resolver], timeout=0.1)
        await gate.start()  # returns after the bound although the lookup goes on
        assert not resolver.state("app.test").resolved and resolver._pending
        await resolver.stop()
        assert not resolver._pending
    finally:
        await silent.aclose()


# --- the system resolver ------------------------------------------------------------------------

@on_loop
async def test_system_resolver_reads_localhost_from_the_hosts_file() -> None:
    result = await SystemLookup()("localhost", True)
    assert result.addresses[0] == "127.0.0.1" and result.ttl is None
    ups = build_upstreams(load_text('[upstreams.api]\nbackends = ["localhost:9000", "127.0.0.2:9000"]\nipv4_only = true\n'))
    api = ups["api"]
    assert api.resolver is not None
    assert await api.resolver.resolve_now()
    assert addresses(api) == ["127.0.0.1:9000", "127.0.0.2:9000"]
    assert api.resolver.state("localhost").ttl is None


# --- health checker and reload ------------------------------------------------------------------

@on_loop
async def test_health_checker_and_passive_health_follow_the_backends() -> None:
    server = await DnsServer.start()
    try:
        server.set("app.test", "10.0.0.1", "10.0.0.2")
        ups = build_upstreams(config([server], """
[upstreams.api]
backends = ["app.test:80"]
ipv4_only = true
health_check = { interval = "1h" }
"""))
        api = ups["api"]
        api.passive = PassiveHealth(max_fails=3, fail_window=60.0, cool_down=60.0, count_5xx=True)
        assert api.checker is not None and api.resolver is not None
        assert api.checker.backends == ()
        await api.resolver.resolve_now()
        assert api.checker.backends == api.balancer.backends
        dropped, kept = api.balancer.backends
        assert dropped.passive is api.passive and kept.passive is api.passive
        state = api.checker.state(kept)
        api.passive.failure(dropped, "connection refused")
        api.passive.failure(kept, "connection refused")
        server.set("app.test", "10.0.0.2", "10.0.0.3")
        await api.resolver.resolve_now()
        assert api.checker.backends == api.balancer.backends and api.balancer.backends[0] is kept
        assert api.checker.state(kept) is state
        assert api.balancer.backends[1].passive is api.passive
        assert api.passive.state(kept).failures == 1 and api.passive.state(dropped).failures == 0  # forgotten
    finally:
        await server.aclose()


@on_loop
async def test_reload_keeps_an_unchanged_upstream_with_its_resolved_backends() -> None:
    one, two = await DnsServer.start(), await DnsServer.start()
    try:
        one.set("app.test", "10.0.0.1")
        text = '[upstreams.api]\nbackends = ["app.test:80"]\nipv4_only = true\n'
        first = build_upstreams(config([one], text))
        resolver = first["api"].resolver
        assert resolver is not None
        await resolver.resolve_now()
        backends = first["api"].balancer.backends
        again = build_upstreams(config([one], text), first)
        assert again["api"] is first["api"] and again["api"].balancer.backends == backends
        # new DNS servers: the same upstream and resolver, asking the new servers from now on
        moved = build_upstreams(config([two], text), again)
        assert moved["api"] is first["api"] and moved["api"].resolver is resolver
        assert resolver.lookup.servers == (two.address,)
        two.set("app.test", "10.0.0.1")
        await resolver.resolve_now()
        assert len(two.queries) == 1 and moved["api"].balancer.backends == backends
        changed = build_upstreams(config([two], text.replace("80", "81")), moved)
        assert changed["api"] is not first["api"] and changed["api"].resolver is not resolver
    finally:
        await one.aclose()
        await two.aclose()


def test_a_resolver_keeps_backend_objects_across_lines_and_order() -> None:
    """Two lines with one name: one Backend per address per line, in config order."""
    received: list[tuple[Backend, ...]] = []
    lines = [Backend(Address("app.test", 80), 2), Backend(Address("10.0.0.9", 80)), Backend(Address("app.test", 81))]

    class Fixed:
        servers: tuple[Address, ...] = ()
        answer = ("10.0.0.1", "10.0.0.2")

        async def __call__(self, host: str, ipv4_only: bool) -> Resolution:
            return Resolution(self.answer, 60.0)

    lookup = Fixed()
    resolver = BackendResolver("api", lines, lookup=lookup, apply=received.append)

    async def main() -> None:
        await resolver.resolve_now()
        lookup.answer = ("10.0.0.2", "10.0.0.1")  # same set, other order: no change
        await resolver.resolve_now()
        lookup.answer = ("10.0.0.2",)
        await resolver.resolve_now()

    on_loop(main)()
    assert len(received) == 2
    assert [(b.key, b.weight) for b in received[0]] == [
        ("10.0.0.1:80", 2), ("10.0.0.2:80", 2), ("10.0.0.9:80", 1), ("10.0.0.1:81", 1), ("10.0.0.2:81", 1),
    ]
    assert received[1] == (received[0][1], received[0][2], received[0][4])
    assert received[0][2] is lines[1]

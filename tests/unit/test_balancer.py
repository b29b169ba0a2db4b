"""Balancer and WeightedUpstreams: health filtering, max_tries, weighted split, fail-over."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ferryman.net.addr import Address
from ferryman.upstream.backend import Backend
from ferryman.upstream.balancer import Balancer, WeightedUpstreams


def make(prefix: str, count: int) -> list[Backend]:
    return [Backend(Address(f"10.{prefix}.0.{i + 1}", 80)) for i in range(count)]


def keys(backends) -> list[str]:
    return [b.key for b in backends]


# --- Balancer -------------------------------------------------------------------------


def test_balancer_defaults_to_round_robin() -> None:
    backends = make("1", 3)
    balancer = Balancer(backends)
    assert balancer.lb == "round_robin"
    assert balancer.backends == tuple(backends)
    assert [next(balancer.select()) for _ in range(4)] == [*backends, backends[0]]


def test_balancer_skips_unhealthy_backends() -> None:
    a, b, c = make("1", 3)
    balancer = Balancer([a, b, c])
    b.healthy = False
    assert balancer.healthy_count == 2
    for _ in range(5):
        order = list(balancer.select())
        assert b not in order and len(order) == 2


def test_balancer_honours_max_tries() -> None:
    balancer = Balancer(make("1", 5), "weighted")
    assert len(list(balancer.select(max_tries=2))) == 2
    assert len(list(balancer.select(max_tries=1))) == 1
    assert list(balancer.select(max_tries=0)) == []
    assert len(list(balancer.select(max_tries=99))) == 5
    assert len(list(balancer.select())) == 5


def test_balancer_max_tries_counts_healthy_backends_only() -> None:
    backends = make("1", 4)
    backends[1].healthy = False
    balancer = Balancer(backends)
    order = list(balancer.select(max_tries=3))
    assert order == [backends[0], backends[2], backends[3]]


def test_balancer_all_down_yields_nothing() -> None:
    backends = make("1", 3)
    for b in backends:
        b.healthy = False
    balancer = Balancer(backends, "least_conn")
    assert balancer.healthy_count == 0
    assert list(balancer.select(b"k")) == []


def test_balancer_passes_key_and_rng() -> None:
    hashed = Balancer(make("1", 8), "consistent_hash")
    assert len({next(hashed.select(b"203.0.113.9")).key for _ in range(10)}) == 1
    one = Balancer(make("1", 4), "random", rng=random.Random(8))
    two = Balancer(make("1", 4), "random", rng=random.Random(8))
    assert [next(one.select()).key for _ in range(30)] == [next(two.select()).key for _ in range(30)]


def test_balancer_rejects_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unknown load-balancing algorithm"):
        Balancer(make("1", 1), "sticky")


# --- WeightedUpstreams ----------------------------------------------------------------


def owner(backend: Backend) -> str:
    return backend.address.host.split(".")[1]


def test_weighted_upstreams_split_exactly_three_to_one() -> None:
    stable = Balancer(make("1", 2))
    canary = Balancer(make("2", 2))
    split = WeightedUpstreams([(stable, 3), (canary, 1)])
    counts = Counter(owner(next(split.select())) for _ in range(400))
    assert counts == {"1": 300, "2": 100}


def test_weighted_upstreams_yield_first_member_then_fail_over() -> None:
    a = make("1", 2)
    b = make("2", 2)
    split = WeightedUpstreams([(Balancer(a), 1), (Balancer(b), 1)])
    assert list(split.select()) == [a[0], a[1], b[0], b[1]]
    assert list(split.select()) == [b[1], b[0], a[1], a[0]]


def test_weighted_upstreams_fail_over_when_a_member_is_all_down() -> None:
    a = make("1", 2)
    b = make("2", 2)
    split = WeightedUpstreams([(Balancer(a), 3), (Balancer(b), 1)])
    for backend in a:
        backend.healthy = False
    assert split.healthy_count == 2
    picks = [next(split.select()) for _ in range(400)]
    assert {owner(p) for p in picks} == {"2"}
    assert Counter(keys(picks)) == {b[0].key: 200, b[1].key: 200}
    assert sorted(keys(split.select())) == sorted(keys(b))
    # The member recovers: the 3:1 split resumes.
    a[0].healthy = True
    counts = Counter(owner(next(split.select())) for _ in range(400))
    assert counts == {"1": 300, "2": 100}


def test_weighted_upstreams_everything_down() -> None:
    a = make("1", 1)
    b = make("2", 1)
    split = WeightedUpstreams([(Balancer(a), 1), (Balancer(b), 1)])
    a[0].healthy = b[0].healthy = False
    assert list(split.select()) == []
    assert split.healthy_count == 0


def test_weighted_upstreams_max_tries_spans_members() -> None:
    a = make("1", 2)
    b = make("2", 2)
    split = WeightedUpstreams([(Balancer(a), 1), (Balancer(b), 1)])
    assert list(split.select(max_tries=3)) == [a[0], a[1], b[0]]
    assert list(split.select(max_tries=0)) == []


def test_weighted_upstreams_nest_and_deduplicate() -> None:
    shared = make("9", 1)[0]
    a = [*make("1", 1), shared]
    b = [shared, *make("2", 1)]
    c = make("3", 1)
    inner = WeightedUpstreams([(Balancer(a), 1), (Balancer(b), 1)])
    outer = WeightedUpstreams([(inner, 1), (Balancer(c), 1)])
    assert keys(outer.backends) == [a[0].key, shared.key, b[1].key, c[0].key]
    for _ in range(6):
        order = list(outer.select())
        assert sorted(keys(order)) == sorted(keys(outer.backends))
    # Outer alternates inner / c; inner alternates a / b.
    firsts = [owner(next(outer.select())) for _ in range(8)]
    assert Counter(firsts)["3"] == 4


def test_weighted_upstreams_reject_bad_weight() -> None:
    with pytest.raises(ValueError):
        WeightedUpstreams([(Balancer(make("1", 1)), 0)])

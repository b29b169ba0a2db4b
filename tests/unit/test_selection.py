"""Selection algorithms: exact orders, fairness, health skipping, ketama stability."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ferryman.net.addr import Address
from ferryman.upstream.backend import Backend, parse_backend
from ferryman.upstream.selection import ALGORITHMS, ConsistentHash, make_selection
from ferryman.upstream.selection.smooth import MAX_SCHEDULE, SmoothWeighted, smooth_sequence


def make(*weights: int) -> list[Backend]:
    """Backends 10.0.0.1:80, 10.0.0.2:80, ... with the given weights."""
    return [Backend(Address(f"10.0.0.{i + 1}", 80), weight=w) for i, w in enumerate(weights)]


def firsts(selection, picks: int, key: bytes = b"") -> list[Backend]:
    return [next(selection.select(key)) for _ in range(picks)]


class Scripted(random.Random):
    """A Random whose ``random()`` returns the given values in order."""

    def __init__(self, values: list[float]) -> None:
        super().__init__(0)
        self._values = iter(values)

    def random(self) -> float:
        return next(self._values)


# --- registry -------------------------------------------------------------------------


def test_registry_names() -> None:
    assert set(ALGORITHMS) == {"round_robin", "weighted", "least_conn", "random", "p2c", "consistent_hash"}
    for name, cls in ALGORITHMS.items():
        assert isinstance(make_selection(name, make(1, 1)), cls)


def test_unknown_algorithm_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown load-balancing algorithm 'fastest'.*round_robin"):
        make_selection("fastest", make(1))


def test_zero_weight_rejected() -> None:
    with pytest.raises(ValueError, match="weight 0"):
        make_selection("weighted", make(1, 0))


# --- properties every algorithm shares ------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_failover_yields_every_backend_once(name: str) -> None:
    backends = make(1, 2, 3, 1, 5)
    selection = make_selection(name, backends, rng=random.Random(7))
    for i in range(50):
        order = list(selection.select(f"key-{i}".encode()))
        assert len(order) == len(backends)
        assert {id(b) for b in order} == {id(b) for b in backends}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_unhealthy_backends_are_never_yielded(name: str) -> None:
    backends = make(1, 2, 3, 1)
    backends[1].healthy = False
    backends[3].healthy = False
    selection = make_selection(name, backends, rng=random.Random(7))
    for i in range(200):
        order = list(selection.select(f"key-{i}".encode()))
        assert sorted(b.key for b in order) == ["10.0.0.1:80", "10.0.0.3:80"]


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_all_down_or_empty_yields_nothing(name: str) -> None:
    backends = make(1, 1, 1)
    for b in backends:
        b.healthy = False
    assert list(make_selection(name, backends).select(b"k")) == []
    assert list(make_selection(name, []).select(b"k")) == []


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_recovered_backend_is_picked_again(name: str) -> None:
    backends = make(1, 1)
    backends[0].healthy = False
    selection = make_selection(name, backends, rng=random.Random(3))
    assert {id(b) for b in firsts(selection, 20, b"k")} == {id(backends[1])}
    backends[0].healthy = True
    backends[1].healthy = False
    assert {id(b) for b in firsts(selection, 20, b"k")} == {id(backends[0])}


# --- round robin ----------------------------------------------------------------------


def test_round_robin_rotates_and_ignores_weights() -> None:
    a, b, c = make(5, 1, 1)
    rr = make_selection("round_robin", [a, b, c])
    assert firsts(rr, 7) == [a, b, c, a, b, c, a]


def test_round_robin_failover_order_follows_rotation() -> None:
    a, b, c = make(1, 1, 1)
    rr = make_selection("round_robin", [a, b, c])
    assert list(rr.select()) == [a, b, c]
    assert list(rr.select()) == [b, c, a]
    assert list(rr.select()) == [c, a, b]


def test_round_robin_stays_even_with_a_backend_down() -> None:
    a, b, c, d = make(1, 1, 1, 1)
    b.healthy = False
    rr = make_selection("round_robin", [a, b, c, d])
    assert firsts(rr, 6) == [a, c, d, a, c, d]


# --- smooth weighted ------------------------------------------------------------------


def test_weighted_is_nginx_smooth_sequence() -> None:
    a, b, c = make(5, 1, 1)
    weighted = make_selection("weighted", [a, b, c])
    assert firsts(weighted, 14) == [a, a, b, a, c, a, a] * 2


def test_smooth_sequence_reference_values() -> None:
    assert smooth_sequence([5, 1, 1], 7) == [0, 0, 1, 0, 2, 0, 0]
    assert smooth_sequence([3, 1], 4) == [0, 0, 1, 0]
    # Scaling all weights changes nothing (the schedule is built on weights / gcd).
    engine = SmoothWeighted([10, 2, 2])
    assert [engine.next(lambda i: True) for _ in range(7)] == [0, 0, 1, 0, 2, 0, 0]


def test_weighted_failover_after_the_pick() -> None:
    a, b, c = make(5, 1, 1)
    weighted = make_selection("weighted", [a, b, c])
    assert list(weighted.select()) == [a, b, c]
    assert list(weighted.select()) == [a, b, c]
    assert list(weighted.select()) == [b, c, a]


def test_weighted_shares_a_down_backends_turns_by_weight() -> None:
    a, b, c = make(5, 1, 1)
    b.healthy = False
    weighted = make_selection("weighted", [a, b, c])
    counts = Counter(x.key for x in firsts(weighted, 42))
    assert counts == {a.key: 35, c.key: 7}


def test_weighted_without_schedule_uses_live_algorithm() -> None:
    weights = [MAX_SCHEDULE + 10, 1]
    engine = SmoothWeighted(weights)
    picks = [engine.next(lambda i: True) for _ in range(sum(weights))]
    assert Counter(picks) == {0: weights[0], 1: 1}
    # The live algorithm interleaves like the schedule does: the light item is mid-period.
    assert picks.index(1) == sum(weights) // 2


# --- least connections ----------------------------------------------------------------


def test_least_conn_picks_fewest_active() -> None:
    a, b, c = make(1, 1, 1)
    a.active, b.active, c.active = 5, 1, 3
    lc = make_selection("least_conn", [a, b, c])
    assert list(lc.select()) == [b, c, a]
    b.active = 9
    assert next(lc.select()) is c


def test_least_conn_divides_by_weight() -> None:
    a, b = make(1, 4)
    a.active, b.active = 2, 4  # loads 2.0 and 1.0
    lc = make_selection("least_conn", [a, b])
    assert next(lc.select()) is b
    b.active = 12  # load 3.0
    assert next(lc.select()) is a


def test_least_conn_breaks_ties_round_robin() -> None:
    a, b, c = make(1, 1, 1)
    lc = make_selection("least_conn", [a, b, c])
    assert firsts(lc, 6) == [a, b, c, a, b, c]
    c.active = 1
    assert firsts(lc, 4) == [a, b, a, b]


def test_least_conn_balances_when_caller_counts_connections() -> None:
    backends = make(1, 2, 1)
    lc = make_selection("least_conn", backends)
    for _ in range(400):
        next(lc.select()).active += 1
    assert [b.active for b in backends] == [100, 200, 100]


# --- random and p2c -------------------------------------------------------------------


def test_random_distribution_follows_weights() -> None:
    backends = make(1, 2, 7)
    rnd = make_selection("random", backends, rng=random.Random(1234))
    counts = Counter(b.key for b in firsts(rnd, 20000))
    for backend, expected in zip(backends, (0.1, 0.2, 0.7)):
        assert abs(counts[backend.key] / 20000 - expected) < 0.015


def test_random_redistributes_a_down_backend_by_weight() -> None:
    backends = make(1, 2, 7)
    backends[2].healthy = False
    rnd = make_selection("random", backends, rng=random.Random(99))
    counts = Counter(b.key for b in firsts(rnd, 20000))
    assert set(counts) == {backends[0].key, backends[1].key}
    assert abs(counts[backends[0].key] / 20000 - 1 / 3) < 0.015


def test_random_is_deterministic_with_a_seeded_rng() -> None:
    one = make_selection("random", make(1, 2, 3), rng=random.Random(5))
    two = make_selection("random", make(1, 2, 3), rng=random.Random(5))
    assert [b.key for b in firsts(one, 50)] == [b.key for b in firsts(two, 50)]


def test_p2c_picks_the_less_loaded_of_two() -> None:
    a, b = make(1, 1)
    a.active, b.active = 10, 0
    # 0.1 draws a, 0.9 draws b (equal weights split [0, 1) at 0.5).
    assert next(make_selection("p2c", [a, b], rng=Scripted([0.1, 0.9])).select()) is b
    assert next(make_selection("p2c", [a, b], rng=Scripted([0.9, 0.1])).select()) is b
    # Both draws on the loaded one: it is the only candidate.
    assert next(make_selection("p2c", [a, b], rng=Scripted([0.1, 0.2])).select()) is a


def test_p2c_compares_active_per_weight() -> None:
    a, b = make(3, 1)
    a.active, b.active = 3, 2  # loads 1.0 and 2.0: a wins despite more connections
    # a owns [0, 0.75), b owns [0.75, 1).
    assert next(make_selection("p2c", [a, b], rng=Scripted([0.9, 0.1])).select()) is a


def test_p2c_avoids_a_hot_backend() -> None:
    backends = make(1, 1, 1, 1)
    backends[0].active = 100
    p2c = make_selection("p2c", backends, rng=random.Random(42))
    hot = sum(1 for b in firsts(p2c, 8000) if b is backends[0])
    # Chosen only when both draws land on it: 1/16 of the time.
    assert 0.04 < hot / 8000 < 0.085


# --- consistent hash ------------------------------------------------------------------


def ring(*servers: str, weight: int = 1) -> tuple[ConsistentHash, dict[str, Backend]]:
    backends = [parse_backend(f"{s} weight={weight}") for s in servers]
    return ConsistentHash(backends), {b.key: b for b in backends}


def first_key(selection: ConsistentHash, key: bytes) -> str:
    return next(selection.select(key)).key


def test_consistent_hash_matches_nginx_and_pingora_ketama() -> None:
    # Reference mappings published with pingora-ketama, itself checked against nginx.
    c, _ = ring("127.0.0.1:7777", "127.0.0.1:7778")
    assert first_key(c, b"/some/path") == "127.0.0.1:7778"
    assert first_key(c, b"/some/longer/path") == "127.0.0.1:7777"
    assert first_key(c, b"/sad/zaidoon") == "127.0.0.1:7778"
    assert first_key(c, b"/g") == "127.0.0.1:7777"
    assert first_key(c, b"/pingora/team/is/cool/and/this/is/a/long/uri") == "127.0.0.1:7778"
    assert first_key(c, b"/i/am/not/confident/in/this/code") == "127.0.0.1:7777"
    for count in (10, 11):
        c, _ = ring(*(f"127.0.0.{u}:6443" for u in range(1, count + 1)))
        assert first_key(c, b"a") == "127.0.0.10:6443"
        assert first_key(c, b"b") == "127.0.0.5:6443"


def test_consistent_hash_failover_walks_the_ring_clockwise() -> None:
    c, _ = ring("127.0.0.1:7777", "127.0.0.1:7778", "127.0.0.1:7779")
    assert [b.key for b in c.select(b"doghash")] == ["127.0.0.1:7778", "127.0.0.1:7779", "127.0.0.1:7777"]


def test_consistent_hash_same_key_same_backend() -> None:
    c, _ = ring(*(f"10.1.0.{i}:80" for i in range(1, 6)))
    for i in range(200):
        key = f"192.168.{i}.7".encode()
        assert len({first_key(c, key) for _ in range(5)}) == 1
    # A rebuilt ring (config reload) maps identically.
    again, _ = ring(*(f"10.1.0.{i}:80" for i in range(1, 6)))
    keys = [f"client-{i}".encode() for i in range(500)]
    assert [first_key(c, k) for k in keys] == [first_key(again, k) for k in keys]


KEYS = [f"172.16.{i // 256}.{i % 256}".encode() for i in range(20000)]


def test_consistent_hash_removal_moves_only_the_removed_backends_keys() -> None:
    servers = [f"10.2.0.{i}:8080" for i in range(1, 11)]
    full, _ = ring(*servers)
    removed = servers[3]
    smaller, _ = ring(*(s for s in servers if s != removed))
    before = {k: first_key(full, k) for k in KEYS}
    after = {k: first_key(smaller, k) for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(before[k] == removed for k in moved)
    assert len(moved) == sum(1 for k in KEYS if before[k] == removed)
    assert 0.05 < len(moved) / len(KEYS) < 0.15  # roughly 1/N


def test_consistent_hash_addition_moves_keys_only_to_the_new_backend() -> None:
    servers = [f"10.3.0.{i}:80" for i in range(1, 9)]
    small, _ = ring(*servers)
    big, _ = ring(*servers, "10.3.0.9:80")
    moved = [k for k in KEYS if first_key(small, k) != first_key(big, k)]
    assert all(first_key(big, k) == "10.3.0.9:80" for k in moved)
    assert 0.06 < len(moved) / len(KEYS) < 0.17  # roughly 1/9


def test_consistent_hash_down_backend_equals_removed_backend() -> None:
    servers = [f"10.4.0.{i}:80" for i in range(1, 7)]
    full, by_key = ring(*servers)
    smaller, _ = ring(*(s for s in servers if s != servers[2]))
    by_key[servers[2]].healthy = False
    for k in KEYS[:3000]:
        assert first_key(full, k) == first_key(smaller, k)


def test_consistent_hash_weight_scales_share() -> None:
    heavy = parse_backend("10.5.0.1:80 weight=3")
    light = parse_backend("10.5.0.2:80")
    c = ConsistentHash([heavy, light])
    share = sum(1 for k in KEYS if next(c.select(k)) is heavy) / len(KEYS)
    assert 0.65 < share < 0.85


def test_consistent_hash_unix_and_ipv6_keys() -> None:
    c, _ = ring("unix:/run/a.sock", "unix:/run/b.sock", "[::1]:80")
    assert {b.key for b in c.select(b"x")} == {"unix:/run/a.sock", "unix:/run/b.sock", "[::1]:80"}

"""The shared rate estimator: one board, several processes (real forks), and a driven clock."""

from __future__ import annotations

import os

import pytest

from ferryman.limits.rate import Rate
from ferryman.limits.shared_rate import PROBES, RateBoard


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_one_worker_behaves_like_the_process_local_estimator() -> None:
    clock = Clock()
    shared = RateBoard(1, slots=64).rate("rl", 1.0, 0, clock)
    local = Rate(1.0, clock)
    local.start = 1000.0  # the same window boundaries
    for step in range(400):
        clock.t = 1000.0 + step * 0.013
        key = f"k{step % 3}"
        assert shared.admit(key, 7) == local.admit(key, 7), step
        assert shared.estimate(key) == pytest.approx(local.estimate(key))
        assert shared.wait(key, 7) == pytest.approx(local.wait(key, 7))


def test_workers_see_each_others_counts() -> None:
    clock = Clock()
    board = RateBoard(3, slots=64)
    rates = [board.rate("rl", 1.0, w, clock) for w in range(3)]
    admitted = sum(rates[i % 3].admit("client", 10) for i in range(30))
    assert admitted == 10  # not 30: the limit is for the whole process tree
    assert rates[1].estimate("client") == 10
    clock.t += 2.5  # two windows later: forgotten
    assert rates[2].admit("client", 10)


def test_limiters_and_keys_do_not_mix() -> None:
    clock = Clock()
    board = RateBoard(2, slots=64)
    a, b = board.rate("a", 1.0, 0, clock), board.rate("b", 1.0, 1, clock)
    assert all(a.admit("x", 3) for _ in range(3))
    assert not a.admit("x", 3)
    assert b.admit("x", 3) and a.admit("y", 3)


def test_a_full_table_reuses_the_least_recently_used_slot() -> None:
    clock = Clock()
    rate = RateBoard(1, slots=PROBES).rate("rl", 1.0, 0, clock)  # every key probes every slot
    assert rate.admit("k0", 1)  # in window 1000
    clock.t += 1.0  # recency is kept per window: k0 is now the least recently used
    for i in range(1, PROBES):
        clock.t += 0.01
        assert rate.admit(f"k{i}", 1)
    assert not rate.admit("k3", 1)
    clock.t += 0.01
    assert rate.admit("new", 1)  # took k0's slot (the oldest)...
    assert [rate.estimate(f"k{i}") > 0 for i in range(PROBES)] == [False] + [True] * (PROBES - 1)  # ...the others are intact


def test_forked_processes_share_one_limit() -> None:
    board = RateBoard(2, slots=1024)
    pipes = []
    for worker in range(2):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # a worker: count as fast as it can for one key, report what it admitted
            os.close(read_end)
            rate = board.rate("rl", 3600.0, worker)  # one window for the whole test
            admitted = sum(rate.admit("client", 500) for _ in range(2000))
            os.write(write_end, str(admitted).encode())
            os._exit(0)
        os.close(write_end)
        pipes.append((pid, read_end))
    totals = []
    for pid, read_end in pipes:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        totals.append(int(os.read(read_end, 64)))
        os.close(read_end)
    assert 500 <= sum(totals) <= 502, totals  # lock-free: a same-instant race may let one more in
    assert board.rate("rl", 3600.0, 0).estimate("client") == sum(totals)

"""The health board: a seqlock snapshot across a real fork, and the follower's diff rule."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

from ferryman.upstream.backend import parse_backend
from ferryman.upstream.health_board import HealthBoard, HealthSync, checked_state


def upstreams(*backends):
    return {"app": SimpleNamespace(checker=SimpleNamespace(backends=list(backends)), balancer=SimpleNamespace(backends=list(backends)))}


def test_a_forked_reader_never_sees_a_torn_snapshot() -> None:
    board = HealthBoard(size=1 << 16)
    board.publish({"app": {"k0": True}})
    pid = os.fork()
    if pid == 0:  # the writer: many publications of growing and shrinking documents
        for i in range(3000):
            board.publish({"app": {f"k{j}": bool((i + j) % 2) for j in range(i % 50 + 1)}})
        os._exit(0)
    reads = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seq, state = board.read()  # parses: never half of one document and half of another
        assert seq % 2 == 0 and set(state) == {"app"}
        reads += 1
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
    assert reads > 0
    assert board.read()[1]["app"]["k0"] is True  # the last document: i=2999, j=0: odd, True


def test_a_follower_applies_only_what_changed_on_the_board() -> None:
    board = HealthBoard(size=1 << 16)
    a, b = parse_backend("10.0.0.1:80"), parse_backend("10.0.0.2:80")
    leader_view = upstreams(a, b)
    a2, b2 = parse_backend("10.0.0.1:80"), parse_backend("10.0.0.2:80")  # the follower's objects
    follower = HealthSync(board, lambda: upstreams(a2, b2), leader=False)
    leader = HealthSync(board, lambda: leader_view, leader=True)
    a.set_health(False)
    leader.sync()
    follower.sync()
    assert (a2.healthy, b2.healthy) == (False, True)
    b2.set_health(False)  # the follower's own (passive) ejection
    a.set_health(True)  # the checker readmits a, and says nothing new about b
    leader.sync()
    follower.sync()
    assert (a2.healthy, b2.healthy) == (True, False)  # b's ejection stands
    assert checked_state(leader_view) == {"app": {"10.0.0.1:80": True, "10.0.0.2:80": True}, "__disabled__": {}}


def test_backends_disabled_by_an_operator_reach_the_followers() -> None:
    board = HealthBoard(size=1 << 16)
    a, b = parse_backend("10.0.0.1:80"), parse_backend("10.0.0.2:80")
    a2, b2 = parse_backend("10.0.0.1:80"), parse_backend("10.0.0.2:80")

    def view(*backends):
        return {"app": SimpleNamespace(checker=None, balancer=SimpleNamespace(backends=list(backends)))}

    leader = HealthSync(board, lambda: view(a, b), leader=True)
    follower = HealthSync(board, lambda: view(a2, b2), leader=False)
    b.set_disabled(True)
    leader.sync()
    follower.sync()
    assert (b2.disabled, b2.healthy, a2.disabled) == (True, False, False)
    b.set_disabled(False)
    leader.sync()
    follower.sync()
    assert (b2.disabled, b2.healthy) == (False, True)

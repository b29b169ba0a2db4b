"""The two-window rate estimator, driven by a hand-moved clock (no sleeping), and rate specs."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferryman.limits import Rate, parse_rate


class Clock:
    """A plain time source: the test sets ``now``."""

    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rate(window: float = 10.0) -> tuple[Rate, Clock]:
    clock = Clock()
    return Rate(window, clock), clock


def test_default_clock_is_monotonic() -> None:
    assert Rate(1.0).clock is time.monotonic


@pytest.mark.parametrize("window", [0, -1.0, 0.0])
def test_window_must_be_positive(window: float) -> None:
    with pytest.raises(ValueError, match="window must be positive"):
        Rate(window)


def test_estimate_within_the_first_window_is_the_count() -> None:
    r, clock = rate()
    assert r.estimate("a") == 0
    assert r.observe("a") == 1
    assert r.observe("a", 3) == 4
    clock.now += 9.9
    assert r.estimate("a") == 4
    assert r.estimate("b") == 0


def test_previous_window_decays_linearly() -> None:
    r, clock = rate(window=10.0)
    r.observe("a", 8)
    clock.now += 10.0  # the next window begins: all 8 still overlap
    assert r.estimate("a") == 8
    clock.now += 2.5  # a quarter in: 8 * 0.75
    assert r.estimate("a") == 6.0
    assert r.observe("a", 2) == 8.0  # 6 + 2 in the current window
    clock.now += 5.0  # three quarters in: 8 * 0.25 + 2
    assert r.estimate("a") == 4.0


def test_window_roll_moves_current_to_previous() -> None:
    r, clock = rate(window=10.0)
    r.observe("a", 4)
    clock.now += 12.0
    r.observe("a", 6)
    clock.now += 10.0  # window 2, 2 s in: previous = window 1's 6 (window 0's 4 is gone)
    assert r.estimate("a") == pytest.approx(6 * 0.8)


def test_idle_for_two_windows_forgets_everything() -> None:
    r, clock = rate(window=10.0)
    r.observe("a", 5)
    clock.now += 20.0
    assert r.estimate("a") == 0
    assert len(r) == 0


def test_long_idle_keeps_windows_aligned() -> None:
    r, clock = rate(window=10.0)
    clock.now += 1234.5  # 123 whole windows later, 4.5 s into the current one
    r.observe("a", 10)
    assert r.start == 500.0 + 1230.0
    clock.now += 5.5  # exactly the next window
    assert r.estimate("a") == 10
    clock.now += 5.0
    assert r.estimate("a") == 5


def test_keys_are_evicted_when_windows_roll() -> None:
    r, clock = rate(window=1.0)
    for i in range(1000):
        r.observe(f"client-{i}")
    assert len(r) == 1000
    clock.now += 1.0
    r.observe("fresh")
    assert len(r) == 1001, "the last window's keys still count as previous"
    clock.now += 1.0
    assert len(r) == 1, "only the key of the last window is left"
    assert len(r.previous) == 1 and len(r.current) == 0
    clock.now += 1.0
    assert len(r) == 0


def test_admit_until_the_allowance_then_refuse_without_counting() -> None:
    r, _ = rate(window=1.0)
    assert [r.admit("a", 3) for _ in range(5)] == [True, True, True, False, False]
    assert r.estimate("a") == 3, "refused events are not counted"
    assert r.admit("b", 3), "keys are independent"


def test_wait_within_the_current_window() -> None:
    r, clock = rate(window=10.0)
    r.observe("a", 10)
    clock.now += 10.0  # next window: previous 10, current 0
    r.observe("a", 2)  # estimate 12 at f = 0
    # below 5 needs 10 * (1 - f) + 2 < 5 → f > 0.7 → 7 s
    assert r.wait("a", 5) == pytest.approx(7.0)
    clock.now += 3.0
    assert r.wait("a", 5) == pytest.approx(4.0)
    clock.now += 4.0
    assert not r.admit("a", 5), "at the boundary the estimate equals the allowance"
    clock.now += 0.001
    assert r.admit("a", 5)
    assert r.wait("b", 5) == 0.0


def test_wait_into_the_next_window() -> None:
    r, clock = rate(window=10.0)
    r.observe("a", 8)
    clock.now += 4.0
    # the current window alone holds 8 ≥ 4: next window 8 * (1 - g) < 4 → g > 0.5
    assert r.wait("a", 4) == pytest.approx(6.0 + 5.0)
    assert r.wait("a", 0) == math.inf
    clock.now += 11.0
    assert not r.admit("a", 4)
    clock.now += 0.01
    assert r.admit("a", 4)


@settings(max_examples=200, deadline=None)
@given(
    window=st.sampled_from([0.5, 1.0, 10.0, 60.0]),
    allowance=st.integers(1, 20),
    steps=st.lists(st.tuples(st.floats(0, 3), st.integers(1, 30)), min_size=1, max_size=6),
)
def test_wait_is_exact(window: float, allowance: int, steps: list[tuple[float, int]]) -> None:
    """After any history, a key is refused until ``wait`` has passed and admitted just after."""
    r, clock = rate(window)
    for advance, events in steps:
        clock.now += advance * window
        r.observe("k", events)
    wait = r.wait("k", allowance)
    assert wait >= 0.0
    if wait == 0.0:
        assert r.admit("k", allowance)
        return
    assert wait <= 2 * window
    eps = 1e-6 * window  # the estimate moves by >= 1e-6 meanwhile: far above float error
    if wait > eps:
        clock.now += wait - eps
        assert not r.admit("k", allowance)
        clock.now += 2 * eps
    else:
        clock.now += wait + eps
    assert r.admit("k", allowance)


def test_steady_demand_settles_at_the_allowance_per_window() -> None:
    r, clock = rate(window=1.0)
    admitted_per_window = []
    for _ in range(20):
        admitted = 0
        for _ in range(100):  # a request every 10 ms
            admitted += r.admit("a", 5)
            clock.now += 0.01
        admitted_per_window.append(admitted)
    assert admitted_per_window[0] == 5
    assert all(4 <= n <= 6 for n in admitted_per_window[1:]), admitted_per_window
    assert sum(admitted_per_window[1:]) == pytest.approx(5 * 19, abs=3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/s", (100, 1.0)),
        ("600/m", (600, 60.0)),
        ("1000/h", (1000, 3600.0)),
        ("50/10s", (50, 10.0)),
        ("1/5m", (1, 300.0)),
    ],
)
def test_parse_rate(text: str, expected: tuple[int, float]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    "text",
    ["100", "/s", "0/s", "01/s", "1.5/s", "100/S", " 100/s", "100/s ", "100 / s", "100/0s", "100/sec", "-1/s", "100/d", "", 100, None, "1/s/s"],
)
def test_parse_rate_is_strict(text: object) -> None:
    with pytest.raises(ValueError, match="is not a rate; use COUNT/UNIT"):
        parse_rate(text)

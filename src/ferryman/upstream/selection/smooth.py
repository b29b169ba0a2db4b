"""nginx's smooth weighted round robin, O(1) per pick in the common case.

Each pick adds every weight to its running ``current`` value, takes the largest and
subtracts the total from it. For weights a=5, b=1, c=1 that gives ``a a b a c a a``:
proportional and interleaved. The sequence repeats every ``sum(weights) / gcd`` picks,
so it is computed once at build time and replayed by a counter.

When the scheduled item is unavailable (a backend down, a member with no healthy
backend) the pick falls back to running nginx's algorithm live over the available
items only: O(n), but only while something is down. The scheduled turns of the
unavailable items are then shared among the others in proportion to their weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import gcd

#: Longest precomputed schedule; larger weight sums always use the live O(n) algorithm.
MAX_SCHEDULE = 1 << 16


def smooth_sequence(weights: Sequence[int], count: int) -> list[int]:
    """Return the first ``count`` picks (indices) of smooth weighted round robin."""
    current = [0] * len(weights)
    total = sum(weights)
    picks: list[int] = []
    for _ in range(count):
        best = -1
        for i, weight in enumerate(weights):
            current[i] += weight
            if best < 0 or current[i] > current[best]:
                best = i
        current[best] -= total
        picks.append(best)
    return picks


class SmoothWeighted:
    """Picks indices of a fixed weight list; ``next(up)`` skips indices where ``up`` is False."""

    __slots__ = ("weights", "_schedule", "_length", "_pos", "_current")

    def __init__(self, weights: Sequence[int]) -> None:
        if any(w < 1 for w in weights):
            raise ValueError(f"weights must be >= 1, got {list(weights)}")
        self.weights: tuple[int, ...] = tuple(weights)
        self._current = [0] * len(self.weights)
        self._pos = 0
        period = sum(self.weights) // gcd(*self.weights) if self.weights else 0
        self._schedule: list[int] | None = (
            smooth_sequence(self.weights, period) if 0 < period <= MAX_SCHEDULE else None
        )
        self._length = period

    def next(self, up: Callable[[int], bool]) -> int:
        """Return the next index whose item is up, or -1 when none is."""
        schedule = self._schedule
        if schedule is not None:
            index = schedule[self._pos]
            self._pos = self._pos + 1 if self._pos + 1 < self._length else 0
            if up(index):
                return index
        return self._live(up)

    def _live(self, up: Callable[[int], bool]) -> int:
        """nginx's algorithm over the available items only."""
        current = self._current
        best = -1
        total = 0
        for i, weight in enumerate(self.weights):
            if not up(i):
                continue
            current[i] += weight
            total += weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best >= 0:
            current[best] -= total
        return best

"""Weighted random and power-of-two-choices selections."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate

from ..backend import Backend
from .base import Selection, failover


class WeightedPicker:
    """Draws an index with probability proportional to its weight.

    O(log n) by bisecting cumulative weights; if the drawn index is not up, draws again
    among the up indices only (O(n), only while something is down), which keeps the
    odds proportional among the live ones.
    """

    __slots__ = ("weights", "_cumulative", "_total", "_random")

    def __init__(self, weights: Sequence[int], rng: random.Random) -> None:
        self.weights = tuple(weights)
        self._cumulative = list(accumulate(self.weights))
        self._total = self._cumulative[-1] if self._cumulative else 0
        self._random = rng.random

    def pick(self, up: Callable[[int], bool]) -> int:
        """Return a weighted-random index whose item is up, or -1 when none is."""
        if not self._total:
            return -1
        index = bisect_right(self._cumulative, self._random() * self._total)
        if index >= len(self.weights):  # float rounding at the top edge
            index = len(self.weights) - 1
        if up(index):
            return index
        live = [i for i in range(len(self.weights)) if up(i)]
        if not live:
            return -1
        point = self._random() * sum(self.weights[i] for i in live)
        for i in live:
            point -= self.weights[i]
            if point < 0:
                return i
        return live[-1]


class Random(Selection):
    """Weighted random first pick; fail over in list order after it."""

    name = "random"

    def __init__(self, backends: Sequence[Backend], *, rng: random.Random | None = None) -> None:
        super().__init__(backends, rng=rng)
        self._picker = WeightedPicker([b.weight for b in self.backends], rng or random.Random())

    def select(self, key: bytes = b"") -> Iterator[Backend]:
        index = self._picker.pick(self._up)
        if index < 0:
            return
        yield self.backends[index]
        yield from failover(self.backends, index)


class PowerOfTwo(Selection):
    """Power of two choices: two weighted-random draws, keep the lower ``active / weight``.

    Nearly as good as least_conn at spreading load, in O(log n) instead of O(n). On a
    tie the first draw wins.
    """

    name = "p2c"

    def __init__(self, backends: Sequence[Backend], *, rng: random.Random | None = None) -> None:
        super().__init__(backends, rng=rng)
        self._picker = WeightedPicker([b.weight for b in self.backends], rng or random.Random())

    def select(self, key: bytes = b"") -> Iterator[Backend]:
        backends = self.backends
        first = self._picker.pick(self._up)
        if first < 0:
            return
        second = self._picker.pick(self._up)
        a, b = backends[first], backends[second]
        index = second if b.active * a.weight < a.active * b.weight else first
        yield backends[index]
        yield from failover(backends, index)

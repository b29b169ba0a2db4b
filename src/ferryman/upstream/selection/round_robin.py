"""Plain rotation over the backends. Weights are ignored: use ``weighted`` for them."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from ..backend import Backend
from .base import Selection, failover


class RoundRobin(Selection):
    """Each pick takes the first healthy backend after the previous pick.

    Moving the cursor past the chosen backend (not just by one) keeps the rotation even
    among the healthy backends when some are down: with A B C and B down, A C A C.
    """

    name = "round_robin"

    def __init__(self, backends: Sequence[Backend], *, rng: random.Random | None = None) -> None:
        super().__init__(backends, rng=rng)
        self._next = 0

    def select(self, key: bytes = b"") -> Iterator[Backend]:
        backends = self.backends
        n = len(backends)
        start = self._next
        for step in range(n):
            index = start + step
            if index >= n:
                index -= n
            if backends[index].healthy:
                self._next = index + 1 if index + 1 < n else 0
                yield backends[index]
                yield from failover(backends, index)
                return

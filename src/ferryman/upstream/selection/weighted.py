"""Smooth weighted round robin (nginx's default ``upstream`` algorithm)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from ..backend import Backend
from .base import Selection, failover
from .smooth import SmoothWeighted


class Weighted(Selection):
    """First pick by smooth weighted round robin; fail over in list order after it."""

    name = "weighted"

    def __init__(self, backends: Sequence[Backend], *, rng: random.Random | None = None) -> None:
        super().__init__(backends, rng=rng)
        self._smooth = SmoothWeighted([b.weight for b in self.backends])

    def select(self, key: bytes = b"") -> Iterator[Backend]:
        index = self._smooth.next(self._up)
        if index < 0:
            return
        yield self.backends[index]
        yield from failover(self.backends, index)

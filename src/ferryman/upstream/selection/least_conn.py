"""Least connections: fewest ``active / weight``, ties broken round robin (as nginx)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from ..backend import Backend
from .base import Selection


class LeastConn(Selection):
    """Scan all backends for the lowest load; O(n) per pick.

    ``active`` changes on every connection without telling anyone, so no index over it
    can stay sorted: a scan is the honest cost (nginx scans too). The scan starts after
    the previous pick, so among equally loaded backends the choice rotates.
    """

    name = "least_conn"

    def __init__(self, backends: Sequence[Backend], *, rng: random.Random | None = None) -> None:
        super().__init__(backends, rng=rng)
        self._next = 0

    def select(self, key: bytes = b"") -> Iterator[Backend]:
        backends = self.backends
        n = len(backends)
        start = self._next
        best = -1
        best_active = 0
        best_weight = 1
        for step in range(n):
            index = start + step
            if index >= n:
                index -= n
            backend = backends[index]
            if not backend.healthy:
                continue
            # active/weight < best_active/best_weight, without division.
            if best < 0 or backend.active * best_weight < best_active * backend.weight:
                best, best_active, best_weight = index, backend.active, backend.weight
        if best < 0:
            return
        self._next = best + 1 if best + 1 < n else 0
        chosen = backends[best]
        yield chosen
        # Fail over to the least loaded of the rest (computed only when needed).
        rest = sorted((b for b in backends if b is not chosen), key=lambda b: b.active / b.weight)
        for backend in rest:
            if backend.healthy:
                yield backend

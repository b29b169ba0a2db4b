"""The selection contract shared by every load-balancing algorithm.

A selection is built once from an immutable list of backends (and rebuilt on config
reload). ``select(key)`` returns a lazy iterator of backends in preference order: the
first is the algorithm's pick, the rest are the fail-over order. Each backend is
yielded at most once.

Health: selections skip backends whose ``healthy`` is False, checked at the moment each
one is yielded. Doing it inside the algorithm (as nginx does) keeps weights fair among
the live backends instead of handing a dead backend's turns to its neighbour.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import ClassVar

from ..backend import Backend


class Selection:
    """Base class: holds the backends; subclasses implement :meth:`select`."""

    name: ClassVar[str] = ""

    def __init__(self, backends: Sequence[Backend], *, rng: random.Random | None = None) -> None:
        self.backends: tuple[Backend, ...] = tuple(backends)
        for backend in self.backends:
            if backend.weight < 1:
                raise ValueError(f"backend {backend.key} has weight {backend.weight}; must be >= 1")

    def select(self, key: bytes = b"") -> Iterator[Backend]:
        """Yield healthy backends, best first; ``key`` matters only to hashing algorithms."""
        raise NotImplementedError

    def _up(self, index: int) -> bool:
        """Predicate for the weighted engines: is backend ``index`` healthy?"""
        return self.backends[index].healthy

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.backends)} backends)"


def failover(backends: Sequence[Backend], picked: int) -> Iterator[Backend]:
    """Yield the healthy backends after ``picked`` in list order, wrapping, ``picked`` excluded.

    Used as the fail-over order once the first pick has been made.
    """
    n = len(backends)
    for step in range(1, n):
        index = picked + step
        if index >= n:
            index -= n
        backend = backends[index]
        if backend.healthy:
            yield backend

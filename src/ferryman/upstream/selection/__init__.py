"""Load-balancing algorithms: pick backends in preference order.

Every algorithm is a :class:`Selection` built once from the upstream's backends;
``select(key)`` yields healthy backends, best first, then the fail-over order, each at
most once. ``ALGORITHMS`` maps the config names (``lb = "..."``) to the classes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..backend import Backend
from .base import Selection
from .ketama import ConsistentHash
from .least_conn import LeastConn
from .randomized import PowerOfTwo, Random
from .round_robin import RoundRobin
from .weighted import Weighted

ALGORITHMS: dict[str, type[Selection]] = {
    cls.name: cls for cls in (RoundRobin, Weighted, LeastConn, Random, PowerOfTwo, ConsistentHash)
}


def make_selection(
    name: str, backends: Sequence[Backend], *, rng: random.Random | None = None
) -> Selection:
    """Build the algorithm called ``name``; ``rng`` seeds the random ones (tests)."""
    try:
        cls = ALGORITHMS[name]
    except KeyError:
        raise ValueError(
            f"unknown load-balancing algorithm {name!r}; expected one of {', '.join(ALGORITHMS)}"
        ) from None
    return cls(backends, rng=rng)


__all__ = [
    "ALGORITHMS",
    "ConsistentHash",
    "LeastConn",
    "PowerOfTwo",
    "Random",
    "RoundRobin",
    "Selection",
    "Weighted",
    "make_selection",
]

"""Balancers: what a proxy asks for "the backends to try, in order".

:class:`Balancer` wraps one selection algorithm over one upstream's backends.
:class:`WeightedUpstreams` splits traffic between several balancers (or nested
WeightedUpstreams) by weight, like Traefik's weighted services, failing over between
them. Both yield healthy backends only; an empty iteration means NO_BACKEND.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Protocol

from .backend import Backend
from .selection import Selection, make_selection
from .selection.smooth import SmoothWeighted


class Member(Protocol):
    """Anything WeightedUpstreams can split traffic to."""

    @property
    def backends(self) -> Sequence[Backend]: ...

    @property
    def healthy_count(self) -> int: ...

    def select(self, key: bytes = b"", max_tries: int | None = None) -> Iterator[Backend]: ...


def _limit(backends: Iterator[Backend], max_tries: int | None) -> Iterator[Backend]:
    return backends if max_tries is None else islice(backends, max(max_tries, 0))


class Balancer:
    """One upstream: its backends and the ``lb`` algorithm choosing among them.

    Built once per config (re)load; the Backend objects, and so health and connection
    counts, may be shared with the previous balancer.
    """

    __slots__ = ("_rng", "lb", "selection")

    def __init__(
        self, backends: Sequence[Backend], lb: str = "round_robin", *, rng: random.Random | None = None
    ) -> None:
        self.lb = lb
        self._rng = rng
        self.selection: Selection = make_selection(lb, backends, rng=rng)

    def replace_backends(self, backends: Sequence[Backend]) -> None:
        """Serve ``backends`` from now on (a DNS re-resolution changed the addresses).

        The selection is rebuilt and swapped in one assignment; this Balancer object stays,
        because WeightedUpstreams members and upstreams hold it. Backend objects passed
        again keep their health and connection counts; the algorithm's position restarts.
        Iterations already running finish over the old list.
        """
        self.selection = make_selection(self.lb, backends, rng=self._rng)

    @property
    def backends(self) -> tuple[Backend, ...]:
        return self.selection.backends

    @property
    def healthy_count(self) -> int:
        """Number of backends currently marked healthy (O(n))."""
        return sum(1 for b in self.selection.backends if b.healthy)

    def select(self, key: bytes = b"", max_tries: int | None = None) -> Iterator[Backend]:
        """Healthy backends in the algorithm's order, at most ``max_tries`` of them."""
        return _limit(self.selection.select(key), max_tries)

    def __repr__(self) -> str:
        return f"Balancer({self.lb}, {len(self.backends)} backends)"


class WeightedUpstreams:
    """Weighted split between members, e.g. 3:1 between a stable and a canary upstream.

    The first member is chosen by smooth weighted round robin among members that have
    a healthy backend; its backends come first, then the other members' in order. A
    backend shared by two members is yielded once.
    """

    __slots__ = ("members", "weights", "_smooth")

    def __init__(self, members: Sequence[tuple[Member, int]]) -> None:
        self.members: tuple[Member, ...] = tuple(member for member, _ in members)
        self.weights: tuple[int, ...] = tuple(weight for _, weight in members)
        self._smooth = SmoothWeighted(self.weights)

    @property
    def backends(self) -> tuple[Backend, ...]:
        """All leaf backends, each once, in member order."""
        seen: dict[int, Backend] = {}
        for member in self.members:
            for backend in member.backends:
                seen.setdefault(id(backend), backend)
        return tuple(seen.values())

    @property
    def healthy_count(self) -> int:
        return sum(1 for b in self.backends if b.healthy)

    def select(self, key: bytes = b"", max_tries: int | None = None) -> Iterator[Backend]:
        """Healthy backends: the weighted member's first, then fail-over members'."""
        return _limit(self._iterate(key), max_tries)

    def _member_up(self, index: int) -> bool:
        return self.members[index].healthy_count > 0

    def _iterate(self, key: bytes) -> Iterator[Backend]:
        first = self._smooth.next(self._member_up)
        if first < 0:
            return
        members = self.members
        n = len(members)
        yielded: list[Backend] = []
        for step in range(n):
            index = first + step
            if index >= n:
                index -= n
            for backend in members[index].select(key):
                if any(backend is seen for seen in yielded):
                    continue
                yielded.append(backend)
                yield backend

    def __repr__(self) -> str:
        return f"WeightedUpstreams({len(self.members)} members, weights={list(self.weights)})"

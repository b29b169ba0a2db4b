"""Consistent hashing on a ketama ring, compatible with nginx's ``hash $key consistent``.

Each backend puts ``160 * weight`` points on a ring of 32-bit CRC32 values, derived as
nginx (and Pingora's pingora-ketama) do: ``base = crc32(host + "\\0" + port)``, then
``point_k = crc32(base_state + le32(point_{k-1}))`` starting from 0. ``host``/``port``
come from splitting the backend's ``key`` the way nginx splits its ``server`` string
(``unix:/path`` hashes ``/path`` with an empty port; IPv6 keeps its brackets, as in
nginx, where Pingora would hash the bare address). A request key maps to the first
point at or after ``crc32(key)``, wrapping around.

Removing a backend only moves the keys that were on its points, to the next point
clockwise; marking it unhealthy moves exactly the same keys to the same places.
"""

from __future__ import annotations

import random
import zlib
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from ..backend import Backend
from .base import Selection

POINTS_PER_WEIGHT = 160


def split_server(key: str) -> tuple[bytes, bytes]:
    """Split ``key`` into (host, port) exactly as nginx splits an upstream server name."""
    data = key.encode()
    if data[:5].lower() == b"unix:":
        return data[5:], b""
    for j in range(len(data)):
        c = data[len(data) - j - 1]
        if c == 0x3A:  # ':'
            return data[: len(data) - j - 1], data[len(data) - j :]
        if not 0x30 <= c <= 0x39:
            break
    return data, b""


def backend_points(key: str, weight: int) -> list[int]:
    """The ring points of one backend, in derivation order."""
    host, port = split_server(key)
    base = zlib.crc32(port, zlib.crc32(b"\0", zlib.crc32(host)))
    points: list[int] = []
    previous = 0
    for _ in range(weight * POINTS_PER_WEIGHT):
        previous = zlib.crc32(previous.to_bytes(4, "little"), base)
        points.append(previous)
    return points


class ConsistentHash(Selection):
    """Ketama ring: O(log points) first pick; fail over clockwise to the next backends."""

    name = "consistent_hash"

    def __init__(self, backends: Sequence[Backend], *, rng: random.Random | None = None) -> None:
        super().__init__(backends, rng=rng)
        ring = [
            (point, owner)
            for owner, backend in enumerate(self.backends)
            for point in backend_points(backend.key, backend.weight)
        ]
        ring.sort(key=lambda item: item[0])  # stable: equal points keep backend order
        hashes: list[int] = []
        owners: list[int] = []
        for point, owner in ring:
            if hashes and hashes[-1] == point:
                continue  # nginx keeps the first of equal points
            hashes.append(point)
            owners.append(owner)
        self._hashes = hashes
        self._owners = owners

    def index_for(self, key: bytes) -> int:
        """Ring position for ``key``: first point >= crc32(key), wrapping to 0."""
        index = bisect_left(self._hashes, zlib.crc32(key))
        return 0 if index == len(self._hashes) else index

    def select(self, key: bytes = b"") -> Iterator[Backend]:
        hashes, owners, backends = self._hashes, self._owners, self.backends
        if not hashes:
            return
        index = self.index_for(key)
        first = owners[index]
        if backends[first].healthy:
            yield backends[first]
        elif not any(b.healthy for b in backends):
            return
        # Fail over clockwise: each backend in the order its first point follows ours.
        n = len(backends)
        seen = bytearray(n)
        seen[first] = 1
        remaining = n - 1
        size = len(hashes)
        for _ in range(size - 1):
            if not remaining:
                return
            index = index + 1 if index + 1 < size else 0
            owner = owners[index]
            if seen[owner]:
                continue
            seen[owner] = 1
            remaining -= 1
            if backends[owner].healthy:
                yield backends[owner]
        for owner in range(n):  # a backend whose every point collided with another's
            if not seen[owner] and backends[owner].healthy:
                yield backends[owner]

"""The two-window rate estimator of :mod:`ferryman.limits.rate`, shared by worker processes.

With several workers, per-process counters let a client get up to N times its rate (its
connections spread over the workers). Here counts live in one anonymous shared mapping,
created by the master before it forks, so every worker sees every worker's counts.

No locks: each key's slot holds a fingerprint and one cell per worker (window number,
current count, previous count), and a worker only ever writes its own cell; readers sum the
cells. Claiming a free slot is the only write two workers may race on; the loser sees a
fingerprint not its own and probes on. Time is ``time.monotonic`` (CLOCK_MONOTONIC: one
clock for every process), window numbers are ``monotonic // window``.

Slots are found by open addressing over ``PROBES`` places from the key's hash (``hash()`` of
str/bytes is the same in forked processes). A slot is free once no cell has counted in the
last two windows; when all probed slots are busy the least recently used one is taken.
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Callable, Hashable

from .rate import wait_seconds

PROBES = 8
_MASK64 = (1 << 64) - 1


class RateBoard:
    """Shared counters for every rate limiter of a process tree (``slots`` keys at once)."""

    def __init__(self, workers: int, slots: int = 1 << 16) -> None:
        self.workers = workers
        self.slots = slots
        cell_words = 3 * workers  # per worker: window number, current, previous (uint32 each)
        self.slot_bytes = -(-(8 + 4 * cell_words) // 8) * 8  # 8-byte aligned for the fingerprint
        self._map = mmap.mmap(-1, slots * self.slot_bytes)  # MAP_SHARED | MAP_ANONYMOUS: fork keeps it shared
        self.fingerprints = memoryview(self._map).cast("Q")
        self.cells = memoryview(self._map).cast("I")

    def rate(self, name: str, window: float, worker: int, clock: Callable[[], float] = time.monotonic) -> SharedRate:
        """The estimator of limiter ``name`` (its keys never mix with other limiters'), as
        seen and counted by ``worker``."""
        return SharedRate(self, name, window, worker, clock)


class SharedRate:
    """:class:`~ferryman.limits.rate.Rate`'s ``admit`` / ``wait`` / ``estimate`` over a board."""

    __slots__ = ("board", "name", "window", "worker", "clock", "_stride", "_fp_stride", "_own")

    def __init__(self, board: RateBoard, name: str, window: float, worker: int, clock: Callable[[], float]) -> None:
        if not window > 0:
            raise ValueError(f"window must be positive, got {window!r}")
        if not 0 <= worker < board.workers:
            raise ValueError(f"worker {worker} is not one of the board's {board.workers}")
        self.board, self.name, self.window, self.worker, self.clock = board, name, float(window), worker, clock
        self._stride = board.slot_bytes // 4  # uint32 words per slot
        self._fp_stride = board.slot_bytes // 8
        self._own = 2 + 3 * worker  # this worker's cell, in words from the slot start

    # the estimator ---------------------------------------------------------------------------
    def admit(self, key: Hashable, allowance: float) -> bool:
        """Count one event for ``key`` if its estimate (all workers) is below ``allowance``."""
        now, number, f = self._now()
        slot = self._slot(key, number, claim=True)
        if slot < 0:
            return True  # no slot could be had (the table is full of live keys): do not limit
        cur, prev = self._counts(slot, number)
        if prev * (1.0 - f) + cur >= allowance:
            return False
        self._count(slot, number)
        return True

    def estimate(self, key: Hashable) -> float:
        now, number, f = self._now()
        slot = self._slot(key, number, claim=False)
        if slot < 0:
            return 0.0
        cur, prev = self._counts(slot, number)
        return prev * (1.0 - f) + cur

    def wait(self, key: Hashable, allowance: float) -> float:
        """Seconds until ``key`` has room again (see :meth:`Rate.wait`)."""
        now, number, f = self._now()
        slot = self._slot(key, number, claim=False)
        if slot < 0:
            return 0.0
        cur, prev = self._counts(slot, number)
        return wait_seconds(cur, prev, f, allowance, self.window)

    # the table -------------------------------------------------------------------------------
    def _now(self) -> tuple[float, int, float]:
        t = self.clock() / self.window
        number = int(t)
        return t, number, t - number

    def _slot(self, key: Hashable, number: int, *, claim: bool) -> int:
        board = self.board
        fp = (hash((self.name, key)) & _MASK64) or 1  # 0 marks a free slot
        fps = board.fingerprints
        start = fp % board.slots
        oldest, oldest_seen = -1, None
        for probe in range(PROBES):
            slot = (start + probe) % board.slots
            here = fps[slot * self._fp_stride]
            if here == fp:
                return slot
            seen = self._last_window(slot)
            if here == 0 or seen < number - 1:  # free, or idle for two windows: reusable
                if not claim:
                    continue
                return self._claim(slot, fp)
            if oldest_seen is None or seen < oldest_seen:
                oldest, oldest_seen = slot, seen
        if not claim or oldest < 0:
            return -1
        return self._claim(oldest, fp)

    def _claim(self, slot: int, fp: int) -> int:
        base = slot * self._stride
        cells = self.board.cells
        for word in range(2, 2 + 3 * self.board.workers):
            cells[base + word] = 0
        self.board.fingerprints[slot * self._fp_stride] = fp
        return slot if self.board.fingerprints[slot * self._fp_stride] == fp else -1

    def _last_window(self, slot: int) -> int:
        base = slot * self._stride
        cells = self.board.cells
        return max(cells[base + 2 + 3 * w] for w in range(self.board.workers))

    def _counts(self, slot: int, number: int) -> tuple[int, int]:
        """(current, previous) window counts of the slot, summed over the workers."""
        base = slot * self._stride
        cells = self.board.cells
        cur = prev = 0
        now = number & 0xFFFFFFFF
        before = (number - 1) & 0xFFFFFFFF
        for w in range(self.board.workers):
            at = base + 2 + 3 * w
            seen = cells[at]
            if seen == now:
                cur += cells[at + 1]
                prev += cells[at + 2]
            elif seen == before:
                prev += cells[at + 1]
        return cur, prev

    def _count(self, slot: int, number: int) -> None:
        at = slot * self._stride + self._own
        cells = self.board.cells
        now = number & 0xFFFFFFFF
        seen = cells[at]
        if seen == now:
            cells[at + 1] += 1
            return
        cells[at + 2] = cells[at + 1] if seen == (number - 1) & 0xFFFFFFFF else 0
        cells[at + 1] = 1
        cells[at] = now

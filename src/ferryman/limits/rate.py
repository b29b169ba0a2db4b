"""A per-key rate estimator over two fixed windows (Pingora's ``pingora-limits`` ``Rate``).

Counts live in two dicts: the current window's and the previous one's. The rate of a key at
a fraction ``f`` into the current window is estimated as the sliding-window count

    previous * (1 - f) + current

which needs no per-event timestamps. When a window ends, the current dict becomes the
previous one and the old previous dict is dropped: a key not seen for two windows is gone,
so memory is bounded by the keys active in the last two windows.

Time comes from ``clock`` (default ``time.monotonic``), so tests drive windows without
sleeping. One instance serves one event loop (no locks).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Hashable

__all__ = ["Rate", "parse_rate", "wait_seconds"]

_RATE = re.compile(r"([1-9][0-9]{0,9})/([1-9][0-9]{0,5})?([smh])")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: object) -> tuple[int, float]:
    """``"100/s"`` → ``(100, 1.0)``; ``"600/m"``, ``"1000/h"``, ``"50/10s"`` (per 10 s).
    Raises ValueError for anything else (no spaces, no zero, no fractions)."""
    match = _RATE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"{text!r} is not a rate; use COUNT/UNIT with unit s, m or h and a count of at least 1 "
            "(\"100/s\", \"600/m\", \"50/10s\")"
        )
    count, multiple, unit = match.groups()
    return int(count), int(multiple or 1) * _UNIT[unit]


def wait_seconds(cur: int, prev: int, f: float, allowance: float, window: float) -> float:
    """Seconds until ``prev * (1 - f) + cur`` (``f`` into the current window) falls below
    ``allowance`` with nothing more counted: 0.0 if it is below already, ``inf`` if never."""
    if prev * (1.0 - f) + cur < allowance:
        return 0.0
    if allowance <= 0:
        return math.inf
    if cur < allowance:  # the previous window's share decays enough within this window
        return max(0.0, (1.0 - (allowance - cur) / prev) - f) * window
    # only in the next window, as this window's count decays in its turn
    return (1.0 - f + 1.0 - allowance / cur) * window


class Rate:
    """Event counts per key, estimated over a sliding window of ``window`` seconds."""

    __slots__ = ("clock", "current", "previous", "start", "window")

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not window > 0:
            raise ValueError(f"window must be positive, got {window!r}")
        self.window = float(window)
        self.clock = clock
        self.start = clock()  # when the current window began
        self.current: dict[Hashable, int] = {}
        self.previous: dict[Hashable, int] = {}

    def _fraction(self) -> float:
        """Roll the windows up to now; how far into the current window now is (0..1)."""
        elapsed = self.clock() - self.start
        window = self.window
        if elapsed >= window:
            if elapsed >= 2 * window:  # idle for a whole window: nothing recent survives
                self.previous = {}
                rolls = int(elapsed // window)
            else:
                self.previous = self.current
                rolls = 1
            self.current = {}
            self.start += rolls * window
            elapsed -= rolls * window
        return min(max(elapsed / window, 0.0), 1.0)

    def estimate(self, key: Hashable) -> float:
        """Estimated events of ``key`` in the last ``window`` seconds."""
        f = self._fraction()
        return self.previous.get(key, 0) * (1.0 - f) + self.current.get(key, 0)

    def observe(self, key: Hashable, events: int = 1) -> float:
        """Count ``events`` for ``key``; returns the estimate including them."""
        f = self._fraction()
        count = self.current.get(key, 0) + events
        self.current[key] = count
        return self.previous.get(key, 0) * (1.0 - f) + count

    def admit(self, key: Hashable, allowance: float) -> bool:
        """Count one event for ``key`` and return True if its estimate is below
        ``allowance``; otherwise count nothing and return False (see :meth:`wait`).

        Admitting while the estimate is *below* the allowance lets a key that keeps asking
        settle at ``allowance`` events per window, and a fresh key use ``allowance`` at once.
        """
        f = self._fraction()
        cur = self.current.get(key, 0)
        if self.previous.get(key, 0) * (1.0 - f) + cur < allowance:
            self.current[key] = cur + 1
            return True
        return False

    def wait(self, key: Hashable, allowance: float) -> float:
        """Seconds until the estimate of ``key`` falls to ``allowance`` (0.0 if it is below
        already; ``inf`` if never), when nothing more is counted for it meanwhile: from then
        on :meth:`admit` says yes."""
        f = self._fraction()
        return wait_seconds(self.current.get(key, 0), self.previous.get(key, 0), f, allowance, self.window)

    def __len__(self) -> int:
        """How many keys are tracked now (seen in the current or previous window)."""
        self._fraction()
        if not self.previous:
            return len(self.current)
        return len(self.current.keys() | self.previous.keys())

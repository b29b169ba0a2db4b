"""Coarse timeouts: one periodic sweep per service instead of a timer per request.

Arming a loop timer and cancelling it costs about 2 µs, and a keep-alive request used to do
that three times (header, read, keep-alive timeouts). Instead, each connection stores a
``deadline`` (a float; ``inf`` when none) and the sweep, every ``tick`` seconds, calls
``on_deadline(now)`` on those whose deadline has passed. A timeout fires up to one tick
late; the tick is an eighth of the shortest timeout in use (at most 0.5 s), so a 60 s
timeout fires within 60-60.5 s and a 0.2 s one (tests) within 0.2-0.225 s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

log = logging.getLogger(__name__)

INF = float("inf")
MAX_TICK = 0.5
MIN_TICK = 0.005


class Expiring(Protocol):
    deadline: float

    def on_deadline(self, now: float) -> None: ...


def tick_for(timeouts: Iterable[float | None]) -> float:
    """The tick for a set of timeouts: an eighth of the shortest, within [5 ms, 0.5 s]."""
    shortest = min((t for t in timeouts if t), default=MAX_TICK * 8)
    return min(MAX_TICK, max(MIN_TICK, shortest / 8))


class DeadlineSweep:
    """Calls ``on_deadline(now)`` on every member whose ``deadline`` passed, each tick.

    ``members`` is the caller's live collection (e.g. a service's connections); ``extra`` is
    called each tick with ``now`` for checks that are not a plain deadline (read timeouts).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, members: set, tick: float, extra: Callable[[float], None] | None = None) -> None:
        self.loop = loop
        self.members = members
        self.tick = tick
        self.extra = extra
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._handle = self.loop.call_later(self.tick, self._run)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def tighten(self, timeout: float) -> None:
        """A shorter timeout came into use (e.g. a route's read timeout): tick faster."""
        tick = tick_for((timeout,))
        if tick < self.tick:
            self.tick = tick
            if self._handle is not None:
                self._handle.cancel()
                self._handle = self.loop.call_later(tick, self._run)

    def _run(self) -> None:
        self._handle = self.loop.call_later(self.tick, self._run)
        now = self.loop.time()
        expired = [m for m in self.members if m.deadline <= now]
        for member in expired:
            try:
                member.on_deadline(now)
            except Exception:  # one bad connection must not stop timeouts for the others
                log.exception("timeout handling failed for %r", member)
        if self.extra is not None:
            try:
                self.extra(now)
            except Exception:
                log.exception("timeout sweep failed")

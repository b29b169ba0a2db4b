"""The reload history the admin API shows: the last few config changes of this process
(start, reload by signal or file watch, apply and rollback through the admin API), each with
its time, resulting generation, result and who asked.

Kept per process, in the worker that serves the admin listener (worker 0 with workers):
every reload reaches every worker, so worker 0 sees them all. The admin API says who asked
*before* the reload runs (:meth:`ReloadHistory.expect`); the reload then records itself with
that attribution, or as a signal when nobody announced it (SIGHUP, ``ferryman reload``, the
master's file watch).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["HISTORY_SIZE", "Change", "ReloadHistory"]

HISTORY_SIZE = 50  # entries kept (the oldest go first)
SIGNAL = "signal"  # a reload nobody announced: SIGHUP / `ferryman reload` / the master's file watch


@dataclass(frozen=True, slots=True)
class Change:
    """One entry: ``action`` is start | signal | file watch | apply | rollback."""

    id: int  # increasing, so a client can tell new entries from ones it has seen
    time: float  # Unix time
    action: str
    generation: int  # the generation serving after it (unchanged when it failed)
    ok: bool
    message: str  # what failed (every error with its TOML path), or a short summary
    who: str  # the admin client ("127.0.0.1 (token)"), or "" for signals and the file watch

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ReloadHistory:
    """A bounded, newest-last list of :class:`Change`."""

    def __init__(self, size: int = HISTORY_SIZE, clock: Callable[[], float] = time.time) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.entries: deque[Change] = deque(maxlen=size)
        self.clock = clock
        self._next_id = 1
        self._pending: tuple[str, str] | None = None

    def expect(self, action: str, who: str = "") -> None:
        """The next :meth:`reloaded` comes from ``action`` asked by ``who``."""
        self._pending = (action, who)

    def reloaded(self, ok: bool, generation: int, message: str = "") -> Change:
        """A reload of this process finished (attributed to the last :meth:`expect`, if any)."""
        action, who = self._pending or (SIGNAL, "")
        self._pending = None
        return self.add(action, ok, generation, message, who)

    def add(self, action: str, ok: bool, generation: int, message: str = "", who: str = "") -> Change:
        """Record a change that did not go through a reload (start, a refused apply)."""
        change = Change(self._next_id, self.clock(), action, generation, ok, message, who)
        self._next_id += 1
        self.entries.append(change)
        return change

    def to_json(self, since: int = 0) -> list[dict[str, Any]]:
        """Entries newer than id ``since``, newest first."""
        return [c.to_json() for c in reversed(self.entries) if c.id > since]

"""Keyed pool of idle upstream connections, per worker process.

Connections are kept per key (peer address + connection options) and handed out most
recently used first (warmest congestion window, least likely to have been closed by the
upstream's own idle timeout). An idle connection that sees EOF or unexpected bytes is
dropped at once by its protocol calling :meth:`discard`; one idle longer than
``idle_timeout`` is closed by a timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Protocol


class Poolable(Protocol):
    """What the pool needs from a connection."""

    pool_key: Hashable
    idle_handle: asyncio.TimerHandle | None

    def is_reusable(self) -> bool: ...
    def close(self) -> None: ...


class ConnectionPool:
    """Idle connections by key, LIFO, bounded per key, with an idle timeout."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_idle_per_key: int = 128, idle_timeout: float = 60.0) -> None:
        self.loop = loop
        self.max_idle_per_key = max_idle_per_key
        self.idle_timeout = idle_timeout
        self._idle: dict[Hashable, list[Poolable]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Poolable | None:
        """A live idle connection for ``key``, or None (counted as a miss)."""
        stack = self._idle.get(key)
        while stack:
            conn = stack.pop()
            if conn.idle_handle is not None:
                conn.idle_handle.cancel()
                conn.idle_handle = None
            if conn.is_reusable():
                self.hits += 1
                return conn
            conn.close()
        self.misses += 1
        return None

    def put(self, conn: Poolable) -> bool:
        """Keep ``conn`` for reuse; False (and the connection closed) when the pool is full,
        pooling is off, or the connection cannot be reused."""
        if self.idle_timeout <= 0 or not conn.is_reusable():
            conn.close()
            return False
        stack = self._idle.setdefault(conn.pool_key, [])
        if len(stack) >= self.max_idle_per_key:
            conn.close()
            return False
        stack.append(conn)
        conn.idle_handle = self.loop.call_later(self.idle_timeout, self._expire, conn)
        return True

    def discard(self, conn: Poolable) -> None:
        """Remove an idle connection that died (EOF, reset, stray bytes)."""
        stack = self._idle.get(conn.pool_key)
        if stack and conn in stack:
            stack.remove(conn)
        if conn.idle_handle is not None:
            conn.idle_handle.cancel()
            conn.idle_handle = None

    def _expire(self, conn: Poolable) -> None:
        conn.idle_handle = None
        self.discard(conn)
        conn.close()

    @property
    def idle_count(self) -> int:
        return sum(len(stack) for stack in self._idle.values())

    def close(self) -> None:
        for stack in self._idle.values():
            for conn in stack:
                if conn.idle_handle is not None:
                    conn.idle_handle.cancel()
                conn.close()
        self._idle.clear()

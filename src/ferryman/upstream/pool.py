"""Keyed pool of idle upstream HTTP/1.1 connections, per worker process.

Connections are kept per key (peer address + connection options) and handed out most
recently used first (warmest congestion window, least likely to have been closed by the
upstream's own idle timeout). An idle connection that sees EOF or unexpected bytes is
dropped at once by its protocol calling :meth:`discard`; one idle longer than its idle
timeout is closed by :meth:`expire`, which the owner calls periodically (no timer per
connection: arming and cancelling one cost ~2 µs a request). A connection may carry its own
limits (``max_idle``, ``idle_timeout``: its upstream's ``pool_size``/``pool_idle_timeout``);
else the pool's defaults apply. (Typed as :class:`UpstreamH1`, not a protocol: compiled,
the pool then reads their fields directly instead of looking each up by name.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from ..http.upstream_h1 import UpstreamH1


class ConnectionPool:
    """Idle connections by key, LIFO, bounded per key, with an idle timeout."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_idle_per_key: int = 128, idle_timeout: float = 60.0) -> None:
        self.loop = loop
        self.max_idle_per_key = max_idle_per_key
        self.idle_timeout = idle_timeout
        self._idle: dict[Hashable, list[UpstreamH1]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> UpstreamH1 | None:
        """A live idle connection for ``key``, or None (counted as a miss)."""
        stack = self._idle.get(key)
        while stack:
            conn = stack.pop()
            if conn.is_reusable():
                self.hits += 1
                return conn
            conn.close()
        self.misses += 1
        return None

    def put(self, conn: UpstreamH1) -> bool:
        """Keep ``conn`` for reuse; False (and the connection closed) when the pool is full,
        pooling is off, or the connection cannot be reused."""
        timeout = conn.idle_timeout if conn.idle_timeout is not None else self.idle_timeout
        limit = conn.max_idle if conn.max_idle is not None else self.max_idle_per_key
        if timeout <= 0 or not conn.is_reusable():
            conn.close()
            return False
        stack = self._idle.setdefault(conn.pool_key, [])
        if len(stack) >= limit:
            conn.close()
            return False
        conn.idle_deadline = self.loop.time() + timeout
        stack.append(conn)
        return True

    def discard(self, conn: UpstreamH1) -> None:
        """Remove an idle connection that died (EOF, reset, stray bytes)."""
        stack = self._idle.get(conn.pool_key)
        if stack and conn in stack:
            stack.remove(conn)

    def expire(self, now: float) -> None:
        """Close connections idle past their deadline. A key's connections share one idle
        timeout and are stacked in the order they went idle: the expired ones are at the
        bottom."""
        for key, stack in list(self._idle.items()):
            expired = 0
            while expired < len(stack) and stack[expired].idle_deadline <= now:
                expired += 1
            if expired:
                for conn in stack[:expired]:
                    conn.close()
                del stack[:expired]
            if not stack:
                del self._idle[key]

    @property
    def idle_count(self) -> int:
        return sum(len(stack) for stack in self._idle.values())

    def close(self) -> None:
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
        self._idle.clear()

"""One set of active health checks for all workers, not one per worker.

With workers, only worker 0 runs the :class:`~ferryman.upstream.health.HealthChecker`\\ s;
it publishes the checked backends' state on a board (a shared mapping the master creates
before forking) and the other workers apply what changed to their own Backend objects. A
backend goes down everywhere after ``fall`` failed checks, and the backends see ``workers``
times fewer probes. Passive health stays per worker: it judges the traffic each worker sees,
and a follower applies only the backends whose published state changed, so its own
ejections stand until the checker's verdict on that backend changes.

The board is a seqlock over one JSON document: the writer makes the sequence odd, writes,
makes it even; a reader retries while it is odd or changed under it.
"""

from __future__ import annotations

import json
import logging
import mmap
import struct
from collections.abc import Callable, Mapping
from typing import Any

from ..server.periodic import Periodic

log = logging.getLogger(__name__)

_SEQ = struct.Struct("Q")  # at 0: the sequence, written on its own (one aligned 8-byte store)
_LEN = struct.Struct("Q")  # at 8: the document's length
_HEAD_SIZE = 16
State = dict[str, dict[str, bool]]  # upstream name → backend key → healthy


class HealthBoard:
    """A single-writer snapshot in memory shared by forked processes."""

    def __init__(self, size: int = 1 << 20) -> None:
        self._map = mmap.mmap(-1, size)
        self.size = size

    def publish(self, state: State) -> None:
        data = json.dumps(state, separators=(",", ":")).encode()
        if _HEAD_SIZE + len(data) > self.size:
            log.error("health board: %d bytes of state do not fit in %d; not published", len(data), self.size)
            return
        (seq,) = _SEQ.unpack_from(self._map, 0)
        _SEQ.pack_into(self._map, 0, seq + 1)  # odd: being written
        self._map[_HEAD_SIZE:_HEAD_SIZE + len(data)] = data
        _LEN.pack_into(self._map, 8, len(data))
        _SEQ.pack_into(self._map, 0, seq + 2)

    def read(self) -> tuple[int, State]:
        """(sequence, state); sequence 0 and {} before the first publication."""
        for _ in range(100_000):
            (seq,) = _SEQ.unpack_from(self._map, 0)
            if seq & 1:
                continue
            (length,) = _LEN.unpack_from(self._map, 8)
            data = bytes(self._map[_HEAD_SIZE:_HEAD_SIZE + length])
            if _SEQ.unpack_from(self._map, 0)[0] == seq:
                return seq, json.loads(data) if length else {}
        raise RuntimeError("health board: the writer never finished")


DISABLED = "__disabled__"  # the board's entry for backends an operator took out: upstream → keys


def checked_state(upstreams: Mapping[str, Any]) -> State:
    """The active checkers' view: every checked backend of every upstream; and the
    backends disabled through the admin API (served by the same worker)."""
    state: dict[str, Any] = {
        name: {backend.key: backend.verdict for backend in upstream.checker.backends}
        for name, upstream in upstreams.items()
        if upstream.checker is not None
    }
    state[DISABLED] = {
        name: sorted(b.key for b in upstream.balancer.backends if b.disabled)
        for name, upstream in upstreams.items()
        if any(b.disabled for b in upstream.balancer.backends)
    }
    return state


class HealthSync(Periodic):
    """Background service: the leader publishes its checkers' state; a follower applies the
    backends whose published state changed since it last looked."""

    name = "health-sync"

    def __init__(self, board: HealthBoard, upstreams: Callable[[], Mapping[str, Any]], *, leader: bool, interval: float = 0.25) -> None:
        self.board, self.upstreams, self.leader, self.interval = board, upstreams, leader, interval
        self._published: State | None = None
        self._seq = 0
        self._seen: State = {}

    def tick(self) -> None:
        self.sync()

    def sync(self) -> None:
        if self.leader:
            state = checked_state(self.upstreams())
            if state != self._published:
                self.board.publish(state)
                self._published = state
            return
        seq, state = self.board.read()
        if seq == self._seq:
            return
        self._seq = seq
        disabled = state.get(DISABLED, {})
        for name, upstream in self.upstreams().items():
            keys = set(disabled.get(name, ()))
            for backend in upstream.balancer.backends:
                if backend.disabled != (backend.key in keys):
                    backend.set_disabled(backend.key in keys)
                    log.info("backend %s %s by an operator (upstream %s)", backend.key, "disabled" if backend.disabled else "enabled", name)
        for name, upstream in self.upstreams().items():
            published = state.get(name)
            if upstream.checker is None or published is None:
                continue
            seen = self._seen.get(name, {})
            for backend in upstream.checker.backends:
                healthy = published.get(backend.key)
                if healthy is not None and healthy != seen.get(backend.key) and backend.verdict != healthy:
                    backend.set_health(healthy)
                    log.info("backend %s %s (upstream %s, checked by worker 0)", backend.key, "up" if healthy else "down", name)
        self._seen = state

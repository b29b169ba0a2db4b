"""Metrics of every worker process, in one anonymous shared mapping the master creates
before it forks.

Each worker owns a slot and, about once a second, writes its registry's snapshot there
(``marshal``: compact and fast for a dict of tuples, ints, floats and lists). Whichever
worker answers ``/metrics`` publishes its own snapshot first, then reads every slot and
merges them: answering from unpublished counts would let the next scrape, answered by
another worker, show a lower total.

No locks: a worker only writes its own slot. A slot holds two buffers written in turn, each
with a sequence number (a seqlock: odd while a write is under way, bumped again when it is
done) and a CRC32 of its payload (which also covers CPUs that reorder stores). A reader
takes the newest even, unchanged buffer and starts over if either number moved while it
read, so it never waits on a writer and never returns an older publication than one
complete when it began; a worker killed in the middle of a write (SIGKILL) leaves its
previous snapshot whole in the other buffer.

Counts survive a worker restart: the process that takes a slot over reads the last
snapshot its predecessor published and adds its counters and histograms (not its gauges:
they described a process that is gone) to everything it publishes. Totals therefore never
go down; what the dead worker counted after its last publication (under one interval) is
lost. A snapshot larger than the slot is never written past it: the worker publishes it
without histograms, or if even that does not fit republishes the last one that did, logs
the problem once and flags it (``ferryman_metrics_truncated``).

Layout (little endian), per slot: a 64-byte header (writer token, pid), then two buffers,
each a 48-byte header (seq, version, generation, length, crc, flags, needed, published_at)
followed by ``slot_size`` payload bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import mmap
import os
import struct
import time
import zlib
from dataclasses import dataclass

from .metrics import SPECS, Registry, Snapshot, merge, render

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SLOT_SIZE", "Board", "BoardWriter", "MetricsPublisher", "SlotRead"]

DEFAULT_SLOT_SIZE = 4 << 20  # payload bytes per buffer (~5000 label sets); untouched pages cost no memory
READ_TRIES = 64  # a reader gives a slot up after this many inconsistent reads in a row

_SLOT_HEADER = 64
_TOKEN = struct.Struct("<16sQ")  # writer token, pid
_BUF = struct.Struct("<QQQIIIId")  # seq, version, generation, length, crc, flags, needed, published_at
_BUF_HEADER = 48
assert _BUF.size == _BUF_HEADER

OK, STRIPPED, STALE = 0, 1, 2  # flags: complete; histograms dropped; too big, the last snapshot that fitted


@dataclass(frozen=True, slots=True)
class SlotRead:
    """The newest complete publication in a slot."""

    snapshot: Snapshot
    version: int  # publications so far (across the processes that held the slot)
    generation: int  # processes that have held the slot
    flags: int  # OK, STRIPPED or STALE
    needed: int  # bytes the snapshot needed
    published_at: float  # time.monotonic() of the publication
    pid: int  # the process that holds the slot


class Board:
    """The shared mapping: ``workers`` slots of two ``slot_size``-byte buffers."""

    def __init__(self, workers: int, slot_size: int = DEFAULT_SLOT_SIZE) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if slot_size < 64:
            raise ValueError(f"slot_size must be >= 64 bytes, got {slot_size}")
        self.workers = workers
        self.capacity = -(-slot_size // 64) * 64
        self.buffer_bytes = _BUF_HEADER + self.capacity
        self.slot_bytes = _SLOT_HEADER + 2 * self.buffer_bytes
        self._map = mmap.mmap(-1, workers * self.slot_bytes)  # MAP_SHARED | MAP_ANONYMOUS: fork keeps it shared
        self._words = memoryview(self._map).cast("Q")  # 8-byte loads and stores for the sequence numbers

    @classmethod
    def create(cls, workers: int, slot_size: int = DEFAULT_SLOT_SIZE) -> Board:
        """In the master, before forking the workers."""
        return cls(workers, slot_size)

    def close(self) -> None:
        self._words.release()
        self._map.close()

    # geometry ---------------------------------------------------------------------------------
    def _slot(self, index: int) -> int:
        if not 0 <= index < self.workers:
            raise IndexError(f"worker {index} is not one of the board's {self.workers}")
        return index * self.slot_bytes

    def _buffer(self, index: int, which: int) -> int:
        return self._slot(index) + _SLOT_HEADER + which * self.buffer_bytes

    # reading ----------------------------------------------------------------------------------
    def read(self, index: int) -> SlotRead | None:
        """The newest complete publication of slot ``index``, or None if there is none.

        Both sequence numbers are read before and after: if either moved, a write began or
        ended meanwhile and the read starts over (up to ``READ_TRIES`` times), so the result
        is the newest publication complete when the read began, never an older one. A buffer
        left odd by a writer that died stays odd and is simply passed over."""
        mem, words = self._map, self._words
        offs = (self._buffer(index, 0), self._buffer(index, 1))
        at = (offs[0] // 8, offs[1] // 8)
        for _ in range(READ_TRIES):
            seqs = (words[at[0]], words[at[1]])
            if seqs == (0, 0):
                return None
            found = []
            for off, seq in zip(offs, seqs):
                if seq & 1 or not seq:
                    continue  # being written (or its writer died half way)
                _, version, generation, length, crc, flags, needed, published = _BUF.unpack_from(mem, off)
                data = mem[off + _BUF_HEADER: off + _BUF_HEADER + min(length, self.capacity)]
                found.append((version, generation, flags, needed, published, data, crc))
            if (words[at[0]], words[at[1]]) != seqs:
                continue
            if not found:
                return None
            version, generation, flags, needed, published, data, crc = max(found, key=lambda f: f[0])
            if zlib.crc32(data) != crc:
                continue  # stable yet inconsistent: stores seen out of order; read again
            try:
                snapshot = marshal.loads(data)
            except (ValueError, EOFError, TypeError):
                continue
            _, pid = _TOKEN.unpack_from(mem, self._slot(index))
            return SlotRead(snapshot, version, generation, flags, needed, published, pid)
        return None

    def read_slots(self) -> list[SlotRead | None]:
        return [self.read(i) for i in range(self.workers)]

    def read_all(self) -> list[Snapshot | None]:
        """Every worker's last snapshot (None for a slot nobody published in)."""
        return [r.snapshot if r is not None else None for r in self.read_slots()]

    # writing ----------------------------------------------------------------------------------
    def writer(self, index: int) -> BoardWriter:
        """In a worker, once: take slot ``index`` over (carrying the previous holder's counts).
        The previous holder must be gone (the master starts a worker's successor once it has
        reaped it); a writer that finds its slot taken over stops publishing."""
        return BoardWriter(self, index)


class BoardWriter:
    """The one process writing a slot. Its predecessor's counters become its base."""

    def __init__(self, board: Board, index: int) -> None:
        self.board = board
        self.index = index
        self.token = os.urandom(16)
        previous = board.read(index)
        self.base: Snapshot = {}
        if previous is not None:
            for key, value in previous.snapshot.items():
                spec = SPECS.get(key[0])
                if spec is not None and spec.kind != "gauge":
                    self.base[key] = value
        self.version = previous.version if previous is not None else 0
        self.generation = (previous.generation if previous is not None else 0) + 1
        self._last = marshal.dumps(self.base)  # republished when a snapshot does not fit
        self._warned = False
        self._lost = False
        _TOKEN.pack_into(board._map, board._slot(index), self.token, os.getpid())
        # publish the carried counts at once: the slot stops showing the gauges of a process that is gone
        self._write(self._last, OK, len(self._last), time.monotonic())

    def compose(self, snapshot: Snapshot) -> Snapshot:
        """``snapshot`` plus the counts of the slot's previous holders."""
        out = dict(snapshot)
        for key, value in self.base.items():
            mine = out.get(key)
            if mine is None:
                out[key] = value
            elif isinstance(mine, list):
                if isinstance(value, list) and len(value) == len(mine):
                    out[key] = [a + b for a, b in zip(mine, value)]
            elif not isinstance(value, list):
                out[key] = mine + value
        return out

    def publish(self, snapshot: Snapshot, now: float | None = None) -> int:
        """Write ``compose(snapshot)`` to the slot; returns its flags (OK, STRIPPED, STALE)."""
        board = self.board
        token, _ = _TOKEN.unpack_from(board._map, board._slot(self.index))
        if token != self.token:
            if not self._lost:
                self._lost = True
                log.error("metrics slot %d was taken over by another process: this one stops publishing", self.index)
            return STALE
        data = marshal.dumps(self.compose(snapshot))
        needed, flags = len(data), OK
        if needed > board.capacity:
            stripped = {k: v for k, v in self.compose(snapshot).items() if not isinstance(v, list)}
            data, flags = marshal.dumps(stripped), STRIPPED
            if len(data) > board.capacity:
                data, flags = self._last, STALE
            if not self._warned:
                self._warned = True
                log.warning(
                    "metrics of worker %d need %d bytes, over the slot's %d: publishing %s (logged once; raise the slot size)",
                    self.index, needed, board.capacity, "them without histograms" if flags == STRIPPED else "the last snapshot that fitted",
                )
        else:
            self._last = data
        if flags == STRIPPED:
            self._last = data
        self._write(data, flags, needed, time.monotonic() if now is None else now)
        return flags

    def _write(self, data: bytes, flags: int, needed: int, published: float) -> None:
        board = self.board
        self.version += 1
        off = board._buffer(self.index, self.version & 1)
        words, mem = board._words, board._map
        at = off // 8
        seq = words[at]
        seq += 1 if seq % 2 == 0 else 2  # odd: writing (a dead writer may have left it odd)
        words[at] = seq
        _BUF.pack_into(mem, off, seq, self.version, self.generation, len(data), zlib.crc32(data), flags, needed, published)
        mem[off + _BUF_HEADER: off + _BUF_HEADER + len(data)] = data
        words[at] = seq + 1


class MetricsPublisher:
    """Background service of a worker: publish its registry every ``interval`` seconds, and
    answer ``/metrics`` for the whole process tree (:meth:`exposition`). Create it in the
    worker (after the fork): it takes the worker's slot over.

    Without a board (one process) it publishes nothing and :meth:`exposition` renders the
    registry alone. ``stop()`` publishes a last time, so a graceful restart loses nothing.
    """

    def __init__(self, board: Board | None, index: int, registry: Registry, interval: float = 1.0) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.board = board
        self.index = index
        self.registry = registry
        self.interval = interval
        self.writer = board.writer(index) if board is not None else None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Publish now, then every ``interval`` on the running loop. Idempotent."""
        if self.running or self.writer is None:
            return
        self.publish()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="metrics-publisher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.publish()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.publish()

    def publish(self) -> None:
        if self.writer is None:
            return
        try:
            self.writer.publish(self.registry.snapshot())
        except Exception:  # metrics must never take a worker down
            log.exception("publishing metrics failed")

    def collect(self) -> Snapshot:
        """The merged snapshot of every worker. This worker publishes first, so what it
        answers is on the board: a later scrape answered by another worker (or by this
        worker's successor) never shows a lower total."""
        if self.board is None or self.writer is None:
            return merge([self.registry.snapshot()])
        self.publish()
        return collect(self.board)

    def exposition(self) -> str:
        """The ``/metrics`` body (content type :data:`~ferryman.observability.metrics.CONTENT_TYPE`)."""
        return render(self.collect())


def collect(board: Board, now: float | None = None) -> Snapshot:
    """Merge every slot and add the board's own facts per worker: starts, age, size,
    truncation. Gauges of a slot whose process is gone are left out."""
    now = time.monotonic() if now is None else now
    reads = board.read_slots()
    dead = {index for index, read in enumerate(reads) if read is not None and not _alive(read.pid)}
    out = merge([read.snapshot if read is not None else None for read in reads], skip_gauges=dead)
    for index, read in enumerate(reads):
        if read is None:
            continue
        worker = (str(index),)
        out[("ferryman_worker_starts_total", worker)] = read.generation
        out[("ferryman_metrics_age_seconds", worker)] = max(0.0, now - read.published_at)
        out[("ferryman_metrics_snapshot_bytes", worker)] = read.needed
        out[("ferryman_metrics_truncated", worker)] = read.flags
    return out


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

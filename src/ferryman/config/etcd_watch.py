"""Follow an etcd config: reload when a key under the prefix changes.

:class:`EtcdWatcher` is a thread holding one etcd watch (from the revision the config was
read at, so nothing written since is missed, even across a compaction). When the stream
breaks (etcd restarted, a member died) it reconnects with backoff, re-reads the whole prefix
and reports a change only if the content differs from what was loaded. A quiet stream is
re-established after ``IDLE_TIMEOUT`` the same way (a half-open connection would otherwise
hide changes forever).

Its reports are debounced (``DEBOUNCE``: a burst of puts, as ``config push`` makes, gives one
reload) by :class:`EtcdWatchService` (one process: a background service on the event loop)
or :class:`MasterWatch` (with workers: polled by the master about once a second). With
workers the master reads the reload and puts the revision in a :class:`RevisionSlot` the
workers read, so every process loads the same content.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import struct
import threading
import time
from collections.abc import Callable

from .etcd import EtcdSource
from .etcd_client import EtcdClient, EtcdError, WatchStream
from .etcd_layout import fingerprint

log = logging.getLogger(__name__)

DEBOUNCE = 0.2  # seconds without a new change before reloading
IDLE_TIMEOUT = 60.0  # a watch that heard nothing this long is re-established
BACKOFF = (0.2, 3.0)  # reconnect delays: first, and the most it doubles up to


class EtcdWatcher:
    """A thread: ``on_change(revision)`` whenever the keys may have changed at ``revision``
    (called on the watcher's thread)."""

    def __init__(
        self,
        source: EtcdSource,
        on_change: Callable[[int], None],
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        backoff: tuple[float, float] = BACKOFF,
    ) -> None:
        self.source = source
        self.client = EtcdClient(source.url)  # its own: never shared with another thread
        self.on_change = on_change
        self.idle_timeout, self.backoff = idle_timeout, backoff
        self._stopping = threading.Event()
        self._stream_lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="etcd-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the watch (a read blocked on the stream is woken) and wait for the thread."""
        self._stopping.set()
        with self._stream_lock:
            if self._stream is not None:
                self._stream.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        revision = self.source.revision  # the content loaded at start: watch what comes after
        resync, delay, lost = False, self.backoff[0], False
        while not self._stopping.is_set():
            try:
                if resync:
                    revision = self._resync()
                    resync = False
                stream = self.client.watch(self.source.prefix, revision + 1, self.idle_timeout)
                with self._stream_lock:
                    if self._stopping.is_set():
                        stream.close()
                        return
                    self._stream = stream
                for message in stream.messages():
                    result = message.get("result")
                    if not isinstance(result, dict):
                        error = message.get("error")
                        raise EtcdError(f"watch error: {error.get('message', error) if isinstance(error, dict) else error or message}")
                    if result.get("compact_revision"):  # what we wanted is gone: read it all
                        log.info("etcd watch on %s: revision %d compacted; re-reading the keys", self.source.name, revision + 1)
                        resync = True
                        break
                    if result.get("canceled"):
                        self.client.forget_token()  # e.g. an expired token: authenticate again
                        raise EtcdError(f"watch canceled: {result.get('cancel_reason') or 'no reason given'}")
                    if result.get("created"):
                        if lost:
                            log.info("etcd watch on %s: connected again at revision %d", self.source.name, revision)
                        lost, delay = False, self.backoff[0]
                    if result.get("events"):
                        revision = int(result["header"]["revision"])
                        self.on_change(revision)
            except TimeoutError:
                resync = True  # quiet for idle_timeout: make sure the connection still works
            except (EtcdError, OSError, ValueError, KeyError) as exc:
                if self._stopping.is_set():
                    return
                if not lost:
                    log.warning("etcd watch on %s lost: %s; reconnecting", self.source.name, exc)
                lost, resync = True, True
                self._stopping.wait(delay)
                delay = min(delay * 2, self.backoff[1])
            finally:
                with self._stream_lock:
                    if self._stream is not None:
                        self._stream.close()
                        self._stream = None

    def _resync(self) -> int:
        """Read the whole prefix; report a change if it differs from what was last loaded.
        The revision to watch after."""
        revision, entries = self.client.range_prefix(self.source.prefix)
        if fingerprint(entries) != self.source.fingerprint:
            log.info("etcd keys under %s differ from the loaded ones (revision %d)", self.source.name, revision)
            self.on_change(revision)
        return revision


class EtcdWatchService:
    """Background service (one process): ``reload()`` once the keys changed and settled."""

    name = "etcd-watch"

    def __init__(self, source: EtcdSource, reload: Callable[[], None], debounce: float = DEBOUNCE, **watcher: object) -> None:
        self.source, self.reload, self.debounce = source, reload, debounce
        self.watcher = EtcdWatcher(source, self._noted, **watcher)  # type: ignore[arg-type]
        self.latest = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.watcher.start()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await asyncio.to_thread(self.watcher.stop)

    def _noted(self, revision: int) -> None:  # on the watcher's thread
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._changed, revision)
            except RuntimeError:  # the loop closed while stopping
                pass

    def _changed(self, revision: int) -> None:
        self.latest = max(self.latest, revision)
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer = self._loop.call_later(self.debounce, self._settled)

    def _settled(self) -> None:
        self._timer = None
        if self.latest > max(self.source.revision, self.source.pushed):  # not one loaded or written (and reloaded) here
            log.info("etcd keys under %s changed (revision %d): reloading", self.source.name, self.latest)
            self.reload()


class MasterWatch:
    """With workers: :meth:`poll` (the master's ``changed``) is True once per settled change."""

    def __init__(self, source: EtcdSource, debounce: float = DEBOUNCE, **watcher: object) -> None:
        self.source, self.debounce = source, debounce
        self.watcher = EtcdWatcher(source, self._noted, **watcher)  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self._latest, self._at, self._fired = 0, 0.0, 0

    def start(self) -> None:
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()

    def _noted(self, revision: int) -> None:  # on the watcher's thread
        with self._lock:
            self._latest, self._at = max(self._latest, revision), time.monotonic()

    def poll(self) -> bool:
        with self._lock:
            latest, at = self._latest, self._at
        if latest <= max(self.source.revision, self.source.pushed, self._fired) or time.monotonic() - at < self.debounce:
            return False
        self._fired = latest
        log.info("etcd keys under %s changed (revision %d): reloading", self.source.name, latest)
        return True


class RevisionSlot:
    """Shared memory (mapped before the fork) where the master says which revision a reload
    reads and whether the etcd watch caused it; the workers read it on SIGHUP."""

    WATCH, OTHER = 1, 0
    _FORMAT = "<qB"

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, struct.calcsize(self._FORMAT))

    def put(self, revision: int, by_watch: bool) -> None:
        struct.pack_into(self._FORMAT, self._map, 0, revision, self.WATCH if by_watch else self.OTHER)

    def get(self) -> tuple[int | None, bool]:
        revision, cause = struct.unpack_from(self._FORMAT, self._map, 0)
        return (revision or None), cause == self.WATCH

    def close(self) -> None:
        self._map.close()

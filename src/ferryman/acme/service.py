"""One process's ACME part: the manager (in worker 0 only) and the certificate watch (in
every process), as one background service of the server.

The watch notices a stored certificate file that changed (issued or renewed, by this
process or by worker 0) with one ``stat`` per managed certificate per ``interval`` and
calls ``refresh()``, which re-reads the listeners' certificates: new handshakes get the new
certificate, established connections keep theirs, nothing is closed or re-bound. With no
``acme`` certificate configured it does nothing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .manager import AcmeManager, managed_certificates
from .storage import Storage

if TYPE_CHECKING:
    from ..config.model import Config

log = logging.getLogger(__name__)

__all__ = ["AcmeService"]

WATCH_INTERVAL = 1.0

FileVersion = tuple[int, int, int] | None  # (mtime_ns, inode, size); None: no file


def _version(path: str) -> FileVersion:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_ino, stat.st_size)


class AcmeService:
    """``leader``: this process obtains and renews the certificates. ``refresh``: re-read
    the listeners' certificate files (called on the event loop)."""

    name = "acme"

    def __init__(self, *, leader: bool, refresh: Callable[[], None], interval: float = WATCH_INTERVAL) -> None:
        self.manager = AcmeManager(on_issued=self._issued) if leader else None
        self.refresh = refresh
        self.interval = interval
        self._files: dict[str, FileVersion] = {}  # stored certificate path → version last served
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def configure(self, config: Config) -> None:
        """Call with each config generation, before its listeners load their certificates."""
        managed = managed_certificates(config)
        files = {str(Storage(m.storage).certificate_path(m.name)) for m in managed.values()}
        self._files = {path: self._files.get(path, _version(path)) for path in files}
        if self.manager is not None:
            self.manager.configure(managed)
        self._wake.set()

    def ready(self) -> None:
        """``server.on_started``: the listeners serve, challenges can be answered."""
        if self.manager is not None:
            self.manager.ready()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="acme-watch")
        if self.manager is not None:
            self.manager.start()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.manager is not None:
            await self.manager.stop()

    def poll(self) -> bool:
        """Refresh the listeners if a stored certificate changed since the last look."""
        changed = [path for path, seen in self._files.items() if _version(path) != seen]
        if not changed:
            return False
        for path in changed:
            self._files[path] = _version(path)
        log.info("acme: serving the new certificate%s %s", "s" if len(changed) > 1 else "", ", ".join(sorted(changed)))
        self.refresh()
        return True

    def _issued(self, _name: str) -> None:
        self.poll()  # at once in the process that issued; the others within ``interval``

    async def _watch(self) -> None:
        while True:
            self._wake.clear()
            if self._files:
                try:
                    self.poll()
                except Exception:
                    log.exception("acme: refreshing certificates failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval if self._files else None):
                    await self._wake.wait()

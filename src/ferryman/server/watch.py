"""Notice that a config file changed (``server.watch``): poll its identity once a second.

Polling ``stat`` is enough here (one file, changes are rare) and, unlike inotify, sees an
editor's rename-over and a Kubernetes ConfigMap's symlink swap alike. A change is reported
once the file has stayed the same for one poll, so a file written in several steps is read
whole.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from .periodic import Periodic

log = logging.getLogger(__name__)


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns


class FileWatch:
    """``poll()`` returns True once per settled change of ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._seen = _identity(self.path)
        self._pending: tuple[int, int, int, int] | None = None

    def poll(self) -> bool:
        now = _identity(self.path)
        if now is None or now == self._seen:
            self._pending = None
            return False
        if now != self._pending:  # changed since the last poll: wait until it settles
            self._pending = now
            return False
        self._seen, self._pending = now, None
        return True


class WatchService(Periodic):
    """Background service (single process): calls ``on_change`` when the file changed."""

    name = "config-watch"

    def __init__(self, path: str | Path, on_change: Callable[[], None], interval: float = 1.0) -> None:
        self.watch = FileWatch(path)
        self.on_change = on_change
        self.interval = interval

    def tick(self) -> None:
        if self.watch.poll():
            log.info("config file %s changed: reloading", self.watch.path)
            self.on_change()

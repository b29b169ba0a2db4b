"""A background service that runs one synchronous step every ``interval`` seconds."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)


class Periodic:
    """Subclasses implement :meth:`tick`; ``start()`` / ``async stop()`` as the server expects.
    A tick that raises is logged and the next one runs as usual."""

    name = "periodic"
    interval = 1.0

    _task: asyncio.Task[None] | None = None

    def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("%s failed", self.name)
            await asyncio.sleep(self.interval)

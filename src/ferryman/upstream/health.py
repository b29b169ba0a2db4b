"""Active health checks: probe every backend periodically and flip ``backend.healthy``.

Runs as one asyncio background task per checker (control plane, not data path). A
backend goes down after ``fall`` consecutive failed checks and comes back after
``rise`` consecutive successes, as HAProxy does; each transition is logged once with
the reason. Balancers see the change immediately because they share the Backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .backend import Backend

logger = logging.getLogger(__name__)

Check = Callable[[Backend], Awaitable[None]]
"""A health check: returns when the backend is fine, raises when it is not."""

ChangeCallback = Callable[[Backend, bool, str], None]
"""Called as ``(backend, healthy, reason)`` after each transition."""


@dataclass(slots=True)
class HealthCheckConfig:
    """Timing and thresholds. ``timeout`` bounds each single check."""

    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    initially_healthy: bool = True

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"interval must be > 0, got {self.interval}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        if self.rise < 1 or self.fall < 1:
            raise ValueError(f"rise and fall must be >= 1, got rise={self.rise} fall={self.fall}")


async def tcp_check(backend: Backend, timeout: float | None = None) -> None:
    """Connect to the backend (TCP or Unix socket), then close. Raises on failure."""
    address = backend.address
    async with asyncio.timeout(timeout):
        if address.is_unix:
            _, writer = await asyncio.open_unix_connection(address.path)
        else:
            _, writer = await asyncio.open_connection(address.host, address.port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def describe_failure(exc: BaseException, timeout: float) -> str:
    """A short reason for logs: ``connection refused``, ``timed out after 2s`` ..."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(slots=True)
class HealthState:
    """Consecutive results for one backend; one counter is always 0."""

    successes: int = 0
    failures: int = 0
    last_error: str = ""


class HealthChecker:
    """Periodically runs ``check`` against every backend and applies rise/fall.

    Construction sets every backend's ``healthy`` to ``config.initially_healthy``;
    keep the same checker across reloads for backends whose state should survive.
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        config: HealthCheckConfig,
        check: Check = tcp_check,
        *,
        on_change: ChangeCallback | None = None,
    ) -> None:
        self.backends: tuple[Backend, ...] = tuple(backends)
        self.config = config
        self.check = check
        self.on_change = on_change
        self._states = {id(b): HealthState() for b in self.backends}
        self._task: asyncio.Task[None] | None = None
        for backend in self.backends:
            backend.healthy = config.initially_healthy

    def state(self, backend: Backend) -> HealthState:
        return self._states[id(backend)]

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start checking on the running loop (first round immediately). Idempotent."""
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health-checker")

    async def stop(self) -> None:
        """Cancel the background task and wait for it to finish."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def run_once(self) -> None:
        """Check every backend once, concurrently, and apply the results."""
        await asyncio.gather(*(self._check_one(b) for b in self.backends))

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # a bug in a callback must not stop health checking
                logger.exception("health check round failed")
            await asyncio.sleep(self.config.interval)

    async def _check_one(self, backend: Backend) -> None:
        timeout = self.config.timeout
        try:
            async with asyncio.timeout(timeout):
                await self.check(backend)
        except Exception as exc:  # noqa: BLE001 - any failure of a check means "down"
            self._record(backend, describe_failure(exc, timeout))
        else:
            self._record(backend, "")

    def _record(self, backend: Backend, error: str) -> None:
        state = self._states[id(backend)]
        config = self.config
        if error:
            state.successes = 0
            state.failures += 1
            state.last_error = error
            if backend.healthy and state.failures >= config.fall:
                self._transition(backend, False, f"{error} ({state.failures} consecutive failures)")
        else:
            state.failures = 0
            state.successes += 1
            if not backend.healthy and state.successes >= config.rise:
                self._transition(backend, True, f"check passed ({state.successes} consecutive successes)")

    def _transition(self, backend: Backend, healthy: bool, reason: str) -> None:
        backend.healthy = healthy
        if healthy:
            logger.info("backend %s up: %s", backend.key, reason)
        else:
            logger.warning("backend %s down: %s", backend.key, reason)
        if self.on_change is not None:
            try:
                self.on_change(backend, healthy, reason)
            except Exception:
                logger.exception("health change callback failed for backend %s", backend.key)

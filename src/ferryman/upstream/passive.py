"""Passive health: take a backend out of service when real traffic keeps failing on it.

Like nginx's ``max_fails``/``fail_timeout`` with HAProxy's ``observe layer7``: the data
path reports each connect error, timeout or reset (and 5xx answer when ``count_5xx``);
``max_fails`` failures within ``fail_window`` seconds of the first one eject the backend
(``healthy = False``) for ``cool_down`` seconds. Then one probe decides: with an active
:class:`~ferryman.upstream.health.HealthChecker` that checker readmits the backend after
``rise`` fresh successes; without one, ``probe`` (a TCP connect by default) runs once and
either readmits it or ejects it again for a doubled cool-down (at most 8x).

The reporting methods are synchronous, cheap and never raise; timers and probes run on
the loop that is running when the first ejection happens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .backend import Backend
from .health import Check, HealthChecker, describe_failure, tcp_check

if TYPE_CHECKING:
    from ..config.model import PassiveHealthConfig

logger = logging.getLogger(__name__)

MAX_BACKOFF = 8
"""A backend whose probes keep failing waits at most this many cool-downs between probes."""


@dataclass(frozen=True, slots=True)
class PassiveState:
    """What passive health knows about one backend (for the admin API and tests)."""

    failures: int = 0  # failures counted in the current window
    ejected: bool = False
    ejections: int = 0  # times taken out of service, re-ejections after a failed probe included
    last_reason: str = ""


class _Entry:
    """Mutable per-backend state; created at the first failure."""

    __slots__ = ("backoff", "ejected", "ejections", "failures", "first", "last_reason", "task", "timer")

    def __init__(self) -> None:
        self.failures = 0
        self.first = 0.0  # monotonic time of the first failure of the window
        self.ejected = False
        self.ejections = 0
        self.last_reason = ""
        self.backoff = 1  # cool-down multiplier for the next ejection of this streak
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None


class PassiveHealth:
    """Counts failures reported by the data path and ejects/readmits backends.

    One instance per upstream (it may be shared by every backend of that upstream).
    ``checker``: the upstream's active checker, if any; ``probe``: the check run after a
    cool-down when there is no running checker (default :func:`tcp_check`), bounded by
    ``probe_timeout`` seconds.
    """

    def __init__(
        self,
        max_fails: int,
        fail_window: float,
        cool_down: float,
        count_5xx: bool,
        *,
        probe: Check | None = None,
        checker: HealthChecker | None = None,
        probe_timeout: float = 2.0,
    ) -> None:
        if max_fails < 1:
            raise ValueError(f"max_fails must be >= 1, got {max_fails}")
        if fail_window <= 0 or cool_down <= 0 or probe_timeout <= 0:
            raise ValueError(
                f"fail_window, cool_down and probe_timeout must be > 0, got "
                f"{fail_window}, {cool_down}, {probe_timeout}"
            )
        self.max_fails = max_fails
        self.fail_window = fail_window
        self.cool_down = cool_down
        self.count_5xx = count_5xx
        self.probe: Check = probe if probe is not None else tcp_check
        self.checker = checker
        self.probe_timeout = probe_timeout
        self._entries: dict[Backend, _Entry] = {}  # Backend hashes by identity
        self._tasks: set[asyncio.Task[None]] = set()  # probes, until they are done
        self._stopped = False

    @classmethod
    def from_config(
        cls,
        cfg: PassiveHealthConfig,
        *,
        probe: Check | None = None,
        checker: HealthChecker | None = None,
        probe_timeout: float = 2.0,
    ) -> PassiveHealth:
        """From a ``passive_health`` table; ``probe`` should be the active check's kind."""
        return cls(
            cfg.max_fails,
            cfg.fail_window,
            cfg.cool_down,
            cfg.count_5xx,
            probe=probe,
            checker=checker,
            probe_timeout=probe_timeout,
        )

    # -- data path --------------------------------------------------------------------------

    def success(self, backend: Backend) -> None:
        """A request or connection on ``backend`` went well: its failure count restarts."""
        entry = self._entries.get(backend)
        if entry is not None and (entry.failures or entry.ejected):
            entry.failures = 0
            if entry.ejected and backend.healthy:  # readmitted by the active checker
                entry.ejected = False

    def response(self, backend: Backend, status: int) -> None:
        """``backend`` answered ``status``: a 5xx counts as a failure when ``count_5xx``."""
        if status >= 500 and self.count_5xx:
            self.failure(backend, f"status {status}")
        else:
            self.success(backend)

    def failure(self, backend: Backend, reason: str) -> None:
        """A connect error, timeout or reset on ``backend``; may eject it."""
        if self._stopped or not backend.verdict:
            return  # already out of service (ejected, or down per the active checker)
        entry = self._entries.get(backend)
        if entry is None:
            entry = self._entries[backend] = _Entry()
        elif entry.ejected:  # readmitted by the active checker since we ejected it
            entry.ejected = False
            entry.backoff = 1
        now = time.monotonic()
        if entry.failures == 0 or now - entry.first > self.fail_window:
            entry.failures = 1
            entry.first = now
        else:
            entry.failures += 1
        entry.last_reason = reason
        if entry.failures >= self.max_fails:
            try:
                self._eject(backend, entry, reason)
            except Exception:  # the data path must never see an error from here
                logger.exception("passive health could not eject backend %s", backend.key)

    # -- ejection and probing --------------------------------------------------------------------

    def _eject(self, backend: Backend, entry: _Entry, reason: str) -> None:
        count = entry.failures
        backend.set_health(False)
        entry.ejected = True
        entry.ejections += 1
        entry.failures = 0
        entry.backoff = 1
        checker = self.checker
        if checker is not None and checker.running and checker.restart_rise(backend):
            logger.warning(
                "backend %s ejected: %d failures within %gs, last: %s; back after %d passing active checks",
                backend.key, count, self.fail_window, reason, checker.config.rise,
            )
            return
        logger.warning(
            "backend %s ejected for %gs: %d failures within %gs, last: %s",
            backend.key, self.cool_down, count, self.fail_window, reason,
        )
        self._schedule(backend, entry, self.cool_down)

    def _schedule(self, backend: Backend, entry: _Entry, delay: float) -> None:
        loop = asyncio.get_running_loop()
        entry.timer = loop.call_later(delay, self._start_probe, backend, entry)

    def _start_probe(self, backend: Backend, entry: _Entry) -> None:
        entry.timer = None
        if self._stopped:
            return
        task = asyncio.get_running_loop().create_task(
            self._probe(backend, entry), name=f"passive-probe {backend.key}"
        )
        entry.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(self, backend: Backend, entry: _Entry) -> None:
        timeout = self.probe_timeout
        try:
            try:
                async with asyncio.timeout(timeout):
                    await self.probe(backend)
            except Exception as exc:  # noqa: BLE001 - any failure of the probe means "still down"
                reason = f"probe failed: {describe_failure(exc, timeout)}"
            else:
                reason = ""
            if self._stopped or self._entries.get(backend) is not entry:
                return
            if not reason:
                backend.set_health(True)
                entry.ejected = False
                entry.failures = 0
                entry.backoff = 1
                logger.info("backend %s back after probe", backend.key)
                return
            entry.backoff = min(entry.backoff * 2, MAX_BACKOFF)
            entry.ejections += 1
            entry.last_reason = reason
            delay = self.cool_down * entry.backoff
            logger.warning("backend %s stays ejected for %gs: %s", backend.key, delay, reason)
            self._schedule(backend, entry, delay)
        finally:
            if entry.task is asyncio.current_task():
                entry.task = None

    # -- control -------------------------------------------------------------------------------

    def state(self, backend: Backend) -> PassiveState:
        """A snapshot of ``backend``'s passive state (all zero if it never failed)."""
        entry = self._entries.get(backend)
        if entry is None:
            return PassiveState()
        failures = entry.failures
        if failures and time.monotonic() - entry.first > self.fail_window:
            failures = 0
        return PassiveState(failures, entry.ejected and not backend.verdict, entry.ejections, entry.last_reason)

    @property
    def pending(self) -> int:
        """Cool-down timers and probes not yet finished (0 after :meth:`stop`)."""
        return sum((e.timer is not None) + (e.task is not None) for e in self._entries.values())

    def forget(self, backend: Backend) -> None:
        """Drop ``backend``'s state and cancel its timer or probe (the backend was removed,
        e.g. by a DNS re-resolution). Its ``healthy`` flag is left as it is."""
        entry = self._entries.pop(backend, None)
        if entry is not None:
            self._cancel(entry)

    def stop(self) -> None:
        """Cancel every pending cool-down timer and probe; later reports are ignored.

        Called when the upstream is removed on reload; :meth:`aclose` also waits for
        cancelled probes to finish closing their connections."""
        self._stopped = True
        for entry in self._entries.values():
            self._cancel(entry)

    async def aclose(self) -> None:
        """:meth:`stop`, then wait until cancelled probes are done."""
        self.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @staticmethod
    def _cancel(entry: _Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if entry.task is not None:
            entry.task.cancel()
            entry.task = None

"""Sentry: report unexpected errors to a DSN (the ``sentry`` extra: ``sentry-sdk``).

What is reported is what ferryman logs at ``event_level`` or above (error by default):
a hook that raised, an internal error caught and logged with ``log.exception`` (the event
carries the exception, its type, message and stack), a crashed worker, a refused reload.
Lower records become breadcrumbs of the next event. The SDK sends from its own thread,
so reporting never blocks the event loop.

Only the integrations ferryman needs are enabled (logging, dedupe, excepthook, threading):
no auto-instrumentation of ``http.client`` or anything else on the data path.
"""

from __future__ import annotations

import logging
import socket
from importlib.util import find_spec
from typing import Any

__all__ = ["EXTRA", "flush", "missing_extra", "setup", "setup_from_config"]

EXTRA = "pip install 'ferryman[sentry]'"
LEVELS = {"warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}
_enabled = False


def missing_extra() -> str | None:
    """Why Sentry reporting cannot run here (the extra is not installed), or None."""
    try:
        found = find_spec("sentry_sdk") is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"needs the Sentry SDK, which is not installed (no sentry_sdk): {EXTRA}"


def setup(dsn: str, *, environment: str | None = None, release: str | None = None, sample_rate: float = 1.0,
          event_level: int = logging.ERROR, tags: dict[str, str] | None = None) -> None:
    """Start reporting this process's errors (and those of workers forked later) to ``dsn``.

    ``release`` defaults to ``ferryman@VERSION``."""
    global _enabled
    import sentry_sdk
    from sentry_sdk.integrations.dedupe import DedupeIntegration
    from sentry_sdk.integrations.excepthook import ExcepthookIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.integrations.threading import ThreadingIntegration

    from .. import __version__

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release or f"ferryman@{__version__}",
        sample_rate=sample_rate,
        server_name=socket.gethostname(),
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[
            LoggingIntegration(level=logging.INFO, event_level=event_level),
            DedupeIntegration(),
            ExcepthookIntegration(),
            ThreadingIntegration(propagate_scope=False),
        ],
        send_default_pii=False,
        traces_sample_rate=None,
    )
    for key, value in (tags or {}).items():
        sentry_sdk.set_tag(key, value)
    _enabled = True


def setup_from_config(config: Any) -> None:
    """:func:`setup` from a ``[sentry]`` table (a :class:`~ferryman.config.model.SentryConfig`)."""
    setup(config.dsn, environment=config.environment, release=config.release, sample_rate=config.sample_rate,
          event_level=LEVELS[config.event_level])


def flush(timeout: float = 2.0) -> None:
    """Send what is pending (before a process exits with ``os._exit``). Blocks up to ``timeout``."""
    if not _enabled:
        return
    import sentry_sdk

    sentry_sdk.flush(timeout)

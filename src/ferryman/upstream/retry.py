"""When a request goes to the next backend: nginx's ``proxy_next_upstream`` for one upstream.

``retry_on`` names the failures: ``error`` (connect refused or failed, reset or close before
the answer, a malformed answer), ``timeout`` (connect or read timeout before the answer),
``http_NNN`` (that status; only for requests without a body, decided before anything went
downstream). After the request was sent, only idempotent methods are retried unless
``retry_non_idempotent``. ``max_tries`` and ``retry_timeout`` bound the attempts.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ErrorKind, ProxyError

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_TIMEOUTS = frozenset({ErrorKind.CONNECT_TIMEOUT, ErrorKind.READ_TIMEOUT, ErrorKind.WRITE_TIMEOUT})
_ERRORS = frozenset({
    ErrorKind.CONNECT_REFUSED, ErrorKind.CONNECT_ERROR, ErrorKind.PROXY_FAILURE, ErrorKind.CONNECTION_CLOSED,
    ErrorKind.CONNECTION_RESET, ErrorKind.PROTOCOL_ERROR,
})


class RetryPolicy:
    """Compiled from an upstream's ``retry_on``, ``retry_non_idempotent`` and ``retry_timeout``."""

    __slots__ = ("kinds", "statuses", "non_idempotent", "timeout")

    def __init__(self, retry_on: Iterable[str], *, non_idempotent: bool = False, timeout: float | None = None) -> None:
        conditions = set(retry_on)
        kinds: set[ErrorKind] = set()
        if "error" in conditions:
            kinds |= _ERRORS
        if "timeout" in conditions:
            kinds |= _TIMEOUTS
        self.statuses = frozenset(int(c[5:]) for c in conditions if c.startswith("http_"))
        if self.statuses:
            kinds.add(ErrorKind.UPSTREAM_STATUS)
        self.kinds = frozenset(kinds)
        self.non_idempotent = non_idempotent
        self.timeout = timeout

    @classmethod
    def from_config(cls, cfg) -> RetryPolicy:  # cfg: config.model.UpstreamConfig
        return cls(cfg.retry_on, non_idempotent=cfg.retry_non_idempotent, timeout=cfg.retry_timeout)

    def connect_failed(self, error: ProxyError) -> bool:
        """A new connection failed: nothing was sent, so any method may go elsewhere."""
        return error.kind in self.kinds

    def failed(self, method: bytes, error: ProxyError) -> bool:
        """The request was (maybe partly) sent when ``error`` happened."""
        return error.kind in self.kinds and (self.non_idempotent or method in IDEMPOTENT)

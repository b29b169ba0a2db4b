"""Typed proxy errors.

Every failure on the data path is a :class:`ProxyError` carrying *what* went wrong
(:class:`ErrorKind`), *where* (:class:`ErrorSource`), whether a retry on another
connection or backend is allowed, and a short context string naming the peer.
Raise them ``from`` the underlying exception so the cause is never lost.
"""

from __future__ import annotations

import enum


class ErrorSource(enum.Enum):
    """Which side of the proxy the error came from."""

    DOWNSTREAM = "downstream"
    UPSTREAM = "upstream"
    INTERNAL = "internal"


class ErrorKind(enum.Enum):
    """What went wrong. Values are stable strings used in logs and metrics."""

    CONNECT_TIMEOUT = "connect_timeout"
    CONNECT_REFUSED = "connect_refused"
    CONNECT_ERROR = "connect_error"
    BIND_ERROR = "bind_error"
    PROXY_FAILURE = "proxy_failure"  # HTTP CONNECT tunnel peer refused or misbehaved
    NO_BACKEND = "no_backend"
    READ_TIMEOUT = "read_timeout"
    WRITE_TIMEOUT = "write_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    CONNECTION_CLOSED = "connection_closed"
    CONNECTION_RESET = "connection_reset"
    PROTOCOL_ERROR = "protocol_error"  # malformed PROXY header, bad HTTP, ...
    BODY_TOO_LARGE = "body_too_large"  # a request body over the limit (413)
    UPSTREAM_STATUS = "upstream_status"  # an answer the retry policy sends to the next backend
    ACCESS_DENIED = "access_denied"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    INTERNAL = "internal"


class ProxyError(Exception):
    """A failure with its kind, source, retry decision and context.

    ``retry`` is a suggestion the ``fail_to_connect`` / ``error_while_proxy`` hooks may
    change; the proxy only tries another backend when it is True.
    """

    __slots__ = ("kind", "source", "retry", "context")

    def __init__(
        self,
        kind: ErrorKind,
        source: ErrorSource = ErrorSource.INTERNAL,
        *,
        retry: bool = False,
        context: str = "",
    ) -> None:
        self.kind = kind
        self.source = source
        self.retry = retry
        self.context = context
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.source.value} {self.kind.value}"
        if self.context:
            text += f": {self.context}"
        cause = self.__cause__
        if cause is not None and str(cause):
            text += f" ({cause})"
        return text

    def __repr__(self) -> str:
        return (
            f"ProxyError({self.kind.name}, {self.source.name}, retry={self.retry}, "
            f"context={self.context!r})"
        )


class ConfigError(Exception):
    """A configuration was rejected; ``errors`` lists ``(toml_path, message)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]], source: str = "") -> None:
        self.errors = errors
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.source}: " if self.source else ""
        return "\n".join(f"{head}{path}: {msg}" if path else f"{head}{msg}" for path, msg in self.errors)

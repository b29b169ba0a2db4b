"""Events produced by the HTTP/1.1 parsers, and the error they raise.

A message arrives as one head (:class:`RequestHead` / :class:`ResponseHead`), zero or more
:class:`Data`, optional :class:`Trailers`, then :class:`EndOfMessage`. Interim 1xx
responses (other than 101) are a lone :class:`ResponseHead` with no end event: the final
head follows. Header lists hold ``(name, value)`` byte pairs, names lowercased once,
values without surrounding whitespace.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "BodyKind",
    "BodyFraming",
    "NO_BODY",
    "CHUNKED_BODY",
    "UNTIL_CLOSE_BODY",
    "RequestHead",
    "ResponseHead",
    "Data",
    "Trailers",
    "EndOfMessage",
    "END_OF_MESSAGE",
    "H1Error",
    "Headers",
]

Headers = list[tuple[bytes, bytes]]


class BodyKind(enum.Enum):
    """How a message body is delimited on the wire."""

    NONE = 0  # no body at all
    LENGTH = 1  # Content-Length bytes follow (``length`` may be 0)
    CHUNKED = 2  # chunked transfer coding
    UNTIL_CLOSE = 3  # response read until the connection closes


# The classes below get their __init__ written out (init=False): compiled, dataclasses'
# generated __init__ would stay interpreted code, run for every head and body piece.


@dataclass(slots=True, init=False)
class BodyFraming:
    """The framing of one message body: ``kind`` plus ``length`` for LENGTH."""

    kind: BodyKind
    length: int | None

    def __init__(self, kind: BodyKind, length: int | None = None) -> None:
        self.kind = kind
        self.length = length


NO_BODY: Final = BodyFraming(BodyKind.NONE)
CHUNKED_BODY: Final = BodyFraming(BodyKind.CHUNKED)
UNTIL_CLOSE_BODY: Final = BodyFraming(BodyKind.UNTIL_CLOSE)


def _get(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


@dataclass(slots=True, init=False)
class RequestHead:
    """A parsed request line and header section.

    ``keep_alive`` is the client's wish (HTTP/1.1 unless ``Connection: close``; HTTP/1.0
    only with ``Connection: keep-alive``). ``upgrade`` is the lowercased Upgrade value when
    ``Connection: upgrade`` asked for it on HTTP/1.1. An absolute-form ``target`` is kept
    as sent; its authority wins over Host (RFC 9112 3.2.2), which the parser does not
    compare.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: Headers
    keep_alive: bool
    upgrade: bytes | None
    expect_continue: bool
    body: BodyFraming

    def __init__(self, method: bytes, target: bytes, version: bytes, headers: Headers, keep_alive: bool = True,
                 upgrade: bytes | None = None, expect_continue: bool = False, body: BodyFraming = NO_BODY) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.expect_continue = expect_continue
        self.body = body

    def get(self, name: bytes) -> bytes | None:
        """First value of header ``name`` (lowercase), or None."""
        return _get(self.headers, name)


@dataclass(slots=True, init=False)
class ResponseHead:
    """A parsed status line and header section; 1xx heads other than 101 are interim."""

    status: int
    reason: bytes
    version: bytes
    headers: Headers
    keep_alive: bool
    body: BodyFraming

    def __init__(self, status: int, reason: bytes, version: bytes, headers: Headers, keep_alive: bool = True,
                 body: BodyFraming = NO_BODY) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = body

    def get(self, name: bytes) -> bytes | None:
        """First value of header ``name`` (lowercase), or None."""
        return _get(self.headers, name)

    @property
    def interim(self) -> bool:
        """True for a 1xx head that a final response will follow (not 101)."""
        return self.status < 200 and self.status != 101


@dataclass(slots=True, init=False)
class Data:
    """A piece of body (or, once switched, tunnel) bytes; may be a memoryview slice."""

    data: bytes | memoryview

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data


@dataclass(slots=True, init=False)
class Trailers:
    """Trailer fields of a chunked body, in the same shape as head headers."""

    headers: Headers

    def __init__(self, headers: Headers) -> None:
        self.headers = headers


@dataclass(slots=True)
class EndOfMessage:
    """The current message is complete."""


END_OF_MESSAGE: Final = EndOfMessage()


class H1Error(Exception):
    """A message that must be refused.

    ``status`` is what the proxy should answer (400, 413, 414, 431, 501, 505; 502 for a
    bad upstream response) and ``reason`` names the problem. ``events`` holds the events
    completed in the same ``feed`` before the error (earlier pipelined messages).
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.events: list[Any] = []

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"

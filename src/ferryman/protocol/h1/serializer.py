"""HTTP/1.1 head and chunk serialization: pre-encoded pieces and one ``b"".join``.

Status lines for every registered code are built once; ``date_header`` is computed at
most once per second. Heads are checked for stray CR/LF (a header value from a filter
must not be able to split the message) with two C-level counts, not a per-header loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Final

__all__ = [
    "REASONS",
    "request_head",
    "response_head",
    "chunk",
    "last_chunk",
    "http_date",
    "date_header",
]

REASONS: Final[dict[int, bytes]] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
REASONS.setdefault(425, b"Too Early")
_LINES: Final = {
    version: {
        code: b"HTTP/%s %d %s\r\n" % (version, code, phrase) for code, phrase in REASONS.items()
    }
    for version in (b"1.1", b"1.0")
}
_LINES_11: Final = _LINES[b"1.1"]
_EMPTY_CHUNK_END: Final = b"0\r\n\r\n"


def _join(first: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    pieces = [first]
    lines = 2
    for name, value in headers:
        pieces.append(name)
        pieces.append(b": ")
        pieces.append(value)
        pieces.append(b"\r\n")
        lines += 1
    pieces.append(b"\r\n")
    out = b"".join(pieces)
    if out.count(b"\n") != lines or out.count(b"\r") != lines:
        raise ValueError("CR or LF inside a start line or header field")
    return out


def response_head(
    status: int,
    reason: bytes | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    version: bytes = b"1.1",
) -> bytes:
    """Status line + headers + blank line; ``reason=None`` uses the standard phrase."""
    if reason is None or reason == REASONS.get(status):
        lines = _LINES_11 if version == b"1.1" else _LINES.get(version)
        line = lines.get(status) if lines is not None else None
        if line is None:
            line = b"HTTP/%s %d %s\r\n" % (version, status, reason or b"")
    else:
        line = b"HTTP/%s %d %s\r\n" % (version, status, reason)
    return _join(line, headers)


def request_head(
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    version: bytes = b"1.1",
) -> bytes:
    """Request line + headers + blank line."""
    if version == b"1.1":
        line = b"".join((method, b" ", target, b" HTTP/1.1\r\n"))
    else:
        line = b"".join((method, b" ", target, b" HTTP/", version, b"\r\n"))
    return _join(line, headers)


def chunk(data: bytes | memoryview) -> list[bytes | memoryview]:
    """One chunk as pieces for ``transport.writelines``; empty data gives no pieces
    (an empty chunk would end the body)."""
    size = len(data)
    if not size:
        return []
    return [b"%x\r\n" % size, data, b"\r\n"]


def last_chunk(trailers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """The terminating zero-size chunk, with optional trailer fields."""
    if not trailers:
        return _EMPTY_CHUNK_END
    out = _join(b"0\r\n", trailers)
    return out


_clock = time.time  # the wall clock (a module variable, so tests can set it: compiled code binds imports)
_date_second = -1
_date_value = b""
_date_pair = (b"date", b"")


def http_date() -> bytes:
    """The current IMF-fixdate, recomputed only when the second changes."""
    global _date_second, _date_value, _date_pair
    now = int(_clock())
    if now != _date_second:
        _date_value = formatdate(now, usegmt=True).encode("ascii")
        _date_pair = (b"date", _date_value)
        _date_second = now
    return _date_value


def date_header() -> tuple[bytes, bytes]:
    """``(b"date", value)`` for the current second, ready to append to a header list."""
    if int(_clock()) != _date_second:
        http_date()
    return _date_pair

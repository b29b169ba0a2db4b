"""Helpers for header lists of ``(name, value)`` byte pairs with lowercase names.

Names given to these helpers must be lowercase (as the parsers produce them).
"""

from __future__ import annotations

from typing import Final

from .events import Headers

__all__ = [
    "HOP_BY_HOP",
    "PROTECTED",
    "tokens",
    "connection_tokens",
    "strip_hop_by_hop",
    "get_header",
    "get_all",
    "has_header",
    "set_header",
    "add_header",
    "remove_header",
]

HOP_BY_HOP: Final = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)
# Never removed because Connection names them: dropping them would change framing or
# routing of the forwarded message (``Connection: content-length`` smuggling).
PROTECTED: Final = frozenset((b"host", b"content-length"))


def tokens(value: bytes) -> list[bytes]:
    """Comma-separated list members of ``value``, lowercased and trimmed, empties dropped."""
    out = []
    for item in value.split(b","):
        item = item.strip(b" \t")
        if item:
            out.append(item.lower())
    return out


def connection_tokens(headers: Headers) -> set[bytes]:
    """Every option named in the Connection header fields."""
    found: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            found.update(tokens(value))
    return found


def strip_hop_by_hop(headers: Headers) -> Headers:
    """A new list without hop-by-hop fields and those named in Connection (RFC 9110 7.6.1)."""
    drop = HOP_BY_HOP
    for name, value in headers:
        if name == b"connection":
            if value in _PLAIN_CONNECTION:  # the usual case: nothing more to drop
                continue
            named = connection_tokens(headers) - PROTECTED
            if named:
                drop = drop | named
            break
    return [h for h in headers if h[0] not in drop]


# Connection values naming only hop-by-hop options already dropped
_PLAIN_CONNECTION: Final = frozenset((b"keep-alive", b"close", b"Keep-Alive", b"Close", b"upgrade", b"Upgrade"))


def get_header(headers: Headers, name: bytes) -> bytes | None:
    """First value of ``name``, or None."""
    for n, v in headers:
        if n == name:
            return v
    return None


def get_all(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of ``name`` in order."""
    return [v for n, v in headers if n == name]


def has_header(headers: Headers, name: bytes) -> bool:
    """True if ``name`` appears at least once."""
    for n, _ in headers:
        if n == name:
            return True
    return False


def set_header(headers: Headers, name: bytes, value: bytes) -> None:
    """Replace the first ``name`` in place (dropping any others), or append it."""
    for i, (n, _) in enumerate(headers):
        if n == name:
            headers[i] = (name, value)
            j = i + 1
            while j < len(headers):
                if headers[j][0] == name:
                    del headers[j]
                else:
                    j += 1
            return
    headers.append((name, value))


def add_header(headers: Headers, name: bytes, value: bytes) -> None:
    """Append another ``name`` field."""
    headers.append((name, value))


def remove_header(headers: Headers, name: bytes) -> int:
    """Remove every ``name`` in place; returns how many were removed."""
    before = len(headers)
    headers[:] = [h for h in headers if h[0] != name]
    return before - len(headers)

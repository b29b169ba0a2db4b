"""Character tables and the framing rules shared by the HTTP/1.1 parsers.

The fast path trusts llhttp (strict mode) for syntax and applies :func:`body_framing`
and the Host/Connection checks in one pass over the split header list. When llhttp
refuses a head, :func:`diagnose` re-reads it in Python (error path only) to name the
problem precisely; syntax llhttp accepts but we refuse is checked in the parser itself.
"""

from __future__ import annotations

import re
from typing import Final

from .events import CHUNKED_BODY, BodyFraming, BodyKind, H1Error, Headers

__all__ = [
    "TCHAR",
    "VALUE_CHARS",
    "HOST_CHARS",
    "HEX_DIGITS",
    "is_token",
    "body_framing",
    "check_field_line",
    "parse_field_block",
    "parse_chunk_size",
    "diagnose",
    "find_problem",
]

_ALPHA = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DIGIT = b"0123456789"
# Allowed-byte sets for ``bytes.translate(None, SET)``: an empty result means valid.
TCHAR: Final = _ALPHA + _DIGIT + b"!#$%&'*+-.^_`|~"
VALUE_CHARS: Final = bytes([9]) + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
HOST_CHARS: Final = _ALPHA + _DIGIT + b"-._~!$&'()*+,;=:[]%"
HEX_DIGITS: Final = _DIGIT + b"abcdefABCDEF"
REASON_CHARS: Final = VALUE_CHARS

MAX_CONTENT_LENGTH: Final = (1 << 63) - 1
MAX_CHUNK_SIZE_HEX: Final = 16  # significant hex digits: sizes must fit in 64 bits

_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_CHUNK_EXT: Final = re.compile(rb"(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)+")
_VERSION: Final = re.compile(rb"HTTP/[0-9]\.[0-9]")
# Header fields whose presence in trailers would change framing or routing.
_FORBIDDEN_TRAILERS: Final = frozenset((b"content-length", b"transfer-encoding", b"host"))


def is_token(value: bytes) -> bool:
    """True if ``value`` is a non-empty RFC 9110 token."""
    return bool(value) and not value.translate(None, TCHAR)


def body_framing(
    lengths: list[bytes] | None,
    codings: list[bytes] | None,
    version: bytes,
    request: bool,
) -> BodyFraming | None:
    """Framing from the Content-Length and Transfer-Encoding values, or None if neither.

    Refuses (as nginx/HAProxy do): both headers at once, Transfer-Encoding on HTTP/1.0,
    codings other than one final ``chunked`` (400 when chunked is not last, 501 for an
    unknown coding before it), and any repeated Content-Length, identical or not.
    """
    if codings is None and lengths is not None and len(lengths) == 1:
        value = lengths[0]
        if len(value) < 19 and value.isdigit():  # the common case: one plain Content-Length
            return BodyFraming(BodyKind.LENGTH, int(value))
    bad = 400 if request else 502
    if codings:
        if lengths:
            raise H1Error(bad, "both Content-Length and Transfer-Encoding")
        if version == b"1.0":
            raise H1Error(bad, "Transfer-Encoding in an HTTP/1.0 message")
        items = [c.strip(b" \t").lower() for v in codings for c in v.split(b",")]
        if items[-1] != b"chunked":
            raise H1Error(bad, "Transfer-Encoding without a final chunked")
        if items.count(b"chunked") > 1:
            raise H1Error(bad, "chunked applied more than once in Transfer-Encoding")
        if len(items) > 1:
            raise H1Error(501 if request else 502, "unsupported transfer coding")
        return CHUNKED_BODY
    if lengths:
        if len(lengths) > 1:
            if len(set(lengths)) > 1:
                raise H1Error(bad, "conflicting Content-Length values")
            raise H1Error(bad, "duplicate Content-Length")
        value = lengths[0]
        if not value.isdigit():
            raise H1Error(bad, "invalid Content-Length")
        length = int(value)
        if length > MAX_CONTENT_LENGTH:
            raise H1Error(bad, "Content-Length overflow")
        return BodyFraming(BodyKind.LENGTH, length)
    return None


def check_field_line(line: bytes, bad: int) -> tuple[bytes, bytes]:
    """Split and validate one ``name: value`` line; returns (lowercased name, value)."""
    if line[:1] in (b" ", b"\t"):
        raise H1Error(bad, "obs-fold (line folding) in header section")
    if b"\x00" in line:
        raise H1Error(bad, "NUL in header section")
    if b"\r" in line:
        raise H1Error(bad, "bare CR in header section")
    if b"\n" in line:
        raise H1Error(bad, "bare LF in header section")
    name, colon, value = line.partition(b":")
    if not colon:
        raise H1Error(bad, "header line without colon")
    if not name:
        raise H1Error(bad, "empty header name")
    if b" " in name or b"\t" in name:
        raise H1Error(bad, "header name contains whitespace")
    if name.translate(None, TCHAR):
        raise H1Error(bad, "invalid character in header name")
    value = value.strip(b" \t")
    if value.translate(None, VALUE_CHARS):
        raise H1Error(bad, "invalid character in header value")
    return name.lower(), value


def parse_field_block(block: bytes, bad: int) -> Headers:
    """Parse trailer lines (``block`` is the lines with their CRLFs, no final CRLF)."""
    headers = []
    for line in block.split(b"\r\n")[:-1]:
        name, value = check_field_line(line, bad)
        if name in _FORBIDDEN_TRAILERS:
            raise H1Error(bad, "forbidden trailer field")
        headers.append((name, value))
    return headers


def parse_chunk_size(line: bytes, bad: int) -> int:
    """Chunk size from a chunk-size line (without CRLF); extensions are validated, dropped."""
    semi = line.find(b";")
    if semi >= 0:
        if not _CHUNK_EXT.fullmatch(line, semi):
            raise H1Error(bad, "invalid chunk extension")
        line = line[:semi]
    if not line or line.translate(None, HEX_DIGITS):
        raise H1Error(bad, "invalid chunk size")
    if len(line) > MAX_CHUNK_SIZE_HEX and len(line.lstrip(b"0")) > MAX_CHUNK_SIZE_HEX:
        raise H1Error(bad, "chunk size overflow")
    return int(line, 16)


def diagnose(head: bytes, llhttp_message: str, request: bool, tail: bool = False) -> H1Error:
    """Name why llhttp refused ``head`` (error path only; falls back to llhttp's words).

    ``tail`` says the last line of ``head`` is still incomplete: only problems that more
    bytes cannot change are named then (see :func:`find_problem`).
    """
    found = find_problem(head, llhttp_message, request, tail)
    if found is not None:
        return found
    return H1Error(400 if request else 502, llhttp_message)


def find_problem(head: bytes, llhttp_message: str, request: bool, tail: bool) -> H1Error | None:
    """The first definite problem in ``head``, or None.

    With ``tail`` (an incomplete last line) framing rules are not judged, since a later
    line may change the verdict; the caller waits for the line to end and asks again.
    """
    try:
        _scan(head, llhttp_message, request, tail, 400 if request else 502)
    except H1Error as exc:
        return exc
    return None


def _scan(head: bytes, llmsg: str, request: bool, tail: bool, bad: int) -> None:
    if b"\x00" in head:
        raise H1Error(bad, "NUL in message head")
    text = head[:-1] if tail and head.endswith(b"\r") else head
    bare = text.replace(b"\r\n", b"")
    if b"\r" in bare:
        raise H1Error(bad, "bare CR in message head")
    if b"\n" in bare:
        raise H1Error(bad, "bare LF in message head (line ending without CR)")
    lines = text.split(b"\r\n")
    partial = lines.pop() if tail else None
    if not lines:
        start = partial or b""
        if request:
            _check_request_line(start, llmsg, whole=False)
        elif not (start.startswith(b"HTTP/") or b"HTTP/".startswith(start)):
            raise H1Error(502, "invalid status line")
        return
    if request:
        _check_request_line(lines[0], llmsg, whole=True)
    else:
        _check_status_line(lines[0])
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for line in lines[1:]:
        if not line:
            break
        name, value = check_field_line(line, bad)
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.append(value)
    if partial is not None:
        _check_partial_line(partial, bad)
        return
    version = lines[0][-3:] if request else lines[0][5:8]
    body_framing(lengths or None, codings or None, version, request)


def _check_partial_line(line: bytes, bad: int) -> None:
    name, colon, value = line.partition(b":")
    if line[:1] in (b" ", b"\t"):
        raise H1Error(bad, "obs-fold (line folding) in header section")
    if colon and not name:
        raise H1Error(bad, "empty header name")
    if b" " in name or b"\t" in name:
        raise H1Error(bad, "header name contains whitespace")
    if name.translate(None, TCHAR):
        raise H1Error(bad, "invalid character in header name")
    if value.translate(None, VALUE_CHARS):
        raise H1Error(bad, "invalid character in header value")


def _check_request_line(line: bytes, llmsg: str, whole: bool) -> None:
    parts = line.split(b" ")
    low = llmsg.lower()
    if parts[0].translate(None, TCHAR) or (len(parts) > 1 and not parts[0]):
        raise H1Error(400, "invalid method")
    if len(parts) > 1 and llmsg.startswith("Invalid method encountered"):
        raise H1Error(501, "unknown method")
    if len(parts) > 3:
        raise H1Error(400, "invalid request line")
    if len(parts) > 1 and "url" in low:
        raise H1Error(400, "invalid character in request target")
    if not whole:
        return
    if len(parts) != 3 or not parts[1]:
        raise H1Error(400, "invalid request line")
    proto = parts[2]
    if not _VERSION.fullmatch(proto):
        if proto.startswith(b"HTTP/"):
            raise H1Error(505, "unsupported HTTP version")
        raise H1Error(400, "invalid HTTP version")
    if proto not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise H1Error(505, "unsupported HTTP version")
    if llmsg.startswith("Invalid method for HTTP"):
        raise H1Error(501, "unknown method")


def _check_status_line(line: bytes) -> None:
    if not line.startswith(b"HTTP/"):
        raise H1Error(502, "invalid status line")
    if not _VERSION.fullmatch(line[:8]) or line[8:9] != b" ":
        raise H1Error(502, "invalid HTTP version in status line")
    if line[:8] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise H1Error(502, "unsupported HTTP version in status line")
    code = line[9:12]
    if len(code) != 3 or not code.isdigit() or code[:1] == b"0" or line[12:13] not in (b"", b" "):
        raise H1Error(502, "invalid status code")

"""HTTP/2 header blocks ⇄ the engine's heads (``protocol/h1/events.py`` shapes).

The engine speaks in :class:`RequestHead` / :class:`ResponseHead` with ``(name, value)``
lowercase byte pairs and a ``host`` header; HTTP/2 carries pseudo-header fields instead of a
start line and forbids connection-specific fields (RFC 9113 §8.2.2). Incoming blocks were
validated by h2 already (see :mod:`.endpoint`); these functions only translate:

* ``:authority`` ⇄ ``Host``; ``:method`` / ``:path`` ⇄ the request line; ``:status``.
* split ``cookie`` fields are joined with ``"; "`` for HTTP/1.1 (RFC 9113 §8.2.3).
* outgoing: names lowercased, connection-specific fields dropped, ``te`` kept only as
  ``trailers``.
* body framing of an incoming message: none (END_STREAM on the head), a length
  (``content-length``), or unknown until END_STREAM (reported as chunked, which is what an
  HTTP/1.1 peer must then get).
"""

from __future__ import annotations

from ..h1.events import CHUNKED_BODY, NO_BODY, BodyFraming, BodyKind, Headers, RequestHead, ResponseHead
from ..h1.serializer import REASONS

__all__ = [
    "CONNECTION_SPECIFIC",
    "VERSION",
    "request_head",
    "RequestHeads",
    "response_head",
    "request_block",
    "response_block",
    "trailer_block",
    "incoming_trailers",
]

VERSION = b"2.0"  # RequestHead.version of an HTTP/2 request (access logs say HTTP/2.0, like nginx)
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host", b"te", b"http2-settings")
)
_NO_BODY_STATUS = frozenset((204, 304))


def _framing(headers: Headers, end_stream: bool) -> BodyFraming:
    if end_stream:
        return NO_BODY
    for name, value in headers:
        if name == b"content-length":
            return BodyFraming(BodyKind.LENGTH, int(value))  # digits only: checked by h2
    return CHUNKED_BODY


def request_head(block: list[tuple[bytes, bytes]], end_stream: bool) -> RequestHead:
    """The head of a received (h2-validated) request block."""
    method = path = authority = b""
    headers: Headers = []
    cookies: list[bytes] = []
    host = None
    for name, value in block:
        if name[0] == 58:  # b":"
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            continue  # :scheme, :protocol
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"host":
            host = value
        headers.append((name, value))
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    if host is None and authority:
        headers.insert(0, (b"host", authority))
    if method == b"CONNECT":
        path = authority
    return RequestHead(
        method=method, target=path, version=VERSION, headers=headers,
        body=_framing(headers, end_stream) if method != b"CONNECT" else CHUNKED_BODY,
    )


_HEADS_LIMIT, _HEADS_SIZE = 32, 2048  # request blocks remembered per connection: entries, name + value bytes


class RequestHeads:
    """:func:`request_head` for one connection, remembering what the blocks it saw translate
    to: a client repeating a request sends the same block (the decoder hands out the same
    fields), so only a new head with its own copy of the headers is made. Bounded.

    Returns None for a request that ended with its head (END_STREAM) but announces a body
    (a content-length other than 0): malformed, RFC 9113 §8.1.1."""

    __slots__ = ("_memo",)

    def __init__(self) -> None:
        self._memo: dict[tuple, tuple[bytes, bytes, tuple, BodyFraming, bool]] = {}

    def __call__(self, block: list[tuple[bytes, bytes]], end_stream: bool) -> RequestHead | None:
        key = tuple(block)
        memo = self._memo.get(key)
        if memo is None:
            head = request_head(block, end_stream)
            length = head.get(b"content-length")
            announced = length is not None and length != b"0"  # a body, by its content-length
            if sum(len(name) + len(value) for name, value in block) <= _HEADS_SIZE:
                if len(self._memo) >= _HEADS_LIMIT:
                    self._memo.clear()
                body = CHUNKED_BODY if head.method == b"CONNECT" else _framing(head.headers, False)
                self._memo[key] = (head.method, head.target, tuple(head.headers), body, announced)
            return None if end_stream and announced else head
        method, target, headers, body, announced = memo
        if end_stream:
            if announced:
                return None
            if method != b"CONNECT":
                body = NO_BODY
        elif body.kind is BodyKind.LENGTH:
            body = BodyFraming(BodyKind.LENGTH, body.length)  # (each head its own)
        return RequestHead(method=method, target=target, version=VERSION, headers=list(headers), body=body)


def response_head(block: list[tuple[bytes, bytes]], end_stream: bool, method: bytes) -> ResponseHead:
    """The head of a received (h2-validated) response block (final or interim)."""
    status = 0
    headers: Headers = []
    for name, value in block:
        if name == b":status":
            status = int(value)
        elif name[0] != 58:
            headers.append((name, value))
    if status < 200 or status in _NO_BODY_STATUS or method == b"HEAD":
        body = NO_BODY
    else:
        body = _framing(headers, end_stream)
    return ResponseHead(status=status, reason=REASONS.get(status, b""), version=VERSION, headers=headers, body=body)


_PLAIN: dict[bytes, bool] = {}  # names seen before -> whether they go out as they are
_PLAIN_LIMIT = 1024


def _fields(out: list[tuple[bytes, bytes]], headers: Headers) -> list[tuple[bytes, bytes]]:
    plain = _PLAIN
    for pair in headers:
        ok = plain.get(pair[0])
        if ok:  # the usual case: a lowercase name that HTTP/2 carries
            out.append(pair)
            continue
        name, value = pair
        if ok is None and len(plain) < _PLAIN_LIMIT:
            plain[name] = name.islower() and name not in CONNECTION_SPECIFIC and name[:1] != b":"
        if not name.islower():  # names from the parsers are lowercase; a hook's may not be
            name = name.lower()
        if name in CONNECTION_SPECIFIC:
            if name == b"te" and b"trailers" in value.lower():
                out.append((b"te", b"trailers"))
            continue
        if name[:1] == b":":
            continue
        out.append((name, value))
    return out


def request_block(method: bytes, target: bytes, headers: Headers, scheme: bytes) -> list[tuple[bytes, bytes]]:
    """The header block sending a request upstream: ``Host`` becomes ``:authority``."""
    authority = None
    for name, value in headers:
        if name == b"host":
            authority = value
            break
    if method == b"CONNECT":
        out = [(b":method", method), (b":authority", authority or target)]
    else:
        out = [(b":method", method), (b":scheme", scheme), (b":path", target or b"/")]
        if authority is not None:
            out.append((b":authority", authority))
    return _fields(out, headers)


def response_block(status: int, headers: Headers) -> list[tuple[bytes, bytes]]:
    """The header block sending a response downstream."""
    return _fields([(b":status", b"%d" % status)], headers)


def trailer_block(headers: Headers) -> list[tuple[bytes, bytes]]:
    """Trailers for a trailing HEADERS frame (no pseudo or connection-specific fields)."""
    return _fields([], headers)


def incoming_trailers(block: list[tuple[bytes, bytes]]) -> Headers:
    """Received trailers as a header list (h2 has rejected pseudo-headers in them)."""
    return list(block)

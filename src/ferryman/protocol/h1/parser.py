"""Sans-IO HTTP/1.1 parsers: bytes in, events out, one instance per connection.

Heads are split by finding the blank line ourselves and handing exactly the head bytes to
llhttp (httptools, strict mode) for syntax; Content-Length bodies are then counted and
passed through raw (never fed to llhttp), chunked bodies are parsed here with strict
rules, and head parsing resumes for the next pipelined message. Partial heads are fed to
llhttp as they arrive, so garbage is refused on its first bytes.

Data events may be memoryview slices of the bytes given to ``feed`` (large pieces only);
they stay valid because ``bytes`` are immutable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

from httptools import HttpRequestParser, HttpResponseParser
from httptools.parser.errors import HttpParserError, HttpParserUpgrade

from .events import (
    END_OF_MESSAGE,
    NO_BODY,
    UNTIL_CLOSE_BODY,
    BodyFraming,
    BodyKind,
    Data,
    EndOfMessage,
    H1Error,
    Headers,
    RequestHead,
    ResponseHead,
    Trailers,
)
from .rules import (
    HEX_DIGITS,
    HOST_CHARS,
    REASON_CHARS,
    body_framing,
    diagnose,
    find_problem,
    parse_chunk_size,
    parse_field_block,
)

__all__ = ["RequestParser", "ResponseParser", "Event"]

Event = RequestHead | ResponseHead | Data | Trailers | EndOfMessage

# Parser states.
_HEAD: Final = 0
_LENGTH: Final = 1
_CHUNK_SIZE: Final = 2
_CHUNK_DATA: Final = 3
_CHUNK_CRLF: Final = 4
_TRAILERS: Final = 5
_UNTIL_CLOSE: Final = 6
_SWITCHED: Final = 7
_PAUSED: Final = 8
_CLOSED: Final = 9
_ERROR: Final = 10

_MAX_CHUNK_LINE: Final = 4096  # chunk-size line including extensions
_SMALL: Final = 2048  # body slices below this are copied; larger ones are memoryviews
_LENGTH_KIND: Final = BodyKind.LENGTH
_NONE_KIND: Final = BodyKind.NONE
_CHUNKED_KIND: Final = BodyKind.CHUNKED
_SPECIAL_REQUEST: Final = frozenset(
    (b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect")
)
_SPECIAL_RESPONSE: Final = frozenset((b"content-length", b"transfer-encoding", b"connection"))


def _slice(data: bytes, start: int, end: int) -> bytes | memoryview:
    if start == 0 and end == len(data):
        return data
    if end - start < _SMALL:
        return data[start:end]
    return memoryview(data)[start:end]


_SEEN_LIMIT: Final = 256
_GOOD_HOSTS: Final[set[bytes]] = set()
_GOOD_REASONS: Final[set[bytes]] = set()


def _allowed(value: bytes, chars: bytes, seen: set[bytes]) -> bool:
    """Whether every byte of ``value`` is one of ``chars``. Values that passed are remembered
    (up to ``_SEEN_LIMIT``): the same Host or reason phrase comes with request after
    request, and ``translate`` builds a 256-byte table for every check."""
    if value in seen:
        return True
    if value.translate(None, chars):
        return False
    if len(seen) < _SEEN_LIMIT:
        seen.add(value)
    return True


def _connection_tokens(value: bytes) -> list[bytes]:
    return [t.strip(b" \t") for t in value.lower().split(b",")]


def _connection_keep_alive(connection: bytes, keep_alive: bool) -> tuple[bool, list[bytes]]:
    """Keep-alive as a Connection header decides it (``close`` wins), and the header's tokens
    (none listed for a lone ``keep-alive`` or ``close``, compared without splitting)."""
    low = connection.lower()
    if low == b"keep-alive":
        return True, []
    if low == b"close":
        return False, []
    tokens = _connection_tokens(connection)
    if b"close" in tokens:
        return False, tokens
    if b"keep-alive" in tokens:
        return True, tokens
    return keep_alive, tokens


class _Sink:
    """llhttp callbacks; holds no reference to the parser (no cycle)."""

    __slots__ = ("headers", "complete", "done")

    def __init__(self) -> None:
        self.headers: Headers = []
        self.complete = False
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self.complete = True

    def on_message_complete(self) -> None:
        self.done = True


class _Parser:
    """Head splitting, body framing and chunked decoding shared by both directions."""

    _request = True
    _bad = 400
    _llhttp: Callable[[_Sink], HttpRequestParser | HttpResponseParser] = HttpRequestParser

    def __init__(
        self,
        max_request_line: int = 8192,
        max_header_bytes: int = 32768,
        max_headers: int = 100,
        max_body: int | None = None,
    ) -> None:
        self._max_line = max_request_line
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._max_body = max_body
        self._head_cap = max_request_line + max_header_bytes + 8
        self._state = _HEAD
        self._sink = _Sink()
        self._ll: HttpRequestParser | HttpResponseParser | None = None
        self._hbuf: bytearray | None = None  # partial head
        self._fed = 0  # bytes of _hbuf already given to llhttp
        self._cr_pending = False  # a lone CR before a head (maybe an empty line)
        self._ll_failed: str | None = None  # llhttp refused this partial head (message)
        self._failed_line = 0  # where the line llhttp refused starts in _hbuf
        self._remaining = 0
        self._body_total = 0
        self._line = b""  # partial chunk-size line
        self._crlf_half = False  # saw the CR of a chunk's closing CRLF
        self._tbuf: bytearray | None = None  # partial trailer section
        self._keep_alive = True
        self._held = bytearray()  # bytes after an Upgrade/CONNECT request, until decided
        self._error: H1Error | None = None

    # -- state for the caller --------------------------------------------------------------

    @property
    def waiting_for_head(self) -> bool:
        """True between messages (or inside a head): keep-alive / header timeouts apply."""
        return self._state == _HEAD

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete head held so far (0 when idle between messages)."""
        return len(self._hbuf) if self._hbuf is not None else int(self._cr_pending)

    @property
    def closed(self) -> bool:
        """True once a message without keep-alive ended: later bytes are discarded."""
        return self._state == _CLOSED

    @property
    def switched(self) -> bool:
        """True once the connection stopped speaking HTTP; ``feed`` returns raw Data."""
        return self._state == _SWITCHED

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Events for every complete piece of ``data``; raises :class:`H1Error`."""
        if self._error is not None:
            raise H1Error(self._error.status, self._error.reason)
        if type(data) is not bytes:
            data = bytes(data)
        events: list[Event] = []
        try:
            self._run(data, events)
        except H1Error as exc:
            self._fail(exc)
            exc.events = events
            raise
        return events

    def _fail(self, exc: H1Error) -> None:
        self._state = _ERROR
        self._error = exc
        self._ll = None

    def _run(self, data: bytes, events: list[Event]) -> None:
        pos = 0
        n = len(data)
        while pos < n:
            st = self._state
            if st == _HEAD:
                pos = self._head(data, pos, n, events)
            elif st == _LENGTH:
                rem = self._remaining
                if n - pos < rem:
                    events.append(Data(_slice(data, pos, n)))
                    self._remaining = rem - (n - pos)
                    return
                end = pos + rem
                events.append(Data(_slice(data, pos, end)))
                self._remaining = 0
                events.append(END_OF_MESSAGE)
                self._end_message()
                pos = end
            elif st == _CHUNK_DATA:
                rem = self._remaining
                if n - pos <= rem:
                    events.append(Data(_slice(data, pos, n)))
                    self._remaining = rem - (n - pos)
                    if not self._remaining:
                        self._state = _CHUNK_CRLF
                    return
                end = pos + rem
                events.append(Data(_slice(data, pos, end)))
                self._remaining = 0
                if data.startswith(b"\r\n", end):
                    self._state = _CHUNK_SIZE
                    pos = end + 2
                else:
                    self._state = _CHUNK_CRLF
                    pos = end
            elif st == _CHUNK_SIZE:
                # Fast path: a bare hex size (no extension) whole in this buffer.
                i = data.find(b"\r\n", pos, pos + 18) if not self._line else -1
                if i > pos:
                    size_hex = data[pos:i]
                    if not size_hex.translate(None, HEX_DIGITS):
                        size = int(size_hex, 16)
                        if size:
                            total = self._body_total + size
                            if self._max_body is not None and total > self._max_body:
                                raise H1Error(
                                    413 if self._request else 502, "body larger than the limit"
                                )
                            self._body_total = total
                            pos = i + 2
                            end = pos + size
                            if end > n:
                                if pos < n:
                                    events.append(Data(_slice(data, pos, n)))
                                self._remaining = end - n
                                self._state = _CHUNK_DATA
                                return
                            events.append(Data(_slice(data, pos, end)))
                            if data.startswith(b"\r\n", end):
                                pos = end + 2
                            else:
                                self._state = _CHUNK_CRLF
                                pos = end
                            continue
                pos = self._chunk_size(data, pos, n)
            elif st == _CHUNK_CRLF:
                pos = self._chunk_crlf(data, pos, n)
            elif st == _TRAILERS:
                pos = self._trailers(data, pos, n, events)
            elif st == _UNTIL_CLOSE or st == _SWITCHED:
                events.append(Data(_slice(data, pos, n)))
                return
            elif st == _PAUSED:
                self._held += data[pos:]
                return
            else:  # _CLOSED: nothing more is read on this connection
                return

    # -- heads -----------------------------------------------------------------------------

    def _head(self, data: bytes, pos: int, n: int, events: list[Event]) -> int:
        if self._cr_pending:
            self._cr_pending = False
            if data[pos] != 10:  # not the LF of an empty line
                raise H1Error(self._bad, "bare CR in message head")
            pos += 1
            if pos == n:
                return n
        self._before_head()
        hbuf = self._hbuf
        if hbuf is None:
            if data[pos] == 13:  # empty lines before a message are ignored
                while data.startswith(b"\r\n", pos):
                    pos += 2
                if pos == n:
                    return n
                if data[pos] == 13:
                    if pos == n - 1:
                        self._cr_pending = True
                        return n
                    raise H1Error(self._bad, "bare CR in message head")
            end = data.find(b"\r\n\r\n", pos)
            if end < 0:
                rest = data[pos : pos + self._head_cap]
                self._hbuf = bytearray(rest)
                self._fed = 0
                self._feed_partial(rest)
                return n
            head_end = end + 4
            head = data if pos == 0 and head_end == n else data[pos:head_end]
            fed = 0
            new_pos = head_end
        else:
            old = len(hbuf)
            hbuf += data[pos : pos + self._head_cap - old + 1]
            end = hbuf.find(b"\r\n\r\n", max(0, old - 3))
            if end < 0:
                self._feed_partial(hbuf)
                return n
            head_end = end + 4
            head = bytes(hbuf[:head_end])
            new_pos = pos + head_end - old
            fed = self._fed
            self._hbuf = None
        eol = head.find(b"\r\n")
        self._check_limits(len(head), eol)
        sink = self._sink
        if not fed:
            sink.headers = []
            sink.complete = sink.done = False
        elif self._ll_failed is not None:
            raise diagnose(head, self._ll_failed, self._request)
        ll = self._ll
        if ll is None:
            ll = self._ll = self._llhttp(sink)
        try:
            ll.feed_data(head if not fed else head[fed:])
        except HttpParserUpgrade:
            self._ll = None
        except HttpParserError as exc:
            self._ll = None
            if sink.complete:
                self._build(head, eol, sink.headers)  # our own checks name it better
            raise diagnose(head, str(exc), self._request) from None
        if not sink.complete:
            self._ll = None
            raise diagnose(head, "malformed message head", self._request)
        headers = sink.headers
        if len(headers) > self._max_headers:
            raise H1Error(431 if self._request else 502, "too many header fields")
        msg = self._build(head, eol, headers)
        if not sink.done or not msg.keep_alive:
            self._ll = None  # llhttp still expects a body: start afresh next time
        self._head_done(msg, events)
        return new_pos

    def _check_limits(self, size: int, eol: int) -> None:
        if eol < 0:
            if size > self._max_line:
                self._too_long_line()
        elif eol > self._max_line:
            self._too_long_line()
        elif size - eol - 2 > self._max_header_bytes:
            raise H1Error(431 if self._request else 502, "header section too large")

    def _too_long_line(self) -> None:
        if self._request:
            raise H1Error(414, "request line too long")
        raise H1Error(502, "status line too long")

    def _feed_partial(self, buf: bytes | bytearray) -> None:
        """Give llhttp the new bytes of an incomplete head, so bad input fails early.

        When llhttp refuses bytes whose line is not complete yet and the problem cannot
        be named for sure, the verdict waits for that line's CRLF: the error then names
        the same problem however the head was split across reads.
        """
        self._check_limits(len(buf), buf.find(b"\r\n"))
        fed = self._fed
        if fed and self._ll_failed is not None:
            found = find_problem(bytes(buf), self._ll_failed, self._request, True)
            if found is not None:
                raise found
            cut = buf.find(b"\r\n", self._failed_line)
            if cut >= 0:
                raise diagnose(bytes(buf[: cut + 2]), self._ll_failed, self._request)
            self._fed = len(buf)
            return
        sink = self._sink
        if not fed:
            sink.headers = []
            sink.complete = sink.done = False
            self._ll_failed = None
        ll = self._ll
        if ll is None:
            ll = self._ll = self._llhttp(sink)
        try:
            ll.feed_data(bytes(buf[fed:]))
        except (HttpParserError, HttpParserUpgrade) as exc:
            self._ll = None
            head = bytes(buf)
            found = find_problem(head, str(exc), self._request, True)
            if found is not None:
                raise found from None
            self._ll_failed = str(exc)
            self._failed_line = head.rfind(b"\r\n") + 2 if b"\r\n" in head else 0
        else:
            if sink.complete:  # llhttp saw an end of head that is not a CRLF CRLF
                self._ll = None
                raise diagnose(bytes(buf), "malformed message head", self._request, True)
        self._fed = len(buf)

    def _start_body(self, body: BodyFraming, events: list[Event]) -> None:
        kind = body.kind
        if kind is _LENGTH_KIND and body.length:
            self._remaining = body.length
            self._state = _LENGTH
        elif kind is _CHUNKED_KIND:
            self._body_total = 0
            self._state = _CHUNK_SIZE
        elif kind is BodyKind.UNTIL_CLOSE:
            self._state = _UNTIL_CLOSE
        else:
            events.append(END_OF_MESSAGE)
            self._end_message()

    # -- chunked bodies --------------------------------------------------------------------

    def _chunk_size(self, data: bytes, pos: int, n: int) -> int:
        part = self._line
        if part:
            piece = part + data[pos : pos + _MAX_CHUNK_LINE + 2]
            i = piece.find(b"\r\n")
            if i < 0:
                if len(piece) > _MAX_CHUNK_LINE + 1:
                    raise H1Error(self._bad, "chunk size line too long")
                self._line = piece
                return n
            line = piece[:i]
            pos += i + 2 - len(part)
            self._line = b""
        else:
            i = data.find(b"\r\n", pos, pos + _MAX_CHUNK_LINE + 2)
            if i < 0:
                if n - pos > _MAX_CHUNK_LINE + 1:
                    raise H1Error(self._bad, "chunk size line too long")
                self._line = data[pos:]
                return n
            line = data[pos:i]
            pos = i + 2
        size = parse_chunk_size(line, self._bad)
        if not size:
            self._state = _TRAILERS
            return pos
        total = self._body_total + size
        if self._max_body is not None and total > self._max_body:
            raise H1Error(413 if self._request else 502, "body larger than the limit")
        self._body_total = total
        self._remaining = size
        self._state = _CHUNK_DATA
        return pos

    def _chunk_crlf(self, data: bytes, pos: int, n: int) -> int:
        if self._crlf_half:
            if data[pos] != 10:
                raise H1Error(self._bad, "missing CRLF after chunk data")
            self._crlf_half = False
            self._state = _CHUNK_SIZE
            return pos + 1
        if data.startswith(b"\r\n", pos):
            self._state = _CHUNK_SIZE
            return pos + 2
        if n - pos == 1 and data[pos] == 13:
            self._crlf_half = True
            return n
        raise H1Error(self._bad, "missing CRLF after chunk data")

    def _trailers(self, data: bytes, pos: int, n: int, events: list[Event]) -> int:
        cap = self._max_header_bytes + 4
        tb = self._tbuf
        if tb is None:
            if data.startswith(b"\r\n", pos):
                events.append(END_OF_MESSAGE)
                self._end_message()
                return pos + 2
            end = data.find(b"\r\n\r\n", pos, pos + cap)
            if end < 0:
                if n - pos > cap:
                    raise H1Error(431 if self._request else 502, "trailer section too large")
                self._tbuf = bytearray(data[pos:])
                return n
            block = data[pos : end + 2]
            new_pos = end + 4
        else:
            old = len(tb)
            tb += data[pos : pos + cap - old + 1]
            if tb.startswith(b"\r\n"):
                block = b""
                new_pos = pos + 2 - old
            else:
                end = tb.find(b"\r\n\r\n", max(0, old - 3))
                if end < 0:
                    if len(tb) > cap:
                        raise H1Error(431 if self._request else 502, "trailer section too large")
                    return n
                block = bytes(tb[: end + 2])
                new_pos = pos + end + 4 - old
            self._tbuf = None
        if block:
            events.append(Trailers(parse_field_block(block, self._bad)))
        events.append(END_OF_MESSAGE)
        self._end_message()
        return new_pos

    # -- end of input ----------------------------------------------------------------------

    def _eof_mid_body(self) -> bool:
        return self._state in (_LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS)

    # -- per-direction hooks ---------------------------------------------------------------

    def _before_head(self) -> None:
        pass

    def _build(self, head: bytes, eol: int, headers: Headers) -> RequestHead | ResponseHead:
        raise NotImplementedError

    def _head_done(self, msg: RequestHead | ResponseHead, events: list[Event]) -> None:
        raise NotImplementedError

    def _end_message(self) -> None:
        raise NotImplementedError


class RequestParser(_Parser):
    """Parses the requests of one downstream connection (pipelining included).

    After a request asking to switch protocols (``upgrade`` set, or CONNECT) the parser
    pauses and holds later bytes until the caller decides: :meth:`switch_protocols` once
    the switch happened, or :meth:`resume` to keep speaking HTTP.
    """

    _request = True
    _bad = 400
    _llhttp = HttpRequestParser

    def __init__(
        self,
        max_request_line: int = 8192,
        max_header_bytes: int = 32768,
        max_headers: int = 100,
        max_body: int | None = None,
    ) -> None:
        super().__init__(max_request_line, max_header_bytes, max_headers, max_body)
        self._switch_after = False

    @property
    def paused(self) -> bool:
        """True after an Upgrade/CONNECT request, until switch_protocols() or resume()."""
        return self._state == _PAUSED

    def switch_protocols(self) -> bytes:
        """The connection now tunnels: returns bytes held since the request; later feeds
        return them as :class:`Data`."""
        if self._state != _PAUSED:
            raise RuntimeError("no protocol switch is pending")
        held = bytes(self._held)
        self._held = bytearray()
        self._state = _SWITCHED
        return held

    def resume(self) -> list[Event]:
        """The switch was refused: parse the held bytes (and later ones) as HTTP again."""
        if self._state != _PAUSED:
            raise RuntimeError("no protocol switch is pending")
        held = bytes(self._held)
        self._held = bytearray()
        self._state = _HEAD if self._keep_alive else _CLOSED
        return self.feed(held) if held else []

    def feed_eof(self) -> list[Event]:
        """The client closed its side: raises if a message was cut short."""
        if self._error is not None:
            raise H1Error(self._error.status, self._error.reason)
        st = self._state
        if st == _HEAD:
            if self._hbuf is not None:
                self._fail(H1Error(400, "connection closed inside a request head"))
                raise H1Error(400, "connection closed inside a request head")
        elif self._eof_mid_body():
            self._fail(H1Error(400, "connection closed before the request body ended"))
            raise H1Error(400, "connection closed before the request body ended")
        if st != _SWITCHED and st != _PAUSED:
            self._state = _CLOSED
        return []

    def _build(self, head: bytes, eol: int, headers: Headers) -> RequestHead:
        parts = head[:eol].split(b" ")
        if len(parts) != 3:
            raise H1Error(400, "invalid request line")
        method, target, proto = parts
        if proto == b"HTTP/1.1":
            version = b"1.1"
            keep_alive = True
        elif proto == b"HTTP/1.0":
            version = b"1.0"
            keep_alive = False
        elif proto.startswith(b"HTTP/"):
            raise H1Error(505, "unsupported HTTP version")
        else:
            raise H1Error(400, "invalid HTTP version")
        host = None
        hosts = 0
        lengths: list[bytes] | None = None
        codings: list[bytes] | None = None
        connection = None
        upgrade = None
        expect = None
        special = _SPECIAL_REQUEST
        for name, value in headers:
            if name in special:
                if name == b"host":
                    hosts += 1
                    host = value
                elif name == b"content-length":
                    lengths = [value] if lengths is None else [*lengths, value]
                elif name == b"connection":
                    connection = value if connection is None else connection + b"," + value
                elif name == b"transfer-encoding":
                    codings = [value] if codings is None else [*codings, value]
                elif name == b"upgrade":
                    upgrade = value
                else:
                    expect = value
        if lengths is None and codings is None:
            body = NO_BODY
        else:
            body = body_framing(lengths, codings, version, True)  # type: ignore[assignment]
            if (
                body.kind is _LENGTH_KIND
                and self._max_body is not None
                and body.length > self._max_body  # type: ignore[operator]
            ):
                raise H1Error(413, "body larger than the limit")
        if hosts != 1:
            if hosts:
                raise H1Error(400, "duplicate Host")
            if version == b"1.1":
                raise H1Error(400, "missing Host")
        elif not host or not _allowed(host, HOST_CHARS, _GOOD_HOSTS):
            raise H1Error(400, "invalid Host")
        if target[:1] == b"/":
            if method == b"CONNECT":
                raise H1Error(400, "CONNECT needs an authority-form target")
        elif method == b"CONNECT":
            if target.translate(None, HOST_CHARS) or b":" not in target:
                raise H1Error(400, "CONNECT needs an authority-form target")
        elif target == b"*":
            if method != b"OPTIONS":
                raise H1Error(400, "asterisk-form target outside OPTIONS")
        elif b"://" not in target:
            raise H1Error(400, "invalid request target")
        wants_upgrade = False
        if connection is not None:
            keep_alive, tokens = _connection_keep_alive(connection, keep_alive)
            wants_upgrade = b"upgrade" in tokens
        return RequestHead(
            method,
            target,
            version,
            headers,
            keep_alive,
            upgrade.lower() if wants_upgrade and upgrade and version == b"1.1" else None,
            expect is not None and version == b"1.1" and expect.lower() == b"100-continue",
            body,
        )

    def _head_done(self, msg: RequestHead | ResponseHead, events: list[Event]) -> None:
        assert isinstance(msg, RequestHead)
        events.append(msg)
        self._keep_alive = msg.keep_alive
        self._switch_after = msg.upgrade is not None or msg.method == b"CONNECT"
        self._start_body(msg.body, events)

    def _end_message(self) -> None:
        if self._switch_after:
            self._state = _PAUSED
        elif self._keep_alive:
            self._state = _HEAD
        else:
            self._state = _CLOSED


class ResponseParser(_Parser):
    """Parses the responses of one upstream connection.

    Call :meth:`expect` with the request method before each response (calls queue up for
    pipelined requests): it decides the framing (HEAD, CONNECT). 1xx heads other than 101
    are interim and followed by the final head; 101 and a 2xx answer to CONNECT switch the
    connection, after which :attr:`switched` is True and bytes come back as raw Data.
    """

    _request = False
    _bad = 502
    _llhttp = HttpResponseParser

    def __init__(
        self,
        max_status_line: int = 8192,
        max_header_bytes: int = 32768,
        max_headers: int = 100,
    ) -> None:
        super().__init__(max_status_line, max_header_bytes, max_headers, None)
        self._expecting: deque[bytes] = deque()
        self._switching = False

    def expect(self, request_method: bytes) -> None:
        """Announce the method of the request whose response comes next (in order)."""
        self._expecting.append(request_method)

    @property
    def expecting(self) -> int:
        """How many responses are still awaited."""
        return len(self._expecting)

    def feed_eof(self) -> list[Event]:
        """The upstream closed: ends a read-until-close body, raises if one was cut short."""
        if self._error is not None:
            raise H1Error(self._error.status, self._error.reason)
        st = self._state
        if st == _UNTIL_CLOSE:
            self._state = _CLOSED
            self._expecting.clear()
            return [END_OF_MESSAGE]
        reason = None
        if st == _HEAD:
            if self._hbuf is not None:
                reason = "upstream closed inside a response head"
            elif self._expecting:
                reason = "upstream closed before sending a response"
        elif self._eof_mid_body():
            reason = "upstream closed before the response body ended"
        if reason is not None:
            self._fail(H1Error(502, reason))
            raise H1Error(502, reason)
        if st != _SWITCHED:
            self._state = _CLOSED
        return []

    def _before_head(self) -> None:
        if not self._expecting:
            raise H1Error(502, "response bytes without a pending request")

    def _build(self, head: bytes, eol: int, headers: Headers) -> ResponseHead:
        line = head[:eol]
        proto = line[:9]
        if proto == b"HTTP/1.1 ":
            version = b"1.1"
            keep_alive = True
        elif proto == b"HTTP/1.0 ":
            version = b"1.0"
            keep_alive = False
        else:
            raise H1Error(502, "unsupported HTTP version in status line")
        status = int(line[9:12])
        if status < 100:
            raise H1Error(502, "invalid status code")
        reason = line[13:]
        if reason and not _allowed(reason, REASON_CHARS, _GOOD_REASONS):
            raise H1Error(502, "invalid character in reason phrase")
        lengths: list[bytes] | None = None
        codings: list[bytes] | None = None
        connection = None
        special = _SPECIAL_RESPONSE
        for name, value in headers:
            if name in special:
                if name == b"content-length":
                    lengths = [value] if lengths is None else [*lengths, value]
                elif name == b"connection":
                    connection = value if connection is None else connection + b"," + value
                else:
                    codings = [value] if codings is None else [*codings, value]
        if connection is not None:
            keep_alive, _ = _connection_keep_alive(connection, keep_alive)
        method = self._expecting[0]
        self._switching = False
        if status < 200:
            body = NO_BODY
            if status == 101:
                self._switching = True
                keep_alive = False
        elif method == b"HEAD" or status == 204 or status == 304:
            body = NO_BODY
        elif method == b"CONNECT" and status < 300:
            body = NO_BODY
            self._switching = True
            keep_alive = False
        elif lengths is None and codings is None:
            body = UNTIL_CLOSE_BODY
            keep_alive = False
        else:
            body = body_framing(lengths, codings, version, False)  # type: ignore[assignment]
        return ResponseHead(status, reason, version, headers, keep_alive, body)

    def _head_done(self, msg: RequestHead | ResponseHead, events: list[Event]) -> None:
        assert isinstance(msg, ResponseHead)
        events.append(msg)
        if msg.status < 200 and not self._switching:
            return  # interim: the final head follows for the same request
        self._keep_alive = msg.keep_alive
        self._start_body(msg.body, events)

    def _end_message(self) -> None:
        self._expecting.popleft()
        if self._switching:
            self._state = _SWITCHED
        elif self._keep_alive:
            self._state = _HEAD
        else:
            self._state = _CLOSED

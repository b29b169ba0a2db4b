"""HTTP/1.1 parsers: wire tables, safety rules, pipelining, splits, chunked, response framing."""

from __future__ import annotations

import ast
import pathlib

import pytest

import ferryman.protocol.h1 as h1pkg
from ferryman.protocol.h1 import (
    END_OF_MESSAGE,
    BodyKind,
    Data,
    EndOfMessage,
    H1Error,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    Trailers,
)
from support.h1_events import feed_all, normalize


def request(raw: bytes, **kw: int) -> list[object]:
    return feed_all(RequestParser(**kw), raw)


def refused(raw: bytes, **kw: int) -> H1Error:
    with pytest.raises(H1Error) as info:
        RequestParser(**kw).feed(raw)
    return info.value


def bytewise_refused(raw: bytes, **kw: int) -> H1Error:
    parser = RequestParser(**kw)
    with pytest.raises(H1Error) as info:
        for i in range(len(raw)):
            parser.feed(raw[i : i + 1])
    return info.value


H = b"GET / HTTP/1.1\r\nHost: a\r\n"

# --------------------------------------------------------------------------------------
# valid requests


VALID = [
    pytest.param(
        b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n",
        dict(method=b"GET", target=b"/index.html?q=1", version=b"1.1", keep_alive=True),
        id="simple-get",
    ),
    pytest.param(
        b"GET / HTTP/1.0\r\n\r\n",
        dict(version=b"1.0", keep_alive=False, headers=[]),
        id="http10-no-host-closes",
    ),
    pytest.param(
        b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        dict(version=b"1.0", keep_alive=True),
        id="http10-keep-alive",
    ),
    pytest.param(
        H + b"Connection: close\r\n\r\n",
        dict(keep_alive=False),
        id="http11-close",
    ),
    pytest.param(
        H + b"Connection: keep-alive, Close\r\n\r\n",
        dict(keep_alive=False),
        id="close-wins",
    ),
    pytest.param(
        b"GET http://other.example/x HTTP/1.1\r\nHost: a\r\n\r\n",
        dict(target=b"http://other.example/x", headers=[(b"host", b"a")]),
        id="absolute-form-authority-differs-from-host-passes",
    ),
    pytest.param(
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        dict(method=b"OPTIONS", target=b"*"),
        id="asterisk-form",
    ),
    pytest.param(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        dict(method=b"CONNECT", target=b"example.com:443", upgrade=None),
        id="connect-authority-form",
    ),
    pytest.param(
        H + b"Upgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n",
        dict(upgrade=b"websocket"),
        id="websocket-upgrade",
    ),
    pytest.param(
        H + b"Upgrade: websocket\r\n\r\n",
        dict(upgrade=None),
        id="upgrade-without-connection-upgrade-ignored",
    ),
    pytest.param(
        H + b"Expect: 100-Continue\r\nContent-Length: 0\r\n\r\n",
        dict(expect_continue=True),
        id="expect-100",
    ),
    pytest.param(
        b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
        dict(expect_continue=False),
        id="expect-ignored-on-http10",
    ),
    pytest.param(
        H + b"X-A:   spaced \t value \t \r\nX-Empty:\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
        dict(
            headers=[
                (b"host", b"a"),
                (b"x-a", b"spaced \t value"),
                (b"x-empty", b""),
                (b"x-obs", b"caf\xc3\xa9"),
            ]
        ),
        id="ows-stripped-obs-text-kept",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHOST: a\r\nX-MiXeD-CaSe: V\r\n\r\n",
        dict(headers=[(b"host", b"a"), (b"x-mixed-case", b"V")]),
        id="names-lowercased-values-kept",
    ),
    pytest.param(
        b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        dict(method=b"GET"),
        id="leading-empty-lines-ignored",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        dict(headers=[(b"host", b"[::1]:8080")]),
        id="ipv6-host",
    ),
    pytest.param(
        b"PROPFIND /dav HTTP/1.1\r\nHost: a\r\n\r\n",
        dict(method=b"PROPFIND"),
        id="webdav-method",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_valid_requests(raw: bytes, expected: dict[str, object]) -> None:
    events = request(raw)
    head = events[0]
    assert isinstance(head, RequestHead)
    for key, value in expected.items():
        assert getattr(head, key) == value, key
    assert events[-1] == END_OF_MESSAGE
    assert len(events) == 2


def test_request_head_get_and_body_framing() -> None:
    head = request(H + b"Content-Length: 3\r\nX-Two: 1\r\nX-Two: 2\r\n\r\nabc")[0]
    assert isinstance(head, RequestHead)
    assert head.get(b"x-two") == b"1"
    assert head.get(b"missing") is None
    assert head.body.kind is BodyKind.LENGTH and head.body.length == 3


# --------------------------------------------------------------------------------------
# refused requests: every safety rule, with the status the proxy answers


INVALID = [
    # framing
    (
        H + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        "both Content-Length and Transfer-Encoding",
    ),
    (
        H + b"Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
        400,
        "both Content-Length and Transfer-Encoding",
    ),
    (H + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\n", 400, "duplicate Content-Length"),
    (H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "Content-Length"),
    (H + b"Content-Length: 1, 1\r\n\r\n", 400, "invalid Content-Length"),
    (H + b"Content-Length: +1\r\n\r\n", 400, "invalid Content-Length"),
    (H + b"Content-Length: -1\r\n\r\n", 400, "invalid Content-Length"),
    (H + b"Content-Length: 0x10\r\n\r\n", 400, "invalid Content-Length"),
    (H + b"Content-Length:\r\n\r\n", 400, "invalid Content-Length"),
    (H + b"Content-Length: 99999999999999999999999\r\n\r\n", 400, "Content-Length overflow"),
    (H + b"Content-Length: 18446744073709551615\r\n\r\n", 400, "Content-Length overflow"),
    (H + b"Transfer-Encoding: gzip\r\n\r\n", 400, "without a final chunked"),
    (H + b"Transfer-Encoding: identity\r\n\r\n", 400, "without a final chunked"),
    (H + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400, "without a final chunked"),
    (H + b"Transfer-Encoding: chunked, chunked\r\n\r\n", 400, "more than once"),
    (
        H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        "more than once",
    ),
    (H + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501, "unsupported transfer coding"),
    (
        H + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        501,
        "unsupported transfer coding",
    ),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "HTTP/1.0"),
    # field syntax
    (H + b"X: a\r\n b\r\n\r\n", 400, "obs-fold"),
    (H + b"X: a\r\n\tb\r\n\r\n", 400, "obs-fold"),
    (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, "obs-fold"),
    (H + b"X: a\rb\r\n\r\n", 400, "bare CR"),
    (H + b"X: a\r\r\n\r\n", 400, "bare CR"),
    (b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare CR"),
    (b"\r\n\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare CR"),
    (H + b"X: a\n\r\n", 400, "bare LF"),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400, "bare LF"),
    (H + b"X: a\x00b\r\n\r\n", 400, "NUL"),
    (H + b"X\x00: a\r\n\r\n", 400, "NUL"),
    (b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "NUL"),
    (H + b"X : a\r\n\r\n", 400, "header name contains whitespace"),
    (H + b"X\t: a\r\n\r\n", 400, "header name contains whitespace"),
    (H + b"X(: a\r\n\r\n", 400, "invalid character in header name"),
    (H + b"X@Y: a\r\n\r\n", 400, "invalid character in header name"),
    (H + b"X-\xc3\xa9: a\r\n\r\n", 400, "invalid character in header name"),
    (H + b"X: a\x01\r\n\r\n", 400, "invalid character in header value"),
    (H + b"X: a\x1fb\r\n\r\n", 400, "invalid character in header value"),
    (H + b"X: a\x7f\r\n\r\n", 400, "invalid character in header value"),
    (H + b"NoColon\r\n\r\n", 400, "without colon"),
    (H + b": a\r\n\r\n", 400, "empty header name"),
    # Host
    (b"GET / HTTP/1.1\r\n\r\n", 400, "missing Host"),
    (H + b"Host: a\r\n\r\n", 400, "duplicate Host"),
    (H + b"host: b\r\n\r\n", 400, "duplicate Host"),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "invalid Host"),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "invalid Host"),
    (b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", 400, "invalid Host"),
    (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400, "invalid Host"),
    # request line
    (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505, "unsupported HTTP version"),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "unsupported HTTP version"),
    (b"GET / HTTP/0.9\r\n\r\n", 505, "unsupported HTTP version"),
    (b"GET / HTTP/3.1\r\nHost: a\r\n\r\n", 505, "unsupported HTTP version"),
    (b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", 505, "unsupported HTTP version"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "unsupported HTTP version"),
    (b"GET / HTPT/1.1\r\nHost: a\r\n\r\n", 400, "invalid HTTP version"),
    (b"GET / RTSP/1.0\r\nHost: a\r\n\r\n", 400, "invalid HTTP version"),
    (b"GET /\r\n\r\n", 400, "invalid request line"),
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid request line"),
    (b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, "invalid request line"),
    (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid request line"),
    (b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid method"),
    (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid method"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, ""),
    (b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", 501, "unknown method"),
    (b"DESCRIBE / HTTP/1.1\r\nHost: a\r\n\r\n", 501, "unknown method"),
    (b"GET a HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request target"),
    (b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request target"),
    (b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request target"),
    (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "asterisk-form"),
    (b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "authority-form"),
    (b"CONNECT example.com HTTP/1.1\r\nHost: a\r\n\r\n", 400, "authority-form"),
]


@pytest.mark.parametrize(("raw", "status", "reason"), INVALID)
def test_invalid_requests(raw: bytes, status: int, reason: str) -> None:
    err = refused(raw)
    assert err.status == status
    assert reason in err.reason


@pytest.mark.parametrize(("raw", "status", "reason"), INVALID)
def test_invalid_requests_fed_byte_by_byte(raw: bytes, status: int, reason: str) -> None:
    """The verdict does not depend on how the head was cut into reads."""
    err = bytewise_refused(raw)
    assert err.status == status
    if not raw.startswith(b"\x16"):
        assert reason in err.reason


def test_garbage_is_refused_on_its_first_bytes() -> None:
    parser = RequestParser()
    with pytest.raises(H1Error) as info:
        parser.feed(b"\x16\x03\x01")  # a TLS ClientHello on a plain listener
    assert info.value.status == 400


def test_error_is_sticky_and_keeps_earlier_pipelined_events() -> None:
    parser = RequestParser()
    with pytest.raises(H1Error) as info:
        parser.feed(H + b"\r\nGET / HTTP/1.1\r\n\r\n")
    assert info.value.reason == "missing Host"
    earlier = normalize(info.value.events)
    assert isinstance(earlier[0], RequestHead) and earlier[1] == END_OF_MESSAGE
    with pytest.raises(H1Error, match="missing Host"):
        parser.feed(H + b"\r\n")


# --------------------------------------------------------------------------------------
# limits


def test_request_line_limit_is_414() -> None:
    line = b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n"
    assert request(line + b"Host: a\r\n\r\n", max_request_line=len(line) - 2)
    err = refused(line + b"Host: a\r\n\r\n", max_request_line=len(line) - 3)
    assert (err.status, err.reason) == (414, "request line too long")


def test_request_line_limit_applies_before_the_line_ends() -> None:
    parser = RequestParser(max_request_line=64)
    parser.feed(b"GET /" + b"a" * 50)
    with pytest.raises(H1Error) as info:
        parser.feed(b"a" * 20)
    assert info.value.status == 414


def test_header_bytes_limit_is_431() -> None:
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 50) for i in range(10))
    size = len(fields) + 2
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
    assert request(raw, max_header_bytes=size + 9)
    err = refused(raw, max_header_bytes=size + 8)
    assert (err.status, err.reason) == (431, "header section too large")
    # A head that never ends is refused once it passes the limit, not buffered forever.
    parser = RequestParser(max_header_bytes=1024)
    parser.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(H1Error) as info:
        for _ in range(100):
            parser.feed(b"X-Long: " + b"v" * 100 + b"\r\n")
    assert info.value.status == 431


def test_header_count_limit_is_431() -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(9))
    assert request(H + fields + b"\r\n", max_headers=10)
    err = refused(H + fields + b"X-9: v\r\n\r\n", max_headers=10)
    assert (err.status, err.reason) == (431, "too many header fields")


def test_content_length_over_max_body_is_413() -> None:
    assert request(H + b"Content-Length: 10\r\n\r\n" + b"x" * 10, max_body=10)
    err = refused(H + b"Content-Length: 11\r\n\r\n", max_body=10)
    assert err.status == 413


def test_chunked_over_max_body_is_413_before_the_data() -> None:
    parser = RequestParser(max_body=10)
    events = parser.feed(H + b"Transfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n")
    assert bytes(events[1].data) == b"abcdef"  # type: ignore[union-attr]
    with pytest.raises(H1Error) as info:
        parser.feed(b"5\r\n")  # 6 + 5 > 10: refused on the size line
    assert info.value.status == 413


# --------------------------------------------------------------------------------------
# pipelining and splits


PIPELINE = (
    b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
    b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
    b"PUT /three HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: abc\r\n\r\n"
)


def test_three_pipelined_requests_in_one_feed() -> None:
    parser = RequestParser()
    events = normalize(parser.feed(PIPELINE))
    assert [type(e).__name__ for e in events] == [
        "RequestHead", "EndOfMessage",
        "RequestHead", "bytes", "EndOfMessage",
        "RequestHead", "bytes", "Trailers", "EndOfMessage",
    ]  # fmt: skip
    assert [e.target for e in events if isinstance(e, RequestHead)] == [b"/one", b"/two", b"/three"]
    assert events[3] == b"hello world"
    assert events[6] == b"hello world"
    assert events[7] == Trailers([(b"x-sum", b"abc")])
    assert parser.waiting_for_head and parser.buffered == 0


TWO = (
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n12345"
    b"\r\n"  # an empty line between messages is ignored
    b"PATCH /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'3;a=b;c="d e"\r\nxyz\r\n0\r\nT: v\r\n\r\n'
)


def test_split_at_every_offset_gives_identical_events() -> None:
    whole = feed_all(RequestParser(), TWO)
    assert len(whole) == 7
    for cut in range(1, len(TWO)):
        assert feed_all(RequestParser(), TWO[:cut], TWO[cut:]) == whole, cut


def test_byte_by_byte_gives_identical_events() -> None:
    assert feed_all(RequestParser(), *[TWO[i : i + 1] for i in range(len(TWO))]) == feed_all(
        RequestParser(), TWO
    )


def test_waiting_for_head_and_buffered_track_message_boundaries() -> None:
    parser = RequestParser()
    assert parser.waiting_for_head and parser.buffered == 0
    parser.feed(b"POST / HTTP/1.1\r\nHo")
    assert parser.waiting_for_head and parser.buffered == 19
    parser.feed(b"st: a\r\nContent-Length: 2\r\n\r\nx")
    assert not parser.waiting_for_head
    parser.feed(b"y")
    assert parser.waiting_for_head and parser.buffered == 0


# --------------------------------------------------------------------------------------
# Content-Length passthrough


def test_content_length_body_passes_through_raw() -> None:
    body = b"GET / HTTP/1.1\r\nHost: evil\r\n\r\n" + bytes(range(256)) * 40
    parser = RequestParser()
    events = parser.feed(H + b"Content-Length: %d\r\n\r\n" % len(body))
    assert normalize(events)[1:] == []
    got = []
    for i in range(0, len(body), 1000):
        piece = body[i : i + 1000]
        evs = parser.feed(piece)
        assert isinstance(evs[0], Data)
        assert evs[0].data is piece  # a whole read of body is handed on as is, no copy
        got.append(evs[0].data)
    assert b"".join(got) == body
    assert evs[-1] == END_OF_MESSAGE
    assert parser.waiting_for_head


def test_large_body_slices_are_memoryviews_of_the_read() -> None:
    body = b"z" * 100_000
    data = H + b"Content-Length: 100000\r\n\r\n" + body + H + b"\r\n"
    events = RequestParser().feed(data)
    assert isinstance(events[1], Data) and isinstance(events[1].data, memoryview)
    assert events[1].data.obj is data
    assert bytes(events[1].data) == body
    assert isinstance(events[3], RequestHead)


def test_content_length_zero_ends_at_once() -> None:
    events = request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert events[0].body.kind is BodyKind.LENGTH  # type: ignore[union-attr]
    assert events[1:] == [END_OF_MESSAGE]


# --------------------------------------------------------------------------------------
# chunked


CH = H + b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("body", "data", "trailers"),
    [
        (b"0\r\n\r\n", b"", None),
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello", None),
        (b"A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n", b"0123456789" * 2, None),
        (b"0005\r\nhello\r\n000\r\n\r\n", b"hello", None),
        (b"0000000000000000000005\r\nhello\r\n0\r\n\r\n", b"hello", None),
        (b"5;name\r\nhello\r\n0;last=yes\r\n\r\n", b"hello", None),
        (b'5;a=b;c="x \\" y"\r\nhello\r\n0\r\n\r\n', b"hello", None),
        (
            b"5\r\nhello\r\n0\r\nX-Check: 1\r\nX-Two:  2 \r\n\r\n",
            b"hello",
            [(b"x-check", b"1"), (b"x-two", b"2")],
        ),
    ],
)
def test_chunked_bodies(
    body: bytes, data: bytes, trailers: list[tuple[bytes, bytes]] | None
) -> None:
    for pieces in ([body], [body[i : i + 1] for i in range(len(body))]):
        parser = RequestParser()
        events = feed_all(parser, CH, *pieces)
        expected: list[object] = [data] if data else []
        if trailers is not None:
            expected.append(Trailers(trailers))
        expected.append(END_OF_MESSAGE)
        assert events[1:] == expected
        assert parser.waiting_for_head


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"zz\r\n", "invalid chunk size"),
        (b"-5\r\n", "invalid chunk size"),
        (b"+5\r\n", "invalid chunk size"),
        (b"0x5\r\n", "invalid chunk size"),
        (b"5_0\r\n", "invalid chunk size"),
        (b" 5\r\n", "invalid chunk size"),
        (b"5 \r\n", "invalid chunk size"),
        (b"\r\n", "invalid chunk size"),
        (b"5\nhello\r\n", "invalid chunk size"),
        (b"5 ;a=b\r\n", "invalid chunk size"),
        (b"5;\r\n", "invalid chunk extension"),
        (b"5;a=b c\r\n", "invalid chunk extension"),
        (b"5;a=\x01\r\n", "invalid chunk extension"),
        (b'5;a="open\r\n', "invalid chunk extension"),
        (b"10000000000000000\r\n", "chunk size overflow"),
        (b"FFFFFFFFFFFFFFFFF\r\n", "chunk size overflow"),
        (b"5\r\nhelloXX", "missing CRLF after chunk data"),
        (b"5\r\nhello\n0\r\n\r\n", "missing CRLF after chunk data"),
        (b"5\r\nhello\r\n0\r\nX : y\r\n\r\n", "whitespace"),
        (b"5\r\nhello\r\n0\r\nX: y\r\n z\r\n\r\n", "obs-fold"),
        (b"5\r\nhello\r\n0\r\nX: a\rb\r\n\r\n", "bare CR"),
        (b"5\r\nhello\r\n0\r\nX: \x01\r\n\r\n", "invalid character in header value"),
        (b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n", "forbidden trailer field"),
        (b"1" * 5000, "chunk size line too long"),
    ],
)
def test_invalid_chunked_bodies(body: bytes, reason: str) -> None:
    for pieces in ([body], [body[i : i + 1] for i in range(len(body))]):
        parser = RequestParser()
        parser.feed(CH)
        with pytest.raises(H1Error) as info:
            for piece in pieces:
                parser.feed(piece)
        assert info.value.status == 400
        assert reason in info.value.reason


def test_chunk_size_fitting_64_bits_is_accepted() -> None:
    parser = RequestParser()
    parser.feed(CH)
    assert parser.feed(b"FFFFFFFFFFFFFFFF\r\nabc") == [Data(b"abc")]


def test_trailer_section_limit() -> None:
    parser = RequestParser(max_header_bytes=64)
    parser.feed(CH + b"0\r\n")
    with pytest.raises(H1Error) as info:
        for _ in range(20):
            parser.feed(b"X-T: " + b"v" * 10 + b"\r\n")
    assert info.value.status == 431


# --------------------------------------------------------------------------------------
# connection state: keep-alive, close, upgrade, EOF


def test_data_after_a_closing_request_is_discarded() -> None:
    parser = RequestParser()
    events = normalize(parser.feed(H + b"Connection: close\r\n\r\n" + H + b"\r\n"))
    assert len(events) == 2 and parser.closed
    assert parser.feed(b"more") == []


def test_http10_without_keep_alive_closes() -> None:
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.0\r\n\r\n")
    assert parser.closed


def test_upgrade_pauses_until_the_caller_decides() -> None:
    parser = RequestParser()
    raw = H + b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"
    events = normalize(parser.feed(raw))
    assert events[0].upgrade == b"websocket"  # type: ignore[union-attr]
    assert events[1:] == [END_OF_MESSAGE]
    assert parser.paused
    assert parser.feed(b"\x81\x01!") == []
    assert parser.switch_protocols() == b"\x81\x05hello\x81\x01!"
    assert parser.switched
    assert parser.feed(b"frames") == [Data(b"frames")]


def test_refused_upgrade_resumes_http() -> None:
    parser = RequestParser()
    parser.feed(H + b"Connection: upgrade\r\nUpgrade: h2c\r\n\r\nGET /next HTTP/1.1\r\n")
    assert parser.paused
    events = normalize(parser.resume() + parser.feed(b"Host: a\r\n\r\n"))
    assert events[0].target == b"/next"  # type: ignore[union-attr]
    assert events[1] == END_OF_MESSAGE


def test_connect_pauses_like_an_upgrade() -> None:
    parser = RequestParser()
    parser.feed(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01")
    assert parser.paused
    assert parser.switch_protocols() == b"\x16\x03\x01"
    with pytest.raises(RuntimeError):
        parser.resume()


def test_feed_eof() -> None:
    assert RequestParser().feed_eof() == []
    parser = RequestParser()
    parser.feed(H + b"\r\n")
    assert parser.feed_eof() == [] and parser.closed
    parser = RequestParser()
    parser.feed(b"GET / HT")
    with pytest.raises(H1Error, match="inside a request head"):
        parser.feed_eof()
    parser = RequestParser()
    parser.feed(H + b"Content-Length: 5\r\n\r\nabc")
    with pytest.raises(H1Error, match="before the request body ended"):
        parser.feed_eof()
    parser = RequestParser()
    parser.feed(CH + b"5\r\nhello\r\n")
    with pytest.raises(H1Error, match="before the request body ended"):
        parser.feed_eof()


def test_accepts_bytearray_and_memoryview() -> None:
    raw = H + b"Content-Length: 2\r\n\r\nok"
    for data in (bytearray(raw), memoryview(raw)):
        assert normalize(RequestParser().feed(data))[1:] == [b"ok", END_OF_MESSAGE]  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# responses


def response(method: bytes, *pieces: bytes) -> tuple[ResponseParser, list[object]]:
    parser = ResponseParser()
    parser.expect(method)
    return parser, feed_all(parser, *pieces)


def shape(events: list[object]) -> list[object]:
    return [e.status if isinstance(e, ResponseHead) else e for e in events]


FRAMING = [
    pytest.param(
        b"GET",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        [200, b"abc", END_OF_MESSAGE],
        False,
        True,
        id="content-length",
    ),
    pytest.param(
        b"HEAD",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
        [200, END_OF_MESSAGE],
        False,
        True,
        id="head-no-body",
    ),
    pytest.param(
        b"HEAD",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        [200, END_OF_MESSAGE],
        False,
        True,
        id="head-chunked-no-body",
    ),
    pytest.param(
        b"GET", b"HTTP/1.1 204 No Content\r\n\r\n", [204, END_OF_MESSAGE], False, True, id="204"
    ),
    pytest.param(
        b"GET",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        [304, END_OF_MESSAGE],
        False,
        True,
        id="304",
    ),
    pytest.param(
        b"POST",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
        [100, 200, b"x", END_OF_MESSAGE],
        False,
        True,
        id="100-then-final",
    ),
    pytest.param(
        b"GET",
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        [103, 103, 200, END_OF_MESSAGE],
        False,
        True,
        id="103-early-hints",
    ),
    pytest.param(
        b"GET",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n\r\n\x81\x00",
        [101, END_OF_MESSAGE, b"\x81\x00"],
        True,
        False,
        id="101-switch",
    ),
    pytest.param(
        b"CONNECT",
        b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03",
        [200, END_OF_MESSAGE, b"\x16\x03"],
        True,
        False,
        id="connect-200",
    ),
    pytest.param(
        b"CONNECT",
        b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 2\r\n\r\nno",
        [407, b"no", END_OF_MESSAGE],
        False,
        True,
        id="connect-refused",
    ),
    pytest.param(
        b"GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
        [200, b"abc", Trailers([(b"x-t", b"1")]), END_OF_MESSAGE],
        False,
        True,
        id="chunked",
    ),
    pytest.param(
        b"GET",
        b"HTTP/1.1 200 OK\r\n\r\nuntil close",
        [200, b"until close"],
        False,
        False,
        id="until-close",
    ),
    pytest.param(
        b"GET",
        b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
        [200, b"x", END_OF_MESSAGE],
        False,
        False,
        id="http10-closes",
    ),
    pytest.param(
        b"GET",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx",
        [200, b"x", END_OF_MESSAGE],
        False,
        True,
        id="http10-keep-alive",
    ),
    pytest.param(
        b"GET",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
        [200, b"x", END_OF_MESSAGE],
        False,
        False,
        id="close",
    ),
]


@pytest.mark.parametrize(("method", "raw", "expected", "switched", "keep_alive"), FRAMING)
def test_response_framing(
    method: bytes, raw: bytes, expected: list[object], switched: bool, keep_alive: bool
) -> None:
    for pieces in ([raw], [raw[i : i + 1] for i in range(len(raw))]):
        parser, events = response(method, *pieces)
        assert shape(events) == expected
        assert parser.switched is switched
        final = [e for e in events if isinstance(e, ResponseHead)][-1]
        assert final.keep_alive is keep_alive


def test_interim_heads_are_marked() -> None:
    _, events = response(b"GET", b"HTTP/1.1 103 Early Hints\r\nLink: <x>\r\n\r\n")
    head = events[0]
    assert isinstance(head, ResponseHead) and head.interim and head.get(b"link") == b"<x>"
    assert len(events) == 1


def test_until_close_ends_at_eof() -> None:
    parser, events = response(b"GET", b"HTTP/1.1 200 OK\r\n\r\nab", b"cd")
    assert events[1] == b"abcd"
    assert events[0].body.kind is BodyKind.UNTIL_CLOSE  # type: ignore[union-attr]
    assert parser.feed_eof() == [END_OF_MESSAGE]
    assert parser.closed


def test_pipelined_responses_follow_expectations_in_order() -> None:
    parser = ResponseParser()
    parser.expect(b"HEAD")
    parser.expect(b"GET")
    events = feed_all(
        parser,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    )
    assert shape(events) == [200, END_OF_MESSAGE, 200, b"hello", END_OF_MESSAGE]
    assert parser.expecting == 0


@pytest.mark.parametrize("status", [100, 102, 199, 200, 299, 418, 499, 599, 600, 799, 999])
def test_status_codes_100_to_999(status: int) -> None:
    raw = b"HTTP/1.1 %d Whatever\r\nContent-Length: 0\r\n\r\n" % status
    parser, events = response(b"GET", raw)
    assert events[0].status == status  # type: ignore[union-attr]
    if status >= 200:
        assert events[1:] == [END_OF_MESSAGE]
    else:
        assert parser.waiting_for_head and parser.expecting == 1


def test_status_without_reason() -> None:
    _, events = response(b"GET", b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n")
    assert events[0].reason == b""  # type: ignore[union-attr]


UPSTREAM_GARBAGE = [
    (b"garbage\r\n\r\n", "invalid status line"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "invalid status line"),
    (b"\x16\x03\x01\x00\x05", ""),
    (b"HTTP/1.1 abc OK\r\n\r\n", "status"),
    (b"HTTP/1.1 099 OK\r\n\r\n", "status code"),
    (b"HTTP/1.1 99 OK\r\n\r\n", "status code"),
    (b"HTTP/1.1 1000 OK\r\n\r\n", "status code"),
    (b"HTTP/1.1  200 OK\r\n\r\n", "status code"),
    (b"HTTP/2 200 OK\r\n\r\n", "HTTP version"),
    (b"HTTP/2.0 200 OK\r\n\r\n", "unsupported HTTP version"),
    (b"ICE/1.0 200 OK\r\n\r\n", "HTTP version"),
    (b"RTSP/1.0 200 OK\r\n\r\n", "HTTP version"),
    (b"HTTP/1.1 200 O\x01K\r\n\r\n", "reason phrase"),
    (b"HTTP/1.1 200 OK\nX: y\r\n\r\n", "bare LF"),
    (b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n", "header name contains whitespace"),
    (b"HTTP/1.1 200 OK\r\n y\r\n\r\n", "obs-fold"),
    (b"HTTP/1.1 200 OK\r\nX: \x01\r\n\r\n", "invalid character in header value"),
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "both Content-Length and Transfer-Encoding",
    ),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "without a final chunked"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "without a final chunked"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "unsupported transfer coding"),
    (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd", "missing CRLF"),
]


@pytest.mark.parametrize(("raw", "reason"), UPSTREAM_GARBAGE)
def test_upstream_garbage_is_502(raw: bytes, reason: str) -> None:
    for pieces in ([raw], [raw[i : i + 1] for i in range(len(raw))]):
        parser = ResponseParser()
        parser.expect(b"GET")
        with pytest.raises(H1Error) as info:
            for piece in pieces:
                parser.feed(piece)
        assert info.value.status == 502
        assert reason in info.value.reason


def test_response_limits_are_502() -> None:
    parser = ResponseParser(max_header_bytes=64)
    parser.expect(b"GET")
    with pytest.raises(H1Error) as info:
        parser.feed(b"HTTP/1.1 200 OK\r\nX: " + b"v" * 100 + b"\r\n\r\n")
    assert info.value.status == 502


def test_response_without_a_request_is_502() -> None:
    with pytest.raises(H1Error, match="without a pending request"):
        ResponseParser().feed(b"HTTP/1.1 408 Request Timeout\r\n\r\n")


def test_response_eof() -> None:
    parser = ResponseParser()
    assert parser.feed_eof() == []
    parser = ResponseParser()
    parser.expect(b"GET")
    with pytest.raises(H1Error, match="before sending a response") as info:
        parser.feed_eof()
    assert info.value.status == 502
    parser, _ = response(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
    with pytest.raises(H1Error, match="before the response body ended"):
        parser.feed_eof()
    parser, _ = response(b"GET", b"HTTP/1.1 200 OK\r\nCont")
    with pytest.raises(H1Error, match="inside a response head"):
        parser.feed_eof()


# --------------------------------------------------------------------------------------
# sans-IO


def test_codec_imports_no_io() -> None:
    root = pathlib.Path(h1pkg.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"asyncio", "socket", "selectors", "ssl"}, path


def test_end_of_message_is_a_singleton_value() -> None:
    assert EndOfMessage() == END_OF_MESSAGE


def test_hosts_and_reasons_that_passed_are_remembered_and_bad_ones_still_refused() -> None:
    """The parsers remember valid Host values and reason phrases (a bounded set); past the
    bound, and for values never seen, the check still runs."""
    for i in range(300):  # more distinct names than are remembered
        (head, *_) = request(b"GET / HTTP/1.1\r\nHost: h%d.example\r\n\r\n" % i)
        assert head.get(b"host") == b"h%d.example" % i
        parser = ResponseParser()
        parser.expect(b"GET")
        (response, *_) = parser.feed(b"HTTP/1.1 200 Fine %d\r\nContent-Length: 0\r\n\r\n" % i)
        assert response.reason == b"Fine %d" % i
    for host in (b"a b", b"h1.example/", b"h299.example@"):
        assert refused(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n").reason == "invalid Host"
    parser = ResponseParser()
    parser.expect(b"GET")
    with pytest.raises(H1Error, match="reason phrase"):
        parser.feed(b"HTTP/1.1 200 Fine 1\x01\r\n\r\n")


def test_a_connection_header_of_one_token_decides_keep_alive_in_responses() -> None:
    for value, keep in ((b"keep-alive", True), (b"Keep-Alive", True), (b"close", False), (b"CLOSE", False),
                        (b"keep-alive, close", False), (b"upgrade, keep-alive", True)):
        for version in (b"1.0", b"1.1"):
            parser = ResponseParser()
            parser.expect(b"GET")
            (head, *_) = parser.feed(b"HTTP/" + version + b" 200 OK\r\nConnection: " + value + b"\r\nContent-Length: 0\r\n\r\n")
            assert head.keep_alive is keep, (version, value)

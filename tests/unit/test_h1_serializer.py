"""HTTP/1.1 serializer: exact bytes, injection refusal, chunks, cached Date, round trips."""

from __future__ import annotations

import email.utils
import re
import time

import pytest

from ferryman.protocol.h1 import (
    END_OF_MESSAGE,
    Data,
    RequestHead,
    RequestParser,
    ResponseParser,
    Trailers,
    serializer,
)
from ferryman.protocol.h1.serializer import (
    chunk,
    date_header,
    http_date,
    last_chunk,
    request_head,
    response_head,
)


def test_response_head_exact_bytes() -> None:
    assert response_head(200, None, [(b"content-length", b"2"), (b"x", b"y")]) == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx: y\r\n\r\n"
    )
    assert response_head(404, None, []) == b"HTTP/1.1 404 Not Found\r\n\r\n"
    assert response_head(404, b"Not Found") == b"HTTP/1.1 404 Not Found\r\n\r\n"
    assert response_head(503, b"Busy", []) == b"HTTP/1.1 503 Busy\r\n\r\n"
    assert response_head(200, b"", []) == b"HTTP/1.1 200 \r\n\r\n"
    assert response_head(299, None, []) == b"HTTP/1.1 299 \r\n\r\n"
    assert response_head(200, None, [], b"1.0") == b"HTTP/1.0 200 OK\r\n\r\n"
    assert (
        response_head(103, None, [(b"link", b"</a>")])
        == b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
    )


def test_common_status_lines_are_precomputed() -> None:
    first = serializer._LINES_11[200]
    assert first == b"HTTP/1.1 200 OK\r\n"
    assert serializer._LINES_11[502] == b"HTTP/1.1 502 Bad Gateway\r\n"
    assert serializer._LINES[b"1.0"][304] == b"HTTP/1.0 304 Not Modified\r\n"


def test_request_head_exact_bytes() -> None:
    assert (
        request_head(b"GET", b"/x?y=1", [(b"host", b"a")])
        == b"GET /x?y=1 HTTP/1.1\r\nhost: a\r\n\r\n"
    )
    assert request_head(b"POST", b"/", [], b"1.0") == b"POST / HTTP/1.0\r\n\r\n"


@pytest.mark.parametrize(
    "build",
    [
        lambda: response_head(200, None, [(b"x", b"a\r\nSet-Cookie: evil=1")]),
        lambda: response_head(200, None, [(b"x", b"a\nb")]),
        lambda: response_head(200, None, [(b"x", b"a\rb")]),
        lambda: response_head(200, None, [(b"x\r\ny", b"v")]),
        lambda: response_head(200, b"OK\r\nX: y", []),
        lambda: request_head(b"GET", b"/ HTTP/1.1\r\nHost: evil\r\n\r\nGET /", []),
        lambda: request_head(b"GET", b"/", [(b"host", b"a\n")]),
        lambda: last_chunk([(b"t", b"a\r\nb")]),
    ],
)
def test_cr_or_lf_inside_fields_is_refused(build: object) -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        build()  # type: ignore[operator]


def test_chunk_pieces() -> None:
    assert chunk(b"hello") == [b"5\r\n", b"hello", b"\r\n"]
    assert chunk(b"x" * 4096)[0] == b"1000\r\n"
    view = memoryview(b"abc")
    pieces = chunk(view)
    assert pieces[1] is view and pieces[0] == b"3\r\n"
    assert chunk(b"") == []  # an empty chunk would end the body


def test_last_chunk() -> None:
    assert last_chunk() == b"0\r\n\r\n"
    assert (
        last_chunk([(b"x-checksum", b"abc"), (b"x-n", b"1")])
        == b"0\r\nx-checksum: abc\r\nx-n: 1\r\n\r\n"
    )


def test_chunked_round_trip_through_the_parser() -> None:
    wire = request_head(b"POST", b"/up", [(b"host", b"a"), (b"transfer-encoding", b"chunked")])
    wire += b"".join(chunk(b"hello ") + chunk(b"") + chunk(b"world")) + last_chunk(
        [(b"x-sum", b"1")]
    )
    events = RequestParser().feed(wire)
    head = events[0]
    assert isinstance(head, RequestHead)
    assert head.headers == [(b"host", b"a"), (b"transfer-encoding", b"chunked")]
    assert b"".join(bytes(e.data) for e in events if isinstance(e, Data)) == b"hello world"
    assert events[-2:] == [Trailers([(b"x-sum", b"1")]), END_OF_MESSAGE]


def test_response_round_trip_through_the_parser() -> None:
    headers = [(b"server", b"ferryman"), date_header(), (b"content-length", b"2")]
    parser = ResponseParser()
    parser.expect(b"GET")
    events = parser.feed(response_head(201, None, headers) + b"ok")
    assert events[0].status == 201  # type: ignore[union-attr]
    assert events[0].reason == b"Created"  # type: ignore[union-attr]
    assert events[0].headers == headers  # type: ignore[union-attr]
    assert events[1] == Data(b"ok")


_IMF = re.compile(
    rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d "
    rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT"
)


def test_date_header_is_an_imf_fixdate_of_now() -> None:
    name, value = date_header()
    assert name == b"date"
    assert _IMF.fullmatch(value)
    parsed = email.utils.parsedate_to_datetime(value.decode()).timestamp()
    assert abs(parsed - time.time()) < 5
    assert http_date() == value or _IMF.fullmatch(http_date())


def test_date_is_recomputed_only_when_the_second_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.25]
    monkeypatch.setattr(serializer, "_clock", lambda: clock[0])
    first = date_header()
    assert first == (b"date", b"Thu, 01 Jan 1970 00:00:00 GMT")
    clock[0] = 0.99
    assert date_header() == first
    assert http_date() is first[1]  # same second: the cached value itself, not formatted again
    clock[0] = 1.0
    second = date_header()
    assert second == (b"date", b"Thu, 01 Jan 1970 00:00:01 GMT")
    clock[0] = 86400 * 365
    assert http_date() == b"Fri, 01 Jan 1971 00:00:00 GMT"

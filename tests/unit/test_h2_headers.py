"""HTTP/2 header blocks ⇄ the engine's heads (ferryman.protocol.h2.headers)."""

from __future__ import annotations

from ferryman.protocol.h1.events import BodyKind
from ferryman.protocol.h2.headers import request_block, request_head, response_block, response_head, trailer_block


def test_a_request_block_becomes_a_head_with_host_and_joined_cookies() -> None:
    head = request_head([
        (b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/a?b=1"), (b":authority", b"example.test:8443"),
        (b"cookie", b"a=1"), (b"x-y", b"z"), (b"cookie", b"b=2"), (b"content-length", b"12"),
    ], end_stream=False)
    assert (head.method, head.target, head.version) == (b"POST", b"/a?b=1", b"2.0")
    assert head.headers == [(b"host", b"example.test:8443"), (b"x-y", b"z"), (b"content-length", b"12"), (b"cookie", b"a=1; b=2")]
    assert head.body.kind is BodyKind.LENGTH and head.body.length == 12


def test_request_body_framing_none_length_or_until_end_stream() -> None:
    base = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")]
    assert request_head(base, end_stream=True).body.kind is BodyKind.NONE
    assert request_head(base, end_stream=False).body.kind is BodyKind.CHUNKED  # unknown length: chunked to HTTP/1.1
    head = request_head(base + [(b"host", b"h.test")], end_stream=True)
    assert head.headers == [(b"host", b"h.test")]  # a Host field is kept as it is (h2 checked it matches)


def test_a_connect_request_targets_its_authority() -> None:
    head = request_head([(b":method", b"CONNECT"), (b":authority", b"db.test:5432")], end_stream=False)
    assert head.target == b"db.test:5432" and head.method == b"CONNECT"


def test_an_http1_request_becomes_a_block_without_connection_specific_fields() -> None:
    block = request_block(b"GET", b"/x", [
        (b"host", b"site.test"), (b"Connection", b"keep-alive"), (b"keep-alive", b"5"), (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"), (b"proxy-connection", b"x"), (b"te", b"trailers, deflate"), (b"X-Custom", b"V"),
    ], b"http")
    assert block == [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/x"), (b":authority", b"site.test"),
                     (b"te", b"trailers"), (b"x-custom", b"V")]
    assert request_block(b"GET", b"/", [(b"te", b"gzip")], b"https") == [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")]


def test_response_heads_and_blocks() -> None:
    head = response_head([(b":status", b"201"), (b"content-length", b"3")], end_stream=False, method=b"GET")
    assert (head.status, head.reason, head.body.kind, head.body.length) == (201, b"Created", BodyKind.LENGTH, 3)
    assert response_head([(b":status", b"200")], end_stream=False, method=b"GET").body.kind is BodyKind.CHUNKED
    assert response_head([(b":status", b"200")], end_stream=True, method=b"GET").body.kind is BodyKind.NONE
    for status, method in ((b"204", b"GET"), (b"304", b"GET"), (b"200", b"HEAD"), (b"103", b"GET")):
        assert response_head([(b":status", status), (b"content-length", b"9")], end_stream=False, method=method).body.kind is BodyKind.NONE
    assert response_block(404, [(b"Content-Type", b"text/plain"), (b"connection", b"close"), (b"transfer-encoding", b"chunked")]) == [
        (b":status", b"404"), (b"content-type", b"text/plain")]
    assert trailer_block([(b"grpc-status", b"0"), (b"Grpc-Message", b"ok"), (b"connection", b"x")]) == [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]

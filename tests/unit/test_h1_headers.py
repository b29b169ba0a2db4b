"""Header list helpers: hop-by-hop stripping (RFC 9110 7.6.1) and get/set/remove."""

from __future__ import annotations

from ferryman.protocol.h1.headers import (
    HOP_BY_HOP,
    add_header,
    connection_tokens,
    get_all,
    get_header,
    has_header,
    remove_header,
    set_header,
    strip_hop_by_hop,
    tokens,
)


def test_hop_by_hop_set() -> None:
    assert HOP_BY_HOP == {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }


def test_strip_removes_fixed_hop_by_hop_fields_and_keeps_order() -> None:
    headers = [
        (b"host", b"a"),
        (b"connection", b"keep-alive"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"),
        (b"x-one", b"1"),
        (b"te", b"trailers"),
        (b"trailer", b"x-sum"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"x-two", b"2"),
    ]
    original = list(headers)
    assert strip_hop_by_hop(headers) == [(b"host", b"a"), (b"x-one", b"1"), (b"x-two", b"2")]
    assert headers == original  # a new list; the input is untouched


def test_strip_removes_fields_named_in_connection() -> None:
    headers = [
        (b"connection", b" X-Private ,close,, Upgrade"),
        (b"x-private", b"secret"),
        (b"X-Other", b"kept"),
        (b"connection", b"x-second"),
        (b"x-second", b"gone"),
        (b"close", b"named too"),
        (b"accept", b"*/*"),
    ]
    assert strip_hop_by_hop(headers) == [(b"X-Other", b"kept"), (b"accept", b"*/*")]


def test_strip_never_drops_host_or_content_length_named_in_connection() -> None:
    headers = [
        (b"host", b"a"),
        (b"connection", b"Host, Content-Length, x-a"),
        (b"content-length", b"5"),
        (b"x-a", b"1"),
    ]
    assert strip_hop_by_hop(headers) == [(b"host", b"a"), (b"content-length", b"5")]


def test_strip_without_connection_header() -> None:
    headers = [(b"host", b"a"), (b"x", b"1")]
    out = strip_hop_by_hop(headers)
    assert out == headers and out is not headers


def test_tokens() -> None:
    assert tokens(b" Keep-Alive ,\tUPGRADE,,") == [b"keep-alive", b"upgrade"]
    assert tokens(b"") == []
    assert connection_tokens([(b"connection", b"a, B"), (b"x", b"c"), (b"connection", b"d")]) == {
        b"a",
        b"b",
        b"d",
    }


def test_get_set_add_remove() -> None:
    headers = [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]
    assert get_header(headers, b"a") == b"1"
    assert get_header(headers, b"z") is None
    assert get_all(headers, b"a") == [b"1", b"3"]
    assert has_header(headers, b"b") and not has_header(headers, b"z")

    set_header(headers, b"a", b"9")
    assert headers == [(b"a", b"9"), (b"b", b"2")]
    set_header(headers, b"c", b"new")
    assert headers == [(b"a", b"9"), (b"b", b"2"), (b"c", b"new")]

    add_header(headers, b"b", b"again")
    assert get_all(headers, b"b") == [b"2", b"again"]
    assert remove_header(headers, b"b") == 2
    assert headers == [(b"a", b"9"), (b"c", b"new")]
    assert remove_header(headers, b"zzz") == 0


def test_set_header_removes_every_later_duplicate() -> None:
    headers = [(b"x", b"1"), (b"x", b"2"), (b"y", b"0"), (b"x", b"3"), (b"x", b"4")]
    set_header(headers, b"x", b"only")
    assert headers == [(b"x", b"only"), (b"y", b"0")]

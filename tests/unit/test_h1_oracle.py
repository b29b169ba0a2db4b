"""h11 as the oracle: generated valid messages round-trip through serializer -> parser and
agree with h11; mutated messages only ever raise H1Error, and we never accept what h11
refuses. Skipped where h11 (a test-only dependency) is not installed."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferryman.protocol.h1 import (
    END_OF_MESSAGE,
    H1Error,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
)
from ferryman.protocol.h1.serializer import chunk, last_chunk, request_head, response_head
from support.h1_events import feed_all, normalize

h11 = pytest.importorskip("h11")


TWO = (
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n12345"
    b"\r\n"
    b"PATCH /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'3;a=b;c="d e"\r\nxyz\r\n0\r\nT: v\r\n\r\n'
)

_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_RESERVED = {
    b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade",
    b"expect", b"te", b"trailer", b"keep-alive",
}  # fmt: skip
names = (
    st.text(_TCHARS, min_size=1, max_size=20)
    .map(str.encode)
    .filter(lambda n: n.lower() not in _RESERVED)
)
values = st.builds(
    lambda a, b: (a + b).strip(b" \t"),
    st.binary(min_size=0, max_size=30).map(lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E)),
    st.lists(st.sampled_from([b" ", b"\t", b"x", b"\x80", b"\xff", b"=", b","]), max_size=5).map(
        b"".join
    ),
)
header_lists = st.lists(st.tuples(names, values), max_size=12)
methods = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"])
targets = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?%", max_size=40).map(
    lambda t: b"/" + t.encode()
)
hosts = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,6})?(:[0-9]{1,5})?\Z").map(
    str.encode
)
bodies = st.binary(max_size=300)
framings = st.sampled_from(["length", "chunked", "none"])


def wire_body(
    body: bytes, framing: str, cuts: list[int]
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    if framing == "length":
        return [(b"content-length", b"%d" % len(body))], body
    if framing == "chunked":
        pieces: list[bytes] = []
        start = 0
        for cut in sorted({c % (len(body) + 1) for c in cuts} | {len(body)}):
            pieces += [bytes(p) for p in chunk(body[start:cut])]
            start = cut
        return [(b"transfer-encoding", b"chunked")], b"".join(pieces) + last_chunk()
    return [], b""


def h11_request(raw: bytes) -> tuple[object, bytes]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    head = conn.next_event()
    body = b""
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            return head, body
        else:
            raise AssertionError(f"h11 did not finish: {ev!r}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=methods,
    target=targets,
    host=hosts,
    headers=header_lists,
    body=bodies,
    framing=framings,
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=4),
    split=st.integers(min_value=0, max_value=2000),
)
def test_generated_requests_agree_with_h11(
    method: bytes,
    target: bytes,
    host: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    framing: str,
    cuts: list[int],
    split: int,
) -> None:
    if framing == "none":
        body = b""
    framing_headers, wire = wire_body(body, framing, cuts)
    all_headers = [(b"host", host), *headers, *framing_headers]
    raw = request_head(method, target, all_headers) + wire

    oracle_head, oracle_body = h11_request(raw)
    split %= len(raw) + 1
    events = feed_all(RequestParser(), raw[:split], raw[split:])
    head = events[0]
    assert isinstance(head, RequestHead)
    assert head.method == oracle_head.method == method
    assert head.target == oracle_head.target == target
    assert head.version == b"1.1"
    assert head.headers == list(oracle_head.headers)
    assert head.headers == [(n.lower(), v) for n, v in all_headers]
    got_body = b"".join(e for e in events if isinstance(e, bytes))
    assert got_body == oracle_body == body
    assert events[-1] == END_OF_MESSAGE


def h11_response(method: bytes, raw: bytes) -> tuple[object, bytes]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    head = conn.next_event()
    body = b""
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            return head, body
        elif ev is h11.NEED_DATA:
            conn.receive_data(b"")
        else:
            raise AssertionError(f"h11 did not finish: {ev!r}")


@settings(max_examples=200, deadline=None)
@given(
    status=st.integers(min_value=200, max_value=599).filter(lambda s: s not in (204, 304)),
    reason=st.sampled_from([None, b"", b"Fine Thanks", b"x\tY"]),
    headers=header_lists,
    body=bodies,
    framing=st.sampled_from(["length", "chunked", "close"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=4),
    split=st.integers(min_value=0, max_value=2000),
)
def test_generated_responses_agree_with_h11(
    status: int,
    reason: bytes | None,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    framing: str,
    cuts: list[int],
    split: int,
) -> None:
    if framing == "close":
        framing_headers, wire = [], body
    else:
        framing_headers, wire = wire_body(body, framing, cuts)
    all_headers = [*headers, *framing_headers]
    raw = response_head(status, reason, all_headers) + wire
    oracle_head, oracle_body = h11_response(b"GET", raw)

    split %= len(raw) + 1
    parser = ResponseParser()
    parser.expect(b"GET")
    events = feed_all(parser, raw[:split], raw[split:])
    if framing == "close":
        events += normalize(parser.feed_eof())
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert head.status == oracle_head.status_code == status
    assert head.reason == oracle_head.reason
    assert head.headers == list(oracle_head.headers)
    assert b"".join(e for e in events if isinstance(e, bytes)) == oracle_body == body
    assert events[-1] == END_OF_MESSAGE


@settings(max_examples=300, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=200),
    byte=st.integers(min_value=0, max_value=255),
    mode=st.sampled_from(["insert", "replace", "delete"]),
)
def test_mutated_requests_only_ever_raise_h1error(position: int, byte: int, mode: str) -> None:
    """Any mutation of a valid pipelined stream is parsed or refused with H1Error; and
    whatever we accept, h11 accepts too (we are the stricter one)."""
    raw = bytearray(TWO)
    position %= len(raw)
    if mode == "insert":
        raw[position:position] = bytes([byte])
    elif mode == "replace":
        raw[position] = byte
    else:
        del raw[position]
    for pieces in ([bytes(raw)], [bytes(raw[:position]), bytes(raw[position:])]):
        try:
            feed_all(RequestParser(), *pieces)
        except H1Error as exc:
            assert exc.status in (400, 413, 414, 431, 501, 505)
            continue
        first_end = bytes(raw).find(b"\r\n\r\n")
        if first_end > 0:
            try:
                conn = h11.Connection(h11.SERVER)
                conn.receive_data(bytes(raw))
                conn.next_event()
            except h11.RemoteProtocolError as exc:  # pragma: no cover - a finding
                pytest.fail(f"accepted what h11 refuses: {bytes(raw)!r}: {exc}")

"""PROXY protocol v1/v2 codec: spec vectors, incremental feeding, malformed input, fuzzing."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferryman.net.addr import parse_address
from ferryman.protocol.proxy_protocol import (
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_NOOP,
    V1_MAX_SIZE,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    build,
    build_v1,
    build_v2,
    parse,
)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
FFFF6 = ":".join(["ffff"] * 8)  # 39 characters, the longest TCP6 address text
PAYLOAD = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return SIG + bytes([ver_cmd, fam]) + size.to_bytes(2, "big") + body


def assert_incremental(wire: bytes) -> ProxyHeader:
    """Every strict prefix asks for more; the whole header parses; payload is left alone."""
    for i in range(len(wire)):
        assert parse(wire[:i]) == (None, 0), f"prefix of {i} bytes"
    header, consumed = parse(wire + PAYLOAD)
    assert header is not None
    assert consumed == len(wire)
    assert parse(wire) == (header, len(wire))
    assert parse(bytearray(wire + PAYLOAD)) == (header, len(wire))
    assert parse(memoryview(wire + PAYLOAD)) == (header, len(wire))
    return header


# ----------------------------------------------------------------- spec vectors, v1


def test_v1_spec_example_tcp4() -> None:
    wire = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    header = assert_incremental(wire)
    assert header == ProxyHeader(
        1, "PROXY", socket.AF_INET, ("192.168.0.1", 56324), ("192.168.0.11", 443), "TCP"
    )
    assert not header.is_local


def test_v1_worst_case_tcp6() -> None:
    wire = f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode()
    assert len(wire) == 104
    header = assert_incremental(wire)
    assert header.family == socket.AF_INET6
    assert header.src == (FFFF6, 65535)
    assert header.dst == (FFFF6, 65535)


def test_v1_tcp6_is_canonicalised() -> None:
    header, _ = parse(b"PROXY TCP6 2001:DB8:0:0::1 ::FFFF:10.0.0.1 0 1\r\n")
    assert header is not None
    assert header.src == ("2001:db8::1", 0)
    assert header.dst == ("::ffff:10.0.0.1", 1)


def test_v1_unknown_short_and_worst_case() -> None:
    header = assert_incremental(b"PROXY UNKNOWN\r\n")
    assert header == ProxyHeader(1, "LOCAL", socket.AF_UNSPEC, None, None, "")
    assert header.is_local
    longest = f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode()
    assert len(longest) == V1_MAX_SIZE
    assert assert_incremental(longest) == header


def test_v1_line_of_exactly_107_bytes_with_addresses_is_accepted() -> None:
    # An UNKNOWN line may carry anything; pad it to the limit exactly.
    line = b"PROXY UNKNOWN " + b"x" * (V1_MAX_SIZE - 16) + b"\r\n"
    assert len(line) == V1_MAX_SIZE
    assert parse(line + b"more")[1] == V1_MAX_SIZE
    assert parse(line[:-1]) == (None, 0)  # CR as byte 107 still awaits the LF


# ----------------------------------------------------------------- spec vectors, v2

V2_TCP4 = (
    SIG
    + b"\x21\x11\x00\x0c"
    + b"\x7f\x00\x00\x01"  # 127.0.0.1
    + b"\x7f\x00\x00\x02"  # 127.0.0.2
    + b"\x30\x39"  # 12345
    + b"\x00\x50"  # 80
)


def test_v2_signature_constant() -> None:
    assert V2_SIGNATURE == b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"


def test_v2_tcp4_vector() -> None:
    header = assert_incremental(V2_TCP4)
    assert header == ProxyHeader(
        2, "PROXY", socket.AF_INET, ("127.0.0.1", 12345), ("127.0.0.2", 80), "TCP"
    )
    assert build_v2(("127.0.0.1", 12345), ("127.0.0.2", 80)) == V2_TCP4


def test_v2_udp6_vector() -> None:
    src = ipaddress.IPv6Address("2001:db8::1").packed
    dst = ipaddress.IPv6Address("::1").packed
    wire = v2(0x21, 0x22, src + dst + b"\x01\xbb\xff\xff")
    header = assert_incremental(wire)
    assert header == ProxyHeader(
        2, "PROXY", socket.AF_INET6, ("2001:db8::1", 443), ("::1", 65535), "UDP"
    )
    assert build_v2(("2001:db8::1", 443), ("::1", 65535), protocol="UDP") == wire


def test_v2_unix_stream_vector() -> None:
    body = b"/run/a.sock".ljust(108, b"\x00") + b"/run/b.sock".ljust(108, b"\x00")
    wire = v2(0x21, 0x31, body)
    header = assert_incremental(wire)
    assert header == ProxyHeader(2, "PROXY", socket.AF_UNIX, "/run/a.sock", "/run/b.sock", "TCP")
    assert build_v2("/run/a.sock", "/run/b.sock") == wire


def test_v2_unix_full_108_byte_path_and_abstract_name() -> None:
    full = b"/" + b"p" * 107
    body = full + b"\x00abstract".ljust(108, b"\x00")
    header, _ = parse(v2(0x21, 0x32, body))
    assert header is not None
    assert header.src == os.fsdecode(full)
    assert header.dst == "\x00abstract"
    assert header.protocol == "UDP"


def test_v2_local_vector() -> None:
    wire = SIG + b"\x20\x00\x00\x00"
    header = assert_incremental(wire)
    assert header == ProxyHeader(2, "LOCAL", socket.AF_UNSPEC, None, None, "")
    assert header.is_local
    assert build_v2(None, None) == wire
    assert build_v2(("1.2.3.4", 1), ("5.6.7.8", 2), command="LOCAL") == wire


def test_v2_local_ignores_any_address_block() -> None:
    # "Receivers MUST always consider this field to skip the appropriate number of
    # bytes and must not assume zero is presented for LOCAL connections."
    wire = v2(0x20, 0x11, V2_TCP4[16:])
    assert parse(wire + PAYLOAD) == (
        ProxyHeader(2, "LOCAL", socket.AF_UNSPEC, None, None, ""),
        len(wire),
    )
    # A LOCAL header whose family promises an address it does not carry is still LOCAL.
    short = v2(0x20, 0x11, b"\x00" * 5)
    assert parse(short) == (ProxyHeader(2, "LOCAL", socket.AF_UNSPEC, None, None, ""), 21)


def test_v2_local_with_tlvs() -> None:
    wire = build_v2(None, None, tlvs=[(PP2_TYPE_AUTHORITY, b"example.com")])
    assert wire == SIG + b"\x20\x00\x00\x0e" + b"\x02\x00\x0bexample.com"
    header = assert_incremental(wire)
    assert header.command == "LOCAL"
    assert header.tlvs == ((PP2_TYPE_AUTHORITY, b"example.com"),)


def test_v2_proxy_unspec_is_local() -> None:
    header, consumed = parse(v2(0x21, 0x00, b""))
    assert header is not None and consumed == 16
    assert header.command == "PROXY"
    assert header.family == socket.AF_UNSPEC
    assert header.is_local


def test_v2_tlvs_are_parsed_in_order() -> None:
    tlvs = ((PP2_TYPE_ALPN, b"h2"), (PP2_TYPE_NOOP, b""), (0xE0, b"\x00" * 300))
    wire = build_v2(("10.0.0.1", 1000), ("10.0.0.2", 2000), tlvs=tlvs)
    header = assert_incremental(wire)
    assert header.tlvs == tlvs
    assert header.tlv(PP2_TYPE_ALPN) == b"h2"
    assert header.tlv(PP2_TYPE_AUTHORITY) is None


def test_v2_largest_header_with_raised_limit() -> None:
    addr = V2_TCP4[16:]
    tlv = bytes([PP2_TYPE_NOOP]) + (65535 - 12 - 3).to_bytes(2, "big") + b"\x00" * (65535 - 15)
    wire = v2(0x21, 0x11, addr + tlv)
    assert len(wire) == 16 + 65535
    header, consumed = parse(wire + b"x", max_v2_size=16 + 65535)
    assert header is not None and consumed == len(wire)
    with pytest.raises(ProxyProtocolError, match="exceeds the 4096-byte limit"):
        parse(wire)


# -------------------------------------------------------------------------- builders


def test_build_v1_tcp4_and_tcp6() -> None:
    assert (
        build_v1(("192.168.0.1", 56324), ("192.168.0.11", 443))
        == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )
    assert build_v1(("::1", 1), ("2001:DB8::2", 2)) == b"PROXY TCP6 ::1 2001:db8::2 1 2\r\n"


def test_build_v1_mixed_families_map_v4_into_v6() -> None:
    wire = build_v1(("10.1.2.3", 5000), ("2001:db8::1", 80))
    assert wire == b"PROXY TCP6 ::ffff:10.1.2.3 2001:db8::1 5000 80\r\n"
    header, _ = parse(wire)
    assert header is not None and header.src == ("::ffff:10.1.2.3", 5000)
    wire2 = build_v2(("2001:db8::1", 80), ("10.1.2.3", 5000))
    header2, _ = parse(wire2)
    assert header2 is not None
    assert header2.family == socket.AF_INET6
    assert header2.dst == ("::ffff:10.1.2.3", 5000)


@pytest.mark.parametrize(
    "src,dst",
    [
        (None, None),
        (("1.2.3.4", 1), None),
        (("example.com", 80), ("1.2.3.4", 80)),
        ("/run/a.sock", "/run/b.sock"),
        ("/run/a.sock", ("1.2.3.4", 80)),
    ],
)
def test_build_v1_unknown_when_no_ip_pair(src: object, dst: object) -> None:
    assert build_v1(src, dst) == b"PROXY UNKNOWN\r\n"


@pytest.mark.parametrize(
    "src,dst",
    [(None, ("1.2.3.4", 1)), (("example.com", 80), ("1.2.3.4", 80)), ("/a", ("1.2.3.4", 80))],
)
def test_build_v2_local_when_no_address_pair(src: object, dst: object) -> None:
    assert build_v2(src, dst) == SIG + b"\x20\x00\x00\x00"


def test_build_accepts_socket_tuples_and_address_objects() -> None:
    # getpeername() on AF_INET6 gives a 4-tuple; a scope id cannot travel in the header.
    wire = build_v1(("fe80::1%eth0", 5, 0, 2), ("fe80::2", 6, 0, 0))
    assert wire == b"PROXY TCP6 fe80::1 fe80::2 5 6\r\n"
    src, dst = parse_address("10.0.0.1:8080"), parse_address("[::1]:443")
    header, _ = parse(build_v2(src, dst))
    assert header is not None and header.dst == ("::1", 443)
    unix_header, _ = parse(build_v2(parse_address("unix:/a"), parse_address("unix:/b")))
    assert unix_header is not None and (unix_header.src, unix_header.dst) == ("/a", "/b")


def test_build_dispatch() -> None:
    pair = (("1.2.3.4", 1), ("5.6.7.8", 2))
    assert build(1, *pair) == build_v1(*pair)
    assert build(2, *pair, protocol="UDP") == build_v2(*pair, protocol="UDP")
    with pytest.raises(ProxyProtocolError, match="unsupported PROXY protocol version 3"):
        build(3, *pair)


PAIR = (("1.2.3.4", 1), ("1.2.3.4", 2))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: build_v1(("1.2.3.4", 70000), ("1.2.3.4", 1)), "invalid source port 70000"),
        (lambda: build_v2(("1.2.3.4", 1), ("1.2.3.4", -1)), "invalid destination port -1"),
        (lambda: build_v1(("1.2.3.4", "80"), ("1.2.3.4", 1)), "invalid source port '80'"),
        (lambda: build_v2(*PAIR, command="X"), "unsupported v2 command"),
        (lambda: build_v2(*PAIR, protocol="SCTP"), "unsupported v2 protocol"),
        (lambda: build_v2("/" + "a" * 108, "/b"), "source unix path of 109 bytes exceeds 108"),
        (lambda: build_v2(None, None, tlvs=[(256, b"")]), "TLV type 256 out of range"),
        (lambda: build_v2(None, None, tlvs=[(1, b"x" * 65536)]), "too long"),
        (
            lambda: build_v2(None, None, tlvs=[(1, b"x" * 40000), (2, b"y" * 40000)]),
            "exceeds 65535",
        ),
        (lambda: build_v1(42, None), "unsupported source endpoint 42"),
    ],
)
def test_build_rejects_bad_input(call: Callable[[], bytes], message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        call()


# ----------------------------------------------------------------- malformed inputs

MALFORMED: list[tuple[bytes, str]] = [
    # wrong first bytes: fail fast
    (b"G", "not a PROXY protocol header"),
    (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
    (b"\x16\x03\x01", "not a PROXY protocol header"),
    (b"PR", ""),  # still a valid prefix: checked separately below
    (b"PRI * HTTP/2.0", "bad v1 signature"),
    (b"PUT", "bad v1 signature"),
    (b"PROXY\t", "bad v1 signature"),
    (b"\r\n\r\nX", "bad v2 signature"),
    (b"\r\r", "bad v2 signature"),
    # v1 grammar
    (b"PROXY TCP5", "bad v1 protocol"),
    (b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", "bad v1 protocol"),
    (b"PROXY  TCP4", "bad v1 protocol"),
    (b"PROXY UNKNOWNX\r\n", "bad v1 protocol"),
    (b"PROXY \r\n", "bad v1 protocol"),
    (b"PROXY TCP4\r\n", "needs 4 fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "needs 4 fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3", "too many fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "too many fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", "invalid destination port: empty"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "bare CR"),
    (b"PROXY UNKNOWN \x00", "non-printable"),
    (b"PROXY UNKNOWN " + b"x" * 93, "v1 header exceeds 107 bytes"),
    (b"PROXY UNKNOWN " + b"x" * 92 + b"\r", "v1 header exceeds 107 bytes"),
    # ports
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 1\r\n", "invalid source port 70000"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 7000", ""),  # prefix of a valid port: checked below
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 70000", "invalid source port 70000"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "invalid destination port 65536"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 0443 1\r\n", "invalid source port 0443: leading zero"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 00", "leading zero"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 1\r\n", "invalid source port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 1\r\n", "invalid source port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8  1\r\n", "invalid source port: empty"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 0x10\r\n", "invalid destination port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 123456", "invalid source port"),
    # addresses
    (b"PROXY TCP4 256.1.1.1 5.6.7.8 1 2\r\n", "invalid source address '256.1.1.1' for TCP4"),
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "invalid source address"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "invalid source address"),
    (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "invalid destination address b'::1' for TCP4"),
    (b"PROXY TCP4 1.2.3.4 ::", "invalid destination address"),
    (b"PROXY TCP4 1.2.3.4.5.6.7.8.9", "invalid source address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "invalid source address '1.2.3.4' for TCP6"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "invalid source address"),
    (b"PROXY TCP6 ::1 ::g", "invalid destination address"),
    (b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "invalid source address"),
    (b"PROXY TCP4  5.6.7.8 1 2\r\n", "invalid source address"),
    # v2 fixed part
    (SIG + b"\x11", "unsupported v2 version 1"),
    (SIG + b"\x31", "unsupported v2 version 3"),
    (SIG + b"\x22", "unsupported v2 command 2"),
    (SIG + b"\x2f", "unsupported v2 command 15"),
    (SIG + b"\x21\x13", "unsupported v2 family/transport byte 0x13"),
    (SIG + b"\x21\x40", "unsupported v2 family/transport byte 0x40"),
    (SIG + b"\x21\x10", "unsupported v2 family/transport byte 0x10"),
    (SIG + b"\x20\x01", "unsupported v2 family/transport byte 0x01"),
    (SIG + b"\x21\x11\x10\x00", "v2 header of 4112 bytes exceeds the 4096-byte limit"),
    # v2 address block and TLVs (rejected from the length field, before the body)
    (SIG + b"\x21\x11\x00\x0b", "v2 address block too short for AF_INET (11 < 12 bytes)"),
    (SIG + b"\x21\x21\x00\x23", "v2 address block too short for AF_INET6 (35 < 36 bytes)"),
    (SIG + b"\x21\x32\x00\xd7", "v2 address block too short for AF_UNIX (215 < 216 bytes)"),
    (v2(0x21, 0x11, V2_TCP4[16:] + b"\x01\x00\x05abcd"), "v2 TLV 0x01 of 5 bytes overruns"),
    (v2(0x21, 0x11, V2_TCP4[16:] + b"\x01\xff"), "v2 TLV header truncated at offset 28"),
    (v2(0x21, 0x00, b"\x04\x00\x00\x01"), "v2 TLV header truncated at offset 19"),
    (v2(0x20, 0x00, b"\x04\x00\x02\x00"), "v2 TLV 0x04 of 2 bytes overruns the header by 1"),
]


@pytest.mark.parametrize("data,message", [m for m in MALFORMED if m[1]])
def test_malformed_input_is_rejected(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=re.escape(message)):
        parse(data)
    # Whatever follows cannot repair it.
    with pytest.raises(ProxyProtocolError, match=re.escape(message)):
        parse(data + b"\r\n" + PAYLOAD)


@pytest.mark.parametrize(
    "data",
    [m[0] for m in MALFORMED if not m[1]]
    + [b"P", b"\r", SIG[:5], SIG, b"PROXY TCP6 ::ffff:1.2.3.4", b"PROXY UNKNOWN anything"],
)
def test_valid_prefixes_wait_for_more(data: bytes) -> None:
    assert parse(data) == (None, 0)


def test_fail_fast_on_plain_http_first_byte() -> None:
    for first in b"GHDOCTPU":
        data = bytes([first])
        if first == ord("P"):
            assert parse(data) == (None, 0)
            with pytest.raises(ProxyProtocolError, match="bad v1 signature"):
                parse(b"PO")  # POST
        else:
            with pytest.raises(ProxyProtocolError, match="not a PROXY protocol header"):
                parse(data)


def test_v1_line_of_108_bytes_is_rejected() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (V1_MAX_SIZE - 15) + b"\r\n"
    assert len(line) == V1_MAX_SIZE + 1
    assert parse(line[:106]) == (None, 0)
    with pytest.raises(ProxyProtocolError, match="v1 header exceeds 107 bytes"):
        parse(line)


def test_allow_flags_and_custom_v2_limit() -> None:
    v1 = b"PROXY UNKNOWN\r\n"
    local = SIG + b"\x20\x00\x00\x00"
    with pytest.raises(ProxyProtocolError, match="PROXY v1 header not allowed"):
        parse(v1[:1], allow_v1=False)
    with pytest.raises(ProxyProtocolError, match="PROXY v2 header not allowed"):
        parse(local[:1], allow_v2=False)
    assert parse(v1, allow_v2=False)[1] == len(v1)
    assert parse(local, allow_v1=False)[1] == len(local)
    wire = build_v2(("1.2.3.4", 1), ("5.6.7.8", 2), tlvs=[(0xE1, b"z" * 100)])
    assert parse(wire, max_v2_size=len(wire))[1] == len(wire)
    with pytest.raises(ProxyProtocolError, match=f"exceeds the {len(wire) - 1}-byte limit"):
        parse(wire[:16], max_v2_size=len(wire) - 1)


# ------------------------------------------------------------------------ hypothesis

ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
ip_endpoint = st.tuples(st.one_of(ipv4, ipv6), ports)
unix_path = st.binary(min_size=1, max_size=108).filter(lambda b: b"\x00" not in b)
tlv_list = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=5)


def _expected(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, as_v6: bool) -> str:
    if ip.version == 4 and not as_v6:
        return str(ip)
    v6 = ip if ip.version == 6 else ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed)
    mapped = v6.ipv4_mapped
    return f"::ffff:{mapped}" if mapped is not None else str(v6)


@settings(max_examples=300, deadline=None)
@given(src=ip_endpoint, dst=ip_endpoint, version=st.sampled_from([1, 2]), tail=st.binary())
def test_ip_headers_round_trip(version: int, src: Any, dst: Any, tail: bytes) -> None:
    (sip, sport), (dip, dport) = src, dst
    as_v6 = sip.version == 6 or dip.version == 6
    wire = build(version, (str(sip), sport), (str(dip), dport))
    header, consumed = parse(wire + tail)
    assert consumed == len(wire)
    assert header is not None
    assert header.version == version
    assert header.command == "PROXY"
    assert header.family == (socket.AF_INET6 if as_v6 else socket.AF_INET)
    assert header.src == (_expected(sip, as_v6), sport)
    assert header.dst == (_expected(dip, as_v6), dport)
    assert header.protocol == "TCP"
    # Building again from the decoded header gives the same bytes.
    assert build(version, header.src, header.dst) == wire


@settings(max_examples=200, deadline=None)
@given(
    src=st.one_of(ip_endpoint, unix_path, st.none()),
    dst=st.one_of(ip_endpoint, unix_path, st.none()),
    protocol=st.sampled_from(["TCP", "UDP"]),
    command=st.sampled_from(["PROXY", "LOCAL"]),
    tlvs=tlv_list,
    tail=st.binary(max_size=20),
)
def test_v2_round_trip(
    src: Any, dst: Any, protocol: str, command: str, tlvs: Any, tail: bytes
) -> None:
    def endpoint(e: Any) -> Any:
        if isinstance(e, bytes):
            return os.fsdecode(e)
        if isinstance(e, tuple):
            return (str(e[0]), e[1])
        return e

    s, d = endpoint(src), endpoint(dst)
    wire = build_v2(s, d, command=command, protocol=protocol, tlvs=tlvs)
    header, consumed = parse(wire + tail)
    assert header is not None and consumed == len(wire)
    assert header.tlvs == tuple(tlvs)
    kinds = {type(s), type(d)}
    if command == "LOCAL" or kinds not in ({tuple}, {str}):
        assert header.command == "LOCAL" and header.is_local
        assert (header.family, header.src, header.dst) == (socket.AF_UNSPEC, None, None)
        return
    assert header.command == "PROXY" and not header.is_local
    assert header.protocol == protocol
    if kinds == {str}:
        assert header.family == socket.AF_UNIX
        assert (header.src, header.dst) == (s, d)
    assert build_v2(header.src, header.dst, protocol=protocol, tlvs=header.tlvs) == wire


@settings(max_examples=50, deadline=None)
@given(src=ip_endpoint, dst=ip_endpoint, version=st.sampled_from([1, 2]), tlvs=tlv_list)
def test_incremental_feeding_of_random_headers(version: int, src: Any, dst: Any, tlvs: Any) -> None:
    s, d = (str(src[0]), src[1]), (str(dst[0]), dst[1])
    wire = build_v1(s, d) if version == 1 else build_v2(s, d, tlvs=tlvs)
    assert_incremental(wire)


PREFIXES = [
    b"",
    b"P",
    b"PROXY ",
    b"PROXY TCP4 ",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 ",
    b"PROXY TCP6 ::1 ",
    b"PROXY UNKNOWN",
    SIG,
    SIG + b"\x21",
    SIG + b"\x21\x11",
    SIG + b"\x21\x11\x00",
    SIG + b"\x20\x00\x00",
]


def _outcome(data: bytes, **kw: int) -> tuple[ProxyHeader | None, int] | str:
    try:
        return parse(data, **kw)
    except ProxyProtocolError as exc:
        assert str(exc)
        return "error"


@settings(max_examples=500, deadline=None)
@given(prefix=st.sampled_from(PREFIXES), body=st.binary(max_size=120))
def test_random_bytes_only_raise_proxy_protocol_error(prefix: bytes, body: bytes) -> None:
    data = prefix + body
    outcome = _outcome(data)
    if isinstance(outcome, tuple) and outcome[0] is not None:
        assert 0 < outcome[1] <= len(data)
    # Monotonic: a prefix never errs where the whole is fine, and a complete header is
    # reported the same way whatever follows it.
    seen_error = False
    for i in range(len(data) + 1):
        result = _outcome(data[:i])
        if seen_error:
            assert result == "error", f"prefix {data[:i]!r} recovered from an error"
        elif result == "error":
            seen_error = True
        elif result[0] is not None:
            assert result == outcome
            break
        else:
            assert result == (None, 0)


@settings(max_examples=300, deadline=None)
@given(
    src=ip_endpoint,
    dst=ip_endpoint,
    version=st.sampled_from([1, 2]),
    index=st.integers(0, 200),
    value=st.integers(0, 255),
)
def test_mutated_headers_only_raise_proxy_protocol_error(
    version: int, src: Any, dst: Any, index: int, value: int
) -> None:
    wire = bytearray(build(version, (str(src[0]), src[1]), (str(dst[0]), dst[1])))
    wire[index % len(wire)] = value
    outcome = _outcome(bytes(wire) + PAYLOAD, max_v2_size=70000)
    if isinstance(outcome, tuple) and outcome[0] is not None:
        assert outcome[0].version == version

"""DNS message codec: known-good packets, real-world shaped answers, malformed input, fuzzing."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferryman.protocol import dns
from ferryman.protocol.dns import (
    CLASS_IN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    DnsError,
    Message,
    Question,
    Record,
    answer_addresses,
    decode_message,
    encode_message,
    encode_name,
    encode_query,
    is_answer_to,
    read_name,
)

H = bytes.fromhex


def header(qid: int, flags: int, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


EXAMPLE_COM = H("07 6578616d706c65 03 636f6d 00")  # example.com
Q_A = EXAMPLE_COM + H("0001 0001")


# --- encoding -----------------------------------------------------------------------------------

def test_query_bytes_match_a_known_good_packet() -> None:
    # what `dig +noedns example.com A` sends with id 0x1234: RD set, one question, class IN
    assert encode_query(0x1234, "example.com", TYPE_A) == H("1234 0100 0001 0000 0000 0000") + Q_A


def test_query_for_aaaa_with_trailing_dot_and_no_recursion() -> None:
    packet = encode_query(0xBEEF, "Example.COM.", TYPE_AAAA, recursion_desired=False)
    assert packet == H("beef 0000 0001 0000 0000 0000") + H("07 4578616d706c65 03 434f4d 00 001c 0001")


def test_name_encoding_limits() -> None:
    assert encode_name("") == b"\0" and encode_name(".") == b"\0"
    assert encode_name("a" * 63 + ".b") == bytes([63]) + b"a" * 63 + b"\x01b\x00"
    with pytest.raises(DnsError, match="is 64 bytes, over 63"):
        encode_name("a" * 64 + ".b")
    with pytest.raises(DnsError, match="has an empty label"):
        encode_name("a..b")
    with pytest.raises(DnsError, match="over 255"):
        encode_name(".".join(["a" * 60] * 5))
    assert encode_name("bücher.example") == b"\x0dxn--bcher-kva\x07example\x00"
    with pytest.raises(DnsError, match="not a 16-bit value"):
        encode_query(70000, "a", TYPE_A)


# --- decoding real-world shaped answers ---------------------------------------------------------

def test_decode_a_answer_with_compressed_owner_name() -> None:
    packet = (
        header(0x1234, 0x8180, an=2)
        + Q_A
        + H("c00c 0001 0001 00000e10 0004 5db8d822")  # example.com A 93.184.216.34, TTL 3600
        + H("c00c 0001 0001 0000012c 0004 0a000001")  # example.com A 10.0.0.1, TTL 300
    )
    message = decode_message(packet)
    assert message.id == 0x1234 and message.is_response and not message.truncated and message.rcode == dns.NOERROR
    assert message.questions == (Question("example.com", TYPE_A),)
    assert message.answers == (
        Record("example.com", TYPE_A, "93.184.216.34", 3600),
        Record("example.com", TYPE_A, "10.0.0.1", 300),
    )
    assert is_answer_to(message, 0x1234, "EXAMPLE.com.", TYPE_A)
    answer = answer_addresses(message, "example.com", TYPE_A)
    assert answer.addresses == ("93.184.216.34", "10.0.0.1") and answer.ttl == 300


def test_decode_aaaa_answer_with_edns_opt_record() -> None:
    packet = (
        header(7, 0x8180, an=1, ar=1)
        + EXAMPLE_COM + H("001c 0001")
        + H("c00c 001c 0001 00000e10 0010 26062800022000010248189325c81946")
        + H("00 0029 04d0 00000000 0000")  # OPT: root name, UDP size 1232, no options
    )
    message = decode_message(packet)
    assert message.answers[0].data == "2606:2800:220:1:248:1893:25c8:1946"
    assert message.additionals == (Record("", dns.TYPE_OPT, b"", 0, 1232),)
    assert answer_addresses(message, "example.com", TYPE_AAAA).addresses == ("2606:2800:220:1:248:1893:25c8:1946",)


def test_cname_chain_is_followed_with_compression_into_the_middle_of_names() -> None:
    # www.example.com → edge.cdn.example.net → edge2.cdn.example.net → A 192.0.2.7 / 192.0.2.8
    question = H("03 777777") + EXAMPLE_COM + H("0001 0001")  # offset 12: www, 16: example.com
    first = H("c00c 0005 0001 00000258 0016") + H("04 65646765 03 63646e 07 6578616d706c65 03 6e6574 00")
    # that CNAME's rdata starts at 12 + len(question) + 12; its "cdn.example.net" 5 bytes later
    rdata_at = 12 + len(question) + 12
    second = H(f"c0{rdata_at:02x} 0005 0001 0000003c 0008") + H("05 6564676532") + H(f"c0{rdata_at + 5:02x}")
    second_rdata_at = rdata_at + len(first) - 12 + 12
    a1 = H(f"c0{second_rdata_at:02x} 0001 0001 0000001e 0004 c0000207")
    a2 = H(f"c0{second_rdata_at:02x} 0001 0001 00000078 0004 c0000208")
    message = decode_message(header(1, 0x8180, an=4) + question + first + second + a1 + a2)
    assert [r.data for r in message.answers] == ["edge.cdn.example.net", "edge2.cdn.example.net", "192.0.2.7", "192.0.2.8"]
    answer = answer_addresses(message, "WWW.example.com", TYPE_A)
    assert answer.addresses == ("192.0.2.7", "192.0.2.8")
    assert answer.ttl == 30  # the smallest TTL along the chain and the records used
    assert answer.chain == ("www.example.com", "edge.cdn.example.net", "edge2.cdn.example.net")
    # a chain whose end the server did not resolve: no addresses, no TTL
    cut = decode_message(header(1, 0x8180, an=1) + question + first)
    assert answer_addresses(cut, "www.example.com", TYPE_A).addresses == ()


def test_cname_loop_in_the_answer_is_an_error() -> None:
    message = Message(1, 0x8180, (Question("a.test", TYPE_A),), (
        Record("a.test", TYPE_CNAME, "b.test", 60), Record("b.test", TYPE_CNAME, "a.test", 60),
    ))
    with pytest.raises(DnsError, match="CNAME loop: a.test → b.test → a.test"):
        answer_addresses(decode_message(encode_message(message)), "a.test", TYPE_A)


def test_nxdomain_with_soa_in_authority() -> None:
    soa = H("c014 0006 0001 00000384 0016") + H("00 00 00000001 00001c20 00000e10 00093a80 0000012c")
    packet = header(0x4242, 0x8183, ns=1) + H("07 6e6f7468657265") + EXAMPLE_COM + H("0001 0001") + soa
    message = decode_message(packet)
    assert message.rcode == dns.NXDOMAIN and dns.rcode_name(message.rcode) == "NXDOMAIN"
    assert message.answers == () and message.authorities[0].rtype == 6 and message.authorities[0].name == "example.com"
    assert is_answer_to(message, 0x4242, "nothere.example.com", TYPE_A)


def test_truncated_bit() -> None:
    message = decode_message(header(9, 0x8380) + Q_A)
    assert message.truncated and message.rcode == dns.NOERROR and message.answers == ()


def test_is_answer_to_checks_id_direction_and_question() -> None:
    answer = decode_message(header(5, 0x8180) + Q_A)
    assert is_answer_to(answer, 5, "example.com", TYPE_A)
    assert not is_answer_to(answer, 6, "example.com", TYPE_A)  # another id
    assert not is_answer_to(answer, 5, "example.org", TYPE_A)  # another name
    assert not is_answer_to(answer, 5, "example.com", TYPE_AAAA)  # another type
    assert not is_answer_to(decode_message(header(5, 0x0100) + Q_A), 5, "example.com", TYPE_A)  # a query
    refused = decode_message(header(5, 0x8185, qd=0))  # REFUSED without the question
    assert is_answer_to(refused, 5, "example.com", TYPE_A)
    assert not is_answer_to(decode_message(header(5, 0x8180, qd=0)), 5, "example.com", TYPE_A)


def test_records_for_other_names_or_classes_are_not_used() -> None:
    message = Message(1, 0x8180, (Question("a.test", TYPE_A),), (
        Record("other.test", TYPE_A, "192.0.2.1", 60),
        Record("a.test", TYPE_A, b"\xc0\x00\x02\x02", 60, rclass=3),  # CHAOS class: raw rdata
        Record("A.TEST", TYPE_A, "192.0.2.3", 60),
    ))
    decoded = decode_message(encode_message(message))
    assert decoded.answers[1].data == b"\xc0\x00\x02\x02"
    assert answer_addresses(decoded, "a.test", TYPE_A).addresses == ("192.0.2.3",)


# --- malformed input: precise errors ------------------------------------------------------------

@pytest.mark.parametrize(
    ("packet", "error"),
    [
        (b"", "message is 0 bytes, shorter than the 12-byte header"),
        (H("1234 8180 0001"), "message is 6 bytes, shorter than the 12-byte header"),
        (header(1, 0x8180), "question 1: name at offset 12 runs past the end of the message"),
        (header(1, 0x8180) + H("07 6578616d"), r"label at offset 12 \(7 bytes\) runs past the end \(4 left\)"),
        (header(1, 0x8180) + EXAMPLE_COM + H("00"), "question 1 at offset 25: type and class cut off"),
        (header(1, 0x8180) + H("c00c 0001 0001"), "compression pointer at offset 12 points to 12, not before 12"),
        (header(1, 0x8180) + H("c0"), "compression pointer at offset 12 is cut off"),
        (header(1, 0x8180) + H("41 00 0001 0001"), "label type 0x40 at offset 12 is not supported"),
        (header(1, 0x8180, an=1) + Q_A + H("c00c 0001"), r"answer record 1 at offset 29: fixed fields cut off \(2 of 10 bytes\)"),
        (header(1, 0x8180, an=1) + Q_A + H("c00c 0001 0001 00000001 0004 0a00"), r"rdata of 4 bytes runs past the end \(2 left\)"),
        (header(1, 0x8180, an=1) + Q_A + H("c00c 0001 0001 00000001 0005 0a00000100"), "A rdata is 5 bytes, expected 4"),
        (header(1, 0x8180, an=1) + Q_A + H("c00c 001c 0001 00000001 0004 0a000001"), "AAAA rdata is 4 bytes, expected 16"),
        (header(1, 0x8180, ns=2) + Q_A + H("c00c 0001 0001 00000001 0004 0a000001"), "authority record 2 at offset 45: name at offset 45 runs past the end of the message"),
        (header(1, 0x8180, an=1) + Q_A + H("c00c 0005 0001 00000001 0002 0161"), "name at offset 41 runs past the end of the rdata"),
        (header(1, 0x8180, an=1) + Q_A + H("c00c 0005 0001 00000001 0003 00 0000"), "CNAME name ends at 42, rdata ends at 44"),
        (header(1, 0x8180) + (H("3f") + b"a" * 63) * 4 + H("00 0001 0001"), "name at offset 12 is over 255 bytes"),
    ],
    ids=lambda value: value.split(":")[0][:32].replace(" ", "-") if isinstance(value, str) else "packet",
)
def test_malformed_packets_raise_precise_errors(packet: bytes, error: str) -> None:
    with pytest.raises(DnsError, match=error):
        decode_message(packet)


def test_compression_loop_between_two_pointers_is_an_error() -> None:
    # answer owner at 29 points back to 33, which points forward to 29: each jump must go backwards
    packet = header(1, 0x8180, an=1) + Q_A + H("c021") + H("c01d")
    with pytest.raises(DnsError, match="points to 33, not before 29"):
        decode_message(packet)
    with pytest.raises(DnsError, match="compression pointer at offset 12 points to 12"):
        read_name(H("0000 0000 0000 0000 0000 0000 c00c"), 12)


def test_a_ttl_with_the_top_bit_set_counts_as_zero() -> None:
    message = decode_message(header(1, 0x8180, an=1) + Q_A + H("c00c 0001 0001 80000000 0004 0a000001"))
    assert message.answers[0].ttl == 0


# --- round trips and fuzzing --------------------------------------------------------------------

label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
names = st.lists(label, min_size=1, max_size=5).map(".".join)
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
records = st.one_of(
    st.builds(Record, names, st.just(TYPE_A), ipv4, st.integers(0, 2**31 - 1)),
    st.builds(Record, names, st.just(TYPE_AAAA), ipv6, st.integers(0, 2**31 - 1)),
    st.builds(Record, names, st.just(TYPE_CNAME), names, st.integers(0, 2**31 - 1)),
    st.builds(Record, names, st.just(16), st.binary(max_size=40), st.integers(0, 2**31 - 1)),
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.lists(st.builds(Question, names, st.sampled_from([TYPE_A, TYPE_AAAA]), st.just(CLASS_IN)), max_size=2),
    st.lists(records, max_size=4), st.lists(records, max_size=2), st.lists(records, max_size=2),
)
def test_encode_then_decode_round_trips(qid, flags, questions, answers, authorities, additionals) -> None:
    message = Message(qid, flags, tuple(questions), tuple(answers), tuple(authorities), tuple(additionals))
    assert decode_message(encode_message(message)) == message


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_dns_error_or_decodes(data: bytes) -> None:
    try:
        decode_message(data)
    except DnsError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=12, max_size=120), st.integers(0, 119))
def test_corrupted_real_packet_never_hangs_or_raises_anything_else(noise: bytes, at: int) -> None:
    packet = bytearray(header(1, 0x8180, an=2) + Q_A + H("c00c 0001 0001 00000e10 0004 5db8d822") * 2)
    at %= len(packet)
    packet[at : at + 4] = noise[:4]
    try:
        decode_message(bytes(packet))
    except DnsError:
        pass

"""ClientHello peeking: real hellos from Python's ssl module (TLS 1.2/1.3, SNI, ALPN),
split across reads and records, and truncated, garbage, malformed and oversized input."""

from __future__ import annotations

import os
import ssl
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferryman.protocol.tls_hello import (
    MAX_HELLO,
    MAX_RECORDS,
    NEED_MORE,
    ClientHello,
    NotTlsError,
    TlsHelloError,
    parse_client_hello,
)

TLS12, TLS13 = 0x0303, 0x0304


def real_hello(sni: str | None, alpn: list[str] | None = None, *, max_version: ssl.TLSVersion | None = None, legacy: bool = False) -> bytes:
    """The first flight of a real client: the bytes ``SSLObject.do_handshake()`` writes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if legacy:  # allow TLS 1.0/1.1
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if max_version is not None:
        ctx.maximum_version = max_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def handshake_of(wire: bytes) -> bytes:
    """The handshake bytes carried by ``wire``'s records (reassembled)."""
    out, pos = b"", 0
    while pos < len(wire):
        length = int.from_bytes(wire[pos + 3 : pos + 5], "big")
        out += wire[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return out


def records(handshake: bytes, sizes: list[int], version: bytes = b"\x03\x01") -> bytes:
    """Frame ``handshake`` into records of these fragment sizes (the last takes the rest)."""
    out, pos = b"", 0
    for size in [*sizes, len(handshake)]:
        part = handshake[pos : pos + size]
        if not part:
            break
        out += b"\x16" + version + len(part).to_bytes(2, "big") + part
        pos += len(part)
    return out


def ext(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + len(n).to_bytes(2, "big") + n for n in names)
    return ext(0, len(entries).to_bytes(2, "big") + entries)


def alpn_ext(*protocols: bytes) -> bytes:
    entries = b"".join(bytes([len(p)]) + p for p in protocols)
    return ext(16, len(entries).to_bytes(2, "big") + entries)


def synthetic(extensions: bytes | None = b"", *, suites: bytes = b"\x13\x01", session_id: bytes = b"", legacy: bytes = b"\x03\x03", compression: bytes = b"\x00") -> bytes:
    """A hand-built ClientHello (one record); ``extensions=None`` leaves the block out."""
    body = legacy + bytes(range(32)) + bytes([len(session_id)]) + session_id
    body += len(suites).to_bytes(2, "big") + suites + bytes([len(compression)]) + compression
    if extensions is not None:
        body += len(extensions).to_bytes(2, "big") + extensions
    return records(b"\x01" + len(body).to_bytes(3, "big") + body, [])


# real hellos ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sni", ["a.test", "example.com", "Mixed.Case.Example.ORG", "xn--bcher-kva.example", "x" * 63 + ".y"])
def test_sni_of_real_tls13_hellos(sni: str) -> None:
    wire = real_hello(sni)
    hello = parse_client_hello(wire)
    assert isinstance(hello, ClientHello)
    assert hello.server_name == sni.lower()
    assert hello.alpn == ()
    assert hello.offers_tls13 and TLS12 in hello.versions
    assert hello.wire_length == len(wire)


def test_alpn_of_real_hello_in_client_order() -> None:
    hello = parse_client_hello(real_hello("h.test", ["h2", "http/1.1"]))
    assert hello == ClientHello("h.test", ("h2", "http/1.1"), hello.versions, hello.wire_length)
    assert parse_client_hello(real_hello("h.test", ["http/1.1"])).alpn == ("http/1.1",)  # type: ignore[union-attr]


def test_tls12_only_client() -> None:
    hello = parse_client_hello(real_hello("old.test", ["http/1.1"], max_version=ssl.TLSVersion.TLSv1_2))
    assert isinstance(hello, ClientHello)
    assert hello.server_name == "old.test" and hello.alpn == ("http/1.1",)
    assert hello.versions == (TLS12,) and not hello.offers_tls13


@pytest.mark.parametrize("target", [None, "127.0.0.1", "::1"])
def test_no_sni_without_a_host_name(target: str | None) -> None:
    """No name, or an IP address (RFC 6066 forbids IP literals in SNI): server_name None."""
    hello = parse_client_hello(real_hello(target))
    assert isinstance(hello, ClientHello) and hello.server_name is None


def test_tls11_client_hello() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: that is the point
        wire = real_hello("legacy.test", max_version=ssl.TLSVersion.TLSv1_1, legacy=True)
    hello = parse_client_hello(wire)
    assert isinstance(hello, ClientHello) and hello.server_name == "legacy.test"
    assert TLS12 not in hello.versions and not hello.offers_tls13


# incremental reads and records ----------------------------------------------------------------------
def test_every_prefix_needs_more() -> None:
    wire = real_hello("prefix.test", ["h2"])
    for size in range(len(wire)):
        assert parse_client_hello(wire[:size]) is NEED_MORE, size
    assert parse_client_hello(wire).server_name == "prefix.test"  # type: ignore[union-attr]


def test_bytes_after_the_hello_are_ignored() -> None:
    wire = real_hello("trail.test")
    hello = parse_client_hello(wire + b"\x17\x03\x03\x00\x05hello" + os.urandom(100))
    assert isinstance(hello, ClientHello) and hello.server_name == "trail.test"
    assert hello.wire_length == len(wire)


@pytest.mark.parametrize("sizes", [[1, 1, 1, 1], [2], [3, 200], [100, 100, 100], [4]])
def test_hello_split_across_records(sizes: list[int]) -> None:
    """Handshake fragments of any size, the 4-byte message header itself split too."""
    original = real_hello("split.test", ["h2", "http/1.1"])
    wire = records(handshake_of(original), sizes)
    hello = parse_client_hello(wire)
    assert isinstance(hello, ClientHello)
    assert (hello.server_name, hello.alpn) == ("split.test", ("h2", "http/1.1"))
    assert hello.wire_length == len(wire)
    for size in range(len(wire)):
        assert parse_client_hello(wire[:size]) is NEED_MORE


def test_hello_ends_inside_a_longer_record() -> None:
    """The record carrying the end of the hello is longer: complete before it ends."""
    handshake = handshake_of(real_hello("long.test"))
    wire = records(handshake + b"\x00" * 40, [50])
    hello = parse_client_hello(wire[: len(wire) - 40])
    assert isinstance(hello, ClientHello) and hello.server_name == "long.test"
    assert hello.wire_length == len(wire)


HYPO_HELLO = real_hello("hypo.test", ["h2"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=300), max_size=MAX_RECORDS - 1), st.data())
def test_any_framing_and_any_reads_agree(sizes: list[int], data: st.DataObject) -> None:
    wire = records(handshake_of(HYPO_HELLO), sizes)
    cut = data.draw(st.integers(min_value=0, max_value=len(wire) - 1))
    assert parse_client_hello(wire[:cut]) is NEED_MORE
    hello = parse_client_hello(wire)
    assert isinstance(hello, ClientHello) and hello.server_name == "hypo.test" and hello.alpn == ("h2",)
    assert hello.wire_length == len(wire)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_raises_anything_else(data: bytes) -> None:
    try:
        result = parse_client_hello(b"\x16\x03\x01" + data)
    except TlsHelloError:
        return
    assert result is NEED_MORE or isinstance(result, ClientHello)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=5, max_value=len(HYPO_HELLO) - 1), st.integers(min_value=0, max_value=255))
def test_corrupted_real_hello(offset: int, value: int) -> None:
    """One byte of a real hello changed: a result, NEED_MORE or TlsHelloError, nothing else."""
    wire = bytearray(HYPO_HELLO)
    wire[offset] = value
    try:
        result = parse_client_hello(bytes(wire))
    except TlsHelloError:
        return
    assert result is NEED_MORE or isinstance(result, ClientHello)


# not TLS ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GET / HTTP/1.1\r\n", "plain text"),
        (b"G", "plain text"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "plain text"),
        (b"\x80\x2e\x01\x00\x02", "SSLv2"),
        (b"\x16\x02\x00", "not TLS"),
        (b"\x00\x00\x00\x00\x00", "0x00"),
        (b"\x15\x03\x03\x00\x02\x02\x28", "0x15"),  # an alert record first
    ],
)
def test_not_tls(data: bytes, message: str) -> None:
    with pytest.raises(NotTlsError, match=message):
        parse_client_hello(data)


def test_empty_input_needs_more() -> None:
    assert parse_client_hello(b"") is NEED_MORE
    assert parse_client_hello(b"\x16") is NEED_MORE
    assert parse_client_hello(b"\x16\x03\x01\x02") is NEED_MORE


# malformed TLS ----------------------------------------------------------------------------------------
def test_server_hello_first_is_refused() -> None:
    with pytest.raises(TlsHelloError, match="type 2, not ClientHello"):
        parse_client_hello(b"\x16\x03\x03\x00\x30\x02\x00\x00\x2c")


def test_other_record_type_before_the_hello_ended() -> None:
    handshake = handshake_of(real_hello("mix.test"))
    wire = records(handshake[:10], []) + b"\x17\x03\x03\x00\x01x"
    with pytest.raises(TlsHelloError, match="record 2 at byte 15 has content type 23"):
        parse_client_hello(wire)


def test_empty_and_overlong_records() -> None:
    with pytest.raises(TlsHelloError, match="empty handshake fragment"):
        parse_client_hello(b"\x16\x03\x01\x00\x00" + b"\x16\x03\x01\x00\x01\x01")
    with pytest.raises(TlsHelloError, match="16385 bytes long"):
        parse_client_hello(b"\x16\x03\x01\x40\x01\x01")


def test_too_many_records() -> None:
    handshake = handshake_of(real_hello("many.test"))
    assert isinstance(parse_client_hello(records(handshake, [1] * (MAX_RECORDS - 1))), ClientHello)
    with pytest.raises(TlsHelloError, match=f"more than {MAX_RECORDS} records"):
        parse_client_hello(records(handshake, [1] * MAX_RECORDS))


def test_oversized_hello_refused_from_its_header() -> None:
    """The declared length is checked as soon as the 4-byte header is in: no buffering."""
    header = b"\x16\x03\x01\x40\x00" + b"\x01" + (MAX_HELLO - 3).to_bytes(3, "big")
    with pytest.raises(TlsHelloError, match=f"exceeds the {MAX_HELLO}-byte limit"):
        parse_client_hello(header)
    fits = b"\x01" + (MAX_HELLO - 4).to_bytes(3, "big")
    assert parse_client_hello(b"\x16\x03\x01\x40\x00" + fits) is NEED_MORE
    wire = real_hello("big.test")
    with pytest.raises(TlsHelloError, match="exceeds the 100-byte limit"):
        parse_client_hello(wire, max_size=100)


def test_large_hello_within_the_limit() -> None:
    padding = ext(21, b"\x00" * 12000)  # the padding extension
    hello = parse_client_hello(synthetic(sni_ext(b"pad.test") + padding))
    assert isinstance(hello, ClientHello) and hello.server_name == "pad.test"


def test_synthetic_minimal_hellos() -> None:
    assert parse_client_hello(synthetic(None)) == ClientHello(None, (), (TLS12,), len(synthetic(None)))
    hello = parse_client_hello(synthetic(alpn_ext(b"h2") + sni_ext(b"Syn.Test") + ext(43, b"\x04\x03\x04\x03\x03")))
    assert isinstance(hello, ClientHello)
    assert (hello.server_name, hello.alpn, hello.versions) == ("syn.test", ("h2",), (TLS13, TLS12))
    skipped = parse_client_hello(synthetic(sni_ext(b"other", name_type=7)))
    assert isinstance(skipped, ClientHello) and skipped.server_name is None


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (synthetic(sni_ext(b"a.test", b"b.test")), "two host_name entries"),
        (synthetic(sni_ext(b"")), "host_name is empty"),
        (synthetic(sni_ext(b"a test")), "not a DNS host name"),
        (synthetic(sni_ext(b"a.test.")), "not a DNS host name"),
        (synthetic(sni_ext(b"a..test")), "not a DNS host name"),
        (synthetic(sni_ext(b"caf\xc3\xa9.test")), "not a DNS host name"),
        (synthetic(sni_ext(b"x" * 256)), "256 bytes"),
        (synthetic(sni_ext(b"a.test") + sni_ext(b"b.test")), "extension 0 appears twice"),
        (synthetic(ext(0, b"\x00\x0b\x00\x00\x06a.test")), "server_name_list needs 11 bytes, only 9 left"),
        (synthetic(ext(0, b"\x00\x09\x00\x00\x08a.test")), "host_name needs 8 bytes, only 6 left"),
        (synthetic(ext(0, b"\x00\x09\x00\x00\x06a.test\x00\x00\x00")), "3 bytes after server_name_list"),
        (synthetic(alpn_ext()), "empty protocol list"),
        (synthetic(alpn_ext(b"h2", b"")), "empty protocol name"),
        (synthetic(ext(43, b"\x03\x03\x04\x03")), "supported_versions of 3 bytes"),
        (synthetic(b"\x00\x00\x00\x09"), "extension 0 needs 9 bytes, only 0 left"),
        (synthetic(b"\x00"), "extension type needs 2 bytes, only 1 left"),
        (synthetic(suites=b"\x13"), "cipher_suites of 1 bytes"),
        (synthetic(suites=b""), "cipher_suites of 0 bytes"),
        (synthetic(compression=b""), "legacy_compression_methods is empty"),
        (synthetic(session_id=b"s" * 33), "legacy_session_id of 33 bytes"),
        (synthetic(legacy=b"\x02\x00"), "legacy_version 0x0200"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_malformed_hello_bodies(wire: bytes, message: str) -> None:
    with pytest.raises(TlsHelloError, match=message):
        parse_client_hello(wire)


def test_truncated_body_inside_a_complete_message() -> None:
    """The handshake length says the hello is complete, but a vector inside runs past it."""
    handshake = handshake_of(real_hello("cut.test"))
    short = b"\x01" + (len(handshake) - 4 - 30).to_bytes(3, "big") + handshake[4:-30]
    with pytest.raises(TlsHelloError, match="needs .* bytes, only .* left"):
        parse_client_hello(records(short, []))


def test_errors_are_value_errors() -> None:
    assert issubclass(NotTlsError, TlsHelloError) and issubclass(TlsHelloError, ValueError)

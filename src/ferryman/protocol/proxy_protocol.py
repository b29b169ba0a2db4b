"""PROXY protocol v1 (text) and v2 (binary) codec, sans-IO.

Follows HAProxy's ``proxy-protocol.txt``. A listener with ``proxy_protocol = true`` feeds
the first bytes of each connection to :func:`parse` until it returns a header (then
strips ``consumed`` bytes) or raises :class:`ProxyProtocolError`; an upstream with
``proxy_protocol = "v1" | "v2"`` writes :func:`build` output before any payload.

:func:`parse` is incremental and fails fast: bytes that can no longer start a valid
header are rejected at once, so a client speaking plain HTTP is refused on its first
byte instead of waiting for a timeout.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from struct import Struct
from ipaddress import IPv4Network, IPv6Network
from typing import Any

__all__ = [
    "V1_MAX_SIZE",
    "V2_SIGNATURE",
    "V2_DEFAULT_MAX_SIZE",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_UNIQUE_ID",
    "PP2_TYPE_SSL",
    "PP2_TYPE_NETNS",
    "ProxyHeader",
    "ProxyProtocolError",
    "parse",
    "build",
    "build_v1",
    "build_v2",
]

V1_PREFIX = b"PROXY "
V1_MAX_SIZE = 107  # whole v1 line including CRLF
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_SIZE = 16
V2_DEFAULT_MAX_SIZE = 4096
UNIX_PATH_SIZE = 108

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_TYPE_NETNS = 0x30

_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1

# v2 address family nibble -> (socket family, address block size, name for messages)
_V2_FAMILIES: dict[int, tuple[socket.AddressFamily, int, str]] = {
    0x0: (socket.AF_UNSPEC, 0, "AF_UNSPEC"),
    0x1: (socket.AF_INET, 12, "AF_INET"),
    0x2: (socket.AF_INET6, 36, "AF_INET6"),
    0x3: (socket.AF_UNIX, 2 * UNIX_PATH_SIZE, "AF_UNIX"),
}
# The only family/transport bytes the spec defines; every other value must be rejected.
_V2_VALID_FAM = frozenset({0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32})
_V2_TRANSPORTS = {0x0: "", 0x1: "TCP", 0x2: "UDP"}
_V2_TRANSPORT_CODES = {"TCP": 0x1, "UDP": 0x2}

_V2_HEAD = Struct("!12sBBH")
_V2_INET4 = Struct("!4s4sHH")
_V2_INET6 = Struct("!16s16sHH")
_V2_UNIX = Struct(f"!{UNIX_PATH_SIZE}s{UNIX_PATH_SIZE}s")
_V2_TLV_HEAD = Struct("!BH")

_CR, _LF, _ZERO = 0x0D, 0x0A, 0x30
_DIGITS = frozenset(b"0123456789")
_V4_CHARS = frozenset(b"0123456789.")
_V6_CHARS = frozenset(b"0123456789abcdefABCDEF:.")
_PRINTABLE = frozenset(range(0x20, 0x7F))
_V4_MAX_LEN = 15  # 255.255.255.255
_V6_MAX_LEN = 45  # ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255
_V1_PROTOCOLS = (b"TCP4", b"TCP6", b"UNKNOWN")
_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"

Endpoint = tuple[str, int] | str | None


class ProxyProtocolError(ValueError):
    """The bytes are not, and can no longer become, a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A decoded PROXY header.

    ``src``/``dst`` are ``(ip, port)`` for AF_INET/AF_INET6 (canonical IP text), a path
    for AF_UNIX (an abstract socket keeps its leading NUL), None when no address is
    carried. ``protocol`` is "TCP" (stream), "UDP" (datagram) or "" (unspecified).
    """

    version: int
    command: str
    family: int
    src: Endpoint
    dst: Endpoint
    protocol: str
    tlvs: tuple[tuple[int, bytes], ...] = ()

    @property
    def is_local(self) -> bool:
        """True when the receiver must use the real socket addresses (LOCAL, v1 UNKNOWN,
        or v2 PROXY with AF_UNSPEC)."""
        return self.command == "LOCAL" or self.family == socket.AF_UNSPEC

    def tlv(self, type_: int) -> bytes | None:
        """Value of the first TLV of ``type_`` (see ``PP2_TYPE_*``), or None."""
        for t, value in self.tlvs:
            if t == type_:
                return value
        return None


def required_from(peer: object, trusted: Sequence[IPv4Network | IPv6Network]) -> bool:
    """Must a client at ``peer`` send a header? Every client when ``trusted`` is empty, else
    those inside it (HAProxy's ``expect-proxy layer4 if trusted``); never a Unix client
    when ``trusted`` lists networks."""
    if not trusted:
        return True
    if not isinstance(peer, tuple):
        return False
    ip = ipaddress.ip_address(peer[0])
    return any(ip in net for net in trusted)


# --------------------------------------------------------------------------- parsing


def parse(
    data: bytes | bytearray | memoryview,
    *,
    allow_v1: bool = True,
    allow_v2: bool = True,
    max_v2_size: int = V2_DEFAULT_MAX_SIZE,
) -> tuple[ProxyHeader | None, int]:
    """Parse a PROXY header at the start of ``data``.

    Returns ``(None, 0)`` while more bytes are needed, ``(header, consumed)`` once the
    header is complete (bytes after ``consumed`` are payload). Raises
    :class:`ProxyProtocolError` as soon as ``data`` cannot be the start of a valid header.
    ``max_v2_size`` caps the whole v2 header (16-byte fixed part included).
    """
    if not data:
        return None, 0
    first = data[0]
    if first == V1_PREFIX[0]:
        if not allow_v1:
            raise ProxyProtocolError("PROXY v1 header not allowed")
        return _parse_v1(bytes(data[:V1_MAX_SIZE]))
    if first == V2_SIGNATURE[0]:
        if not allow_v2:
            raise ProxyProtocolError("PROXY v2 header not allowed")
        return _parse_v2(data, max_v2_size)
    raise ProxyProtocolError(f"not a PROXY protocol header (starts with {bytes(data[:8])!r})")


def _parse_v1(head: bytes) -> tuple[ProxyHeader | None, int]:
    """``head`` is at most the first 107 bytes of the buffer."""
    k = min(len(head), len(V1_PREFIX))
    if head[:k] != V1_PREFIX[:k]:
        raise ProxyProtocolError(f"bad v1 signature {head[:k]!r}, expected b'PROXY '")
    if k < len(V1_PREFIX):
        return None, 0
    start = len(V1_PREFIX)
    cr = head.find(b"\r", start)
    lf = head.find(b"\n", start)
    if lf >= 0 and (cr < 0 or lf < cr):
        raise ProxyProtocolError("v1 header has a bare LF before CRLF")
    if cr >= 0 and cr + 1 < len(head):
        if head[cr + 1] != _LF:
            raise ProxyProtocolError("v1 header has a bare CR before CRLF")
        return _v1_line(head[start:cr]), cr + 2
    if len(head) >= V1_MAX_SIZE:
        raise ProxyProtocolError(f"v1 header exceeds {V1_MAX_SIZE} bytes")
    _v1_check_partial(head[start:cr] if cr >= 0 else head[start:])
    return None, 0


def _v1_line(body: bytes) -> ProxyHeader:
    """Decode a complete v1 line (between ``PROXY `` and CRLF)."""
    fields = body.split(b" ")
    proto = fields[0]
    if proto == b"UNKNOWN":
        _v1_check_unknown_tail(body)
        return ProxyHeader(1, "LOCAL", socket.AF_UNSPEC, None, None, "")
    v6 = _v1_tcp_proto(proto)
    values = _v1_tcp_fields(fields, v6, complete=True)
    if len(values) != 4:
        raise ProxyProtocolError(
            f"v1 {proto.decode()} header needs 4 fields after the protocol, got {len(values)}"
        )
    src, dst, sport, dport = values
    family = socket.AF_INET6 if v6 else socket.AF_INET
    return ProxyHeader(1, "PROXY", family, (src, sport), (dst, dport), "TCP")


def _v1_check_partial(body: bytes) -> None:
    """Raise if an incomplete v1 line (no CR yet) cannot be the start of a valid one."""
    fields = body.split(b" ")
    proto = fields[0]
    if len(fields) == 1:
        if not any(p.startswith(proto) for p in _V1_PROTOCOLS):
            raise ProxyProtocolError(f"bad v1 protocol {proto!r}, expected TCP4, TCP6 or UNKNOWN")
    elif proto == b"UNKNOWN":
        _v1_check_unknown_tail(body)
    else:
        _v1_tcp_fields(fields, _v1_tcp_proto(proto), complete=False)


def _v1_tcp_proto(proto: bytes) -> bool:
    """True for TCP6, False for TCP4; raise for anything else."""
    if proto == b"TCP4":
        return False
    if proto == b"TCP6":
        return True
    raise ProxyProtocolError(f"bad v1 protocol {proto!r}, expected TCP4, TCP6 or UNKNOWN")


def _v1_tcp_fields(fields: list[bytes], v6: bool, *, complete: bool) -> list[Any]:
    """Check and decode the fields after TCP4/TCP6 in order (address, address, port,
    port); the last field of an incomplete line only has to be a valid prefix."""
    if len(fields) > 5:
        raise ProxyProtocolError(f"v1 {fields[0].decode()} header has too many fields")
    last = -1 if complete else len(fields) - 1
    values: list[Any] = []
    for i in range(1, len(fields)):
        which = "source" if i % 2 else "destination"
        if i <= 2:
            if i == last:
                _v1_addr_prefix(fields[i], which, v6)
            else:
                values.append(_v1_addr(fields[i], which, v6))
        else:
            values.append(_v1_port(fields[i], which, partial=i == last))
    return values


def _v1_check_unknown_tail(body: bytes) -> None:
    if not _PRINTABLE.issuperset(body):
        raise ProxyProtocolError("v1 UNKNOWN header has non-printable bytes")


def _v1_addr(field: bytes, which: str, v6: bool) -> str:
    chars = _V6_CHARS if v6 else _V4_CHARS
    proto = "TCP6" if v6 else "TCP4"
    if not field or not chars.issuperset(field):
        raise ProxyProtocolError(f"invalid {which} address {field!r} for {proto}")
    text = field.decode("ascii")
    try:
        if v6:
            return _ip6_text(ipaddress.IPv6Address(text))
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ProxyProtocolError(f"invalid {which} address {text!r} for {proto}") from None


def _ip6_text(ip: ipaddress.IPv6Address) -> str:
    """Canonical IPv6 text; v4-mapped addresses as ``::ffff:a.b.c.d`` on every Python."""
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return f"::ffff:{mapped}"
    return str(ip)


def _v1_addr_prefix(field: bytes, which: str, v6: bool) -> None:
    chars, limit = (_V6_CHARS, _V6_MAX_LEN) if v6 else (_V4_CHARS, _V4_MAX_LEN)
    if len(field) > limit or not chars.issuperset(field):
        proto = "TCP6" if v6 else "TCP4"
        raise ProxyProtocolError(f"invalid {which} address {field!r} for {proto}")


def _v1_port(field: bytes, which: str, *, partial: bool = False) -> int:
    """Decimal 0-65535, no sign, no leading zero; ``partial`` accepts a valid prefix."""
    if not field:
        if partial:
            return 0
        raise ProxyProtocolError(f"invalid {which} port: empty")
    if len(field) > 5 or not _DIGITS.issuperset(field):
        raise ProxyProtocolError(f"invalid {which} port {field!r}")
    if len(field) > 1 and field[0] == _ZERO:
        raise ProxyProtocolError(f"invalid {which} port {field.decode()}: leading zero")
    port = int(field)
    if port > 65535:
        raise ProxyProtocolError(f"invalid {which} port {port}")
    return port


def _parse_v2(
    data: bytes | bytearray | memoryview, max_size: int
) -> tuple[ProxyHeader | None, int]:
    n = len(data)
    k = min(n, len(V2_SIGNATURE))
    if bytes(data[:k]) != V2_SIGNATURE[:k]:
        raise ProxyProtocolError("bad v2 signature")
    if n <= len(V2_SIGNATURE):
        return None, 0
    ver_cmd = data[12]
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"unsupported v2 version {ver_cmd >> 4}")
    cmd = ver_cmd & 0x0F
    if cmd not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyProtocolError(f"unsupported v2 command {cmd}")
    if n < 14:
        return None, 0
    fam = data[13]
    if fam not in _V2_VALID_FAM:
        raise ProxyProtocolError(f"unsupported v2 family/transport byte 0x{fam:02x}")
    if n < V2_HEADER_SIZE:
        return None, 0
    length = int.from_bytes(data[14:16], "big")
    total = V2_HEADER_SIZE + length
    if total > max_size:
        raise ProxyProtocolError(f"v2 header of {total} bytes exceeds the {max_size}-byte limit")
    family, addr_len, fam_name = _V2_FAMILIES[fam >> 4]
    if cmd == _CMD_PROXY and length < addr_len:
        raise ProxyProtocolError(
            f"v2 address block too short for {fam_name} ({length} < {addr_len} bytes)"
        )
    if n < total:
        return None, 0
    block = bytes(data[V2_HEADER_SIZE:total])
    if cmd == _CMD_LOCAL:
        # The receiver must ignore the address (and family) of a LOCAL header; TLVs are
        # only found where a well-formed address block ends.
        tlvs = _v2_tlvs(block, addr_len) if length >= addr_len else ()
        return ProxyHeader(2, "LOCAL", socket.AF_UNSPEC, None, None, "", tlvs), total
    src, dst = _v2_addresses(family, block)
    tlvs = _v2_tlvs(block, addr_len)
    header = ProxyHeader(2, "PROXY", family, src, dst, _V2_TRANSPORTS[fam & 0x0F], tlvs)
    return header, total


def _v2_addresses(family: int, block: bytes) -> tuple[Endpoint, Endpoint]:
    if family == socket.AF_INET:
        s, d, sport, dport = _V2_INET4.unpack_from(block)
        return (f"{s[0]}.{s[1]}.{s[2]}.{s[3]}", sport), (f"{d[0]}.{d[1]}.{d[2]}.{d[3]}", dport)
    if family == socket.AF_INET6:
        s, d, sport, dport = _V2_INET6.unpack_from(block)
        return (_ip6_text(ipaddress.IPv6Address(s)), sport), (
            _ip6_text(ipaddress.IPv6Address(d)),
            dport,
        )
    if family == socket.AF_UNIX:
        s, d = _V2_UNIX.unpack_from(block)
        return _unix_path(s), _unix_path(d)
    return None, None


def _unix_path(raw: bytes) -> str:
    """NUL-padded sun_path -> str; an abstract name (leading NUL) keeps its NUL."""
    if raw[:1] == b"\x00":
        return os.fsdecode(raw.rstrip(b"\x00"))
    end = raw.find(b"\x00")
    return os.fsdecode(raw if end < 0 else raw[:end])


def _v2_tlvs(block: bytes, offset: int) -> tuple[tuple[int, bytes], ...]:
    """Split the bytes after the address block into TLVs; they must fill it exactly."""
    end = len(block)
    out: list[tuple[int, bytes]] = []
    while offset < end:
        if end - offset < _V2_TLV_HEAD.size:
            raise ProxyProtocolError(f"v2 TLV header truncated at offset {V2_HEADER_SIZE + offset}")
        type_, size = _V2_TLV_HEAD.unpack_from(block, offset)
        start = offset + _V2_TLV_HEAD.size
        offset = start + size
        if offset > end:
            raise ProxyProtocolError(
                f"v2 TLV 0x{type_:02x} of {size} bytes overruns the header by {offset - end}"
            )
        out.append((type_, block[start:offset]))
    return tuple(out)


# -------------------------------------------------------------------------- building

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _endpoint(value: Any, which: str) -> tuple[_IP, int] | bytes | None:
    """Normalise an endpoint: (ip, port) for IP literals, bytes for a Unix path, None for
    anything a header cannot carry (None, host names, empty paths)."""
    if value is None:
        return None
    sockaddr = getattr(value, "sockaddr", None)  # ferryman.net.addr.Address
    if sockaddr is not None:
        value = sockaddr
    if isinstance(value, (str, bytes)):
        path = os.fsencode(value)
        return path or None
    if isinstance(value, (tuple, list)) and len(value) >= 2:
        host, port = value[0], value[1]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ProxyProtocolError(f"invalid {which} port {port!r}")
        if not isinstance(host, str):
            return None
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return None  # a host name: no address to send
        return ip, port
    raise ProxyProtocolError(f"unsupported {which} endpoint {value!r}")


def _ip_pair(src: Any, dst: Any) -> tuple[tuple[_IP, int], tuple[_IP, int]] | None:
    """Both endpoints as IPs of one version (v4 mapped into v6 when mixed), else None."""
    s = _endpoint(src, "source")
    d = _endpoint(dst, "destination")
    if not isinstance(s, tuple) or not isinstance(d, tuple):
        return None
    (sip, sport), (dip, dport) = s, d
    if sip.version != dip.version:
        if sip.version == 4:
            sip = ipaddress.IPv6Address(_V4_MAPPED_PREFIX + sip.packed)
        else:
            dip = ipaddress.IPv6Address(_V4_MAPPED_PREFIX + dip.packed)
    return (sip, sport), (dip, dport)


def _v1_ip_text(ip: _IP) -> str:
    if ip.version == 6:
        return _ip6_text(ipaddress.IPv6Address(ip.packed))  # packed drops any scope id
    return str(ip)


def build_v1(src: Any, dst: Any) -> bytes:
    """A v1 line. IP pairs give TCP4/TCP6 (mixed pairs map v4 into v6); anything else
    (None, Unix paths, host names) gives ``PROXY UNKNOWN``."""
    pair = _ip_pair(src, dst)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    (sip, sport), (dip, dport) = pair
    proto = "TCP4" if sip.version == 4 else "TCP6"
    line = f"PROXY {proto} {_v1_ip_text(sip)} {_v1_ip_text(dip)} {sport} {dport}\r\n"
    return line.encode("ascii")


def build_v2(
    src: Any,
    dst: Any,
    *,
    command: str = "PROXY",
    protocol: str = "TCP",
    tlvs: Iterable[tuple[int, bytes]] = (),
) -> bytes:
    """A v2 header. IP pairs give INET/INET6 (mixed pairs map v4 into v6), two Unix paths
    give UNIX; LOCAL, None or unsupported endpoints give LOCAL with AF_UNSPEC."""
    if command not in ("PROXY", "LOCAL"):
        raise ProxyProtocolError(f"unsupported v2 command {command!r}")
    transport = _V2_TRANSPORT_CODES.get(protocol.upper())
    if transport is None:
        raise ProxyProtocolError(f"unsupported v2 protocol {protocol!r}, expected TCP or UDP")
    tail = _encode_tlvs(tlvs)
    fam, block = 0x00, b""
    cmd = _CMD_LOCAL
    if command == "PROXY":
        pair = _ip_pair(src, dst)
        if pair is not None:
            (sip, sport), (dip, dport) = pair
            packer, fam = (_V2_INET4, 0x10) if sip.version == 4 else (_V2_INET6, 0x20)
            block = packer.pack(sip.packed, dip.packed, sport, dport)
            cmd = _CMD_PROXY
        else:
            s, d = _endpoint(src, "source"), _endpoint(dst, "destination")
            if isinstance(s, bytes) and isinstance(d, bytes):
                for path, which in ((s, "source"), (d, "destination")):
                    if len(path) > UNIX_PATH_SIZE:
                        raise ProxyProtocolError(
                            f"{which} unix path of {len(path)} bytes exceeds {UNIX_PATH_SIZE}"
                        )
                fam, block = 0x30, _V2_UNIX.pack(s, d)
                cmd = _CMD_PROXY
    if cmd == _CMD_PROXY:
        fam |= transport
    length = len(block) + len(tail)
    if length > 0xFFFF:
        raise ProxyProtocolError(f"v2 header payload of {length} bytes exceeds 65535")
    return _V2_HEAD.pack(V2_SIGNATURE, 0x20 | cmd, fam, length) + block + tail


def _encode_tlvs(tlvs: Iterable[tuple[int, bytes]]) -> bytes:
    parts: list[bytes] = []
    for type_, value in tlvs:
        if not 0 <= type_ <= 0xFF:
            raise ProxyProtocolError(f"v2 TLV type {type_} out of range 0-255")
        value = bytes(value)
        if len(value) > 0xFFFF:
            raise ProxyProtocolError(f"v2 TLV 0x{type_:02x} value of {len(value)} bytes too long")
        parts.append(_V2_TLV_HEAD.pack(type_, len(value)))
        parts.append(value)
    return b"".join(parts)


def build(version: int, src: Any, dst: Any, **kw: Any) -> bytes:
    """``build_v1`` or ``build_v2`` by version number (keywords go to ``build_v2``)."""
    if version == 1:
        return build_v1(src, dst, **kw)
    if version == 2:
        return build_v2(src, dst, **kw)
    raise ProxyProtocolError(f"unsupported PROXY protocol version {version}")

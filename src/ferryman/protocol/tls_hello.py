"""Peek at a TLS ClientHello: the SNI host name and ALPN list, without terminating TLS.

Used by L4 SNI routing: read the first bytes of a connection, learn which name the client
asks for, pick the upstream, then pass every byte through unchanged (the upstream does
the handshake). Sans-IO: :func:`parse_client_hello` takes the bytes received so far and
returns :data:`NEED_MORE`, a :class:`ClientHello`, or raises :class:`TlsHelloError`.

The hello may be split across several TLS records (RFC 8446 §5.1 allows any
fragmentation of handshake messages) and across any number of reads. Limits: the
handshake message at most ``max_size`` bytes (16 KiB by default) and at most
:data:`MAX_RECORDS` records, so a peer cannot make the proxy buffer or scan without bound.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "MAX_HELLO",
    "MAX_RECORDS",
    "MAX_WIRE",
    "NEED_MORE",
    "ClientHello",
    "NeedMore",
    "NotTlsError",
    "TlsHelloError",
    "parse_client_hello",
]

MAX_HELLO = 16 * 1024
"""Largest ClientHello handshake message accepted (header included), in bytes."""

MAX_RECORDS = 32
"""Most TLS records a ClientHello may be split over."""

MAX_WIRE = MAX_HELLO + 5 * MAX_RECORDS
"""Most bytes a reader needs to buffer to see a whole acceptable ClientHello."""

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_RECORD_MAX = 1 << 14  # plaintext record fragment limit (RFC 8446 §5.1)
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43
_HOST_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-._")


class NeedMore(enum.Enum):
    """The bytes so far are a valid beginning: read more and call again."""

    NEED_MORE = "need more"


NEED_MORE = NeedMore.NEED_MORE


class TlsHelloError(ValueError):
    """The bytes are not a well-formed TLS ClientHello (the message says where and why)."""


class NotTlsError(TlsHelloError):
    """The connection does not start with a TLS handshake record at all (plain HTTP, SSH…):
    a router may send such clients to a non-TLS default instead of closing."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a router needs from a ClientHello.

    ``server_name``: the SNI host name, lowercased (None when the client sent none).
    ``alpn``: the protocols offered, in the client's order (empty when none).
    ``versions``: the TLS versions offered (``supported_versions``, else the legacy
    version), e.g. ``(0x0304, 0x0303)``. ``wire_length``: bytes of the records that carried
    the hello (the end of the last of them), from the start of the input.
    """

    server_name: str | None
    alpn: tuple[str, ...]
    versions: tuple[int, ...]
    wire_length: int

    @property
    def offers_tls13(self) -> bool:
        return 0x0304 in self.versions


def parse_client_hello(data: bytes | bytearray | memoryview, *, max_size: int = MAX_HELLO) -> ClientHello | NeedMore:
    """Parse the ClientHello at the start of ``data`` (everything received so far).

    Returns :data:`NEED_MORE` while the hello is incomplete; raises :class:`NotTlsError`
    when the first record is not a TLS handshake, :class:`TlsHelloError` for anything
    malformed or over the limits. Bytes after the hello are ignored. Cost is linear in
    the record count until the hello is complete, so calling again after every read is cheap.
    """
    view = memoryview(data)
    _check_first_record(view)
    fragments: list[memoryview] = []
    have = 0  # handshake bytes collected so far
    need = -1  # whole handshake message length, once its 4-byte header is known
    pos = end = 0
    records = 0
    while need < 0 or have < need:
        if len(view) - pos < 5:
            return NEED_MORE
        if view[pos] != _HANDSHAKE:
            raise TlsHelloError(f"record {records + 1} at byte {pos} has content type {view[pos]}, not handshake (22), before the ClientHello ended")
        if view[pos + 1] != 3:
            raise TlsHelloError(f"record {records + 1} at byte {pos} has version {view[pos + 1]}.{view[pos + 2]}, not 3.x")
        length = view[pos + 3] << 8 | view[pos + 4]
        if length == 0:
            raise TlsHelloError(f"record {records + 1} at byte {pos} is an empty handshake fragment")
        if length > _RECORD_MAX:
            raise TlsHelloError(f"record {records + 1} at byte {pos} is {length} bytes long, over the {_RECORD_MAX}-byte TLS limit")
        records += 1
        if records > MAX_RECORDS:
            raise TlsHelloError(f"ClientHello split over more than {MAX_RECORDS} records")
        available = min(length, len(view) - pos - 5)
        fragments.append(view[pos + 5 : pos + 5 + available])
        have += available
        if need < 0 and have >= 4:
            need = _message_length(fragments, max_size)
        end = pos + 5 + length
        if available < length and (need < 0 or have < need):
            return NEED_MORE
        pos = end
    message = b"".join(fragments)[:need]
    return _parse_body(memoryview(message)[4:], end)


def _check_first_record(view: memoryview) -> None:
    """Reject non-TLS input as early as its first bytes allow."""
    if not view:
        return
    first = view[0]
    if first != _HANDSHAKE:
        if first & 0x80:
            raise NotTlsError(f"first byte 0x{first:02x}: an SSLv2-style hello or not TLS (TLS starts with 0x16)")
        shown = chr(first) if 32 <= first < 127 else f"0x{first:02x}"
        hint = " (plain text: HTTP or another cleartext protocol?)" if 32 <= first < 127 else ""
        raise NotTlsError(f"first byte {shown!r} is not a TLS handshake record (0x16){hint}")
    if len(view) > 1 and view[1] != 3:
        raise NotTlsError(f"record version {view[1]}.x is not TLS (3.x)")
    if len(view) > 5 and (view[3] or view[4]) and view[5] != _CLIENT_HELLO:
        raise TlsHelloError(f"first handshake message has type {view[5]}, not ClientHello (1)")


def _message_length(fragments: list[memoryview], max_size: int) -> int:
    header = b"".join(bytes(f) for f in fragments)[:4]
    if header[0] != _CLIENT_HELLO:
        raise TlsHelloError(f"first handshake message has type {header[0]}, not ClientHello (1)")
    total = 4 + int.from_bytes(header[1:4], "big")
    if total > max_size:
        raise TlsHelloError(f"ClientHello of {total} bytes exceeds the {max_size}-byte limit")
    return total


class _Reader:
    """Bounds-checked cursor over one vector of the hello; errors name the field."""

    __slots__ = ("pos", "view", "where")

    def __init__(self, view: memoryview, where: str) -> None:
        self.view, self.pos, self.where = view, 0, where

    def left(self) -> int:
        return len(self.view) - self.pos

    def take(self, size: int, what: str) -> memoryview:
        if size > self.left():
            raise TlsHelloError(f"{self.where}: {what} needs {size} bytes, only {self.left()} left")
        out = self.view[self.pos : self.pos + size]
        self.pos += size
        return out

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, size_bytes: int, what: str) -> _Reader:
        return _Reader(self.take(self.uint(size_bytes, f"{what} length"), what), f"{self.where}: {what}")


def _parse_body(body: memoryview, wire_length: int) -> ClientHello:
    r = _Reader(body, "ClientHello")
    legacy = r.uint(2, "legacy_version")
    if legacy >> 8 != 3:
        raise TlsHelloError(f"ClientHello: legacy_version 0x{legacy:04x} is not TLS")
    r.take(32, "random")
    session_id = r.vector(1, "legacy_session_id")
    if session_id.left() > 32:
        raise TlsHelloError(f"ClientHello: legacy_session_id of {session_id.left()} bytes (at most 32)")
    suites = r.vector(2, "cipher_suites")
    if suites.left() < 2 or suites.left() % 2:
        raise TlsHelloError(f"ClientHello: cipher_suites of {suites.left()} bytes (a non-empty list of 2-byte suites)")
    if r.vector(1, "legacy_compression_methods").left() < 1:
        raise TlsHelloError("ClientHello: legacy_compression_methods is empty")
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = (legacy,)
    if r.left():  # extensions are optional before TLS 1.3
        exts = r.vector(2, "extensions")
        if r.left():
            raise TlsHelloError(f"ClientHello: {r.left()} bytes after the extensions")
        seen: set[int] = set()
        while exts.left():
            kind = exts.uint(2, "extension type")
            data = exts.vector(2, f"extension {kind}")
            if kind in seen:
                raise TlsHelloError(f"ClientHello: extension {kind} appears twice")
            seen.add(kind)
            if kind == _EXT_SERVER_NAME:
                server_name = _server_name(data)
            elif kind == _EXT_ALPN:
                alpn = _alpn(data)
            elif kind == _EXT_SUPPORTED_VERSIONS:
                versions = _versions(data)
    return ClientHello(server_name, alpn, versions, wire_length)


def _server_name(data: _Reader) -> str | None:
    names = data.vector(2, "server_name_list")
    if data.left():
        raise TlsHelloError(f"{data.where}: {data.left()} bytes after server_name_list")
    host: str | None = None
    while names.left():
        name_type = names.uint(1, "name_type")
        name = bytes(names.take(names.uint(2, "host_name length"), "host_name"))
        if name_type != 0:
            continue  # unknown name types are skipped (RFC 6066 §3)
        if host is not None:
            raise TlsHelloError("ClientHello: server_name carries two host_name entries")
        host = _host_name(name)
    return host


def _host_name(name: bytes) -> str:
    if not name:
        raise TlsHelloError("ClientHello: server_name host_name is empty")
    if len(name) > 255:
        raise TlsHelloError(f"ClientHello: server_name host_name of {len(name)} bytes (at most 255)")
    lowered = name.lower()
    if not _HOST_CHARS.issuperset(lowered) or lowered.endswith(b".") or lowered.startswith(b".") or b".." in lowered:
        raise TlsHelloError(f"ClientHello: server_name {name[:64]!r} is not a DNS host name")
    return lowered.decode("ascii")


def _alpn(data: _Reader) -> tuple[str, ...]:
    protocols = data.vector(2, "protocol_name_list")
    if data.left():
        raise TlsHelloError(f"{data.where}: {data.left()} bytes after protocol_name_list")
    out = []
    while protocols.left():
        name = protocols.vector(1, "protocol name")
        if not name.left():
            raise TlsHelloError("ClientHello: ALPN lists an empty protocol name")
        out.append(bytes(name.take(name.left(), "protocol name")).decode("latin-1"))
    if not out:
        raise TlsHelloError("ClientHello: ALPN extension with an empty protocol list")
    return tuple(out)


def _versions(data: _Reader) -> tuple[int, ...]:
    versions = data.vector(1, "supported_versions")
    if data.left():
        raise TlsHelloError(f"{data.where}: {data.left()} bytes after the version list")
    if versions.left() < 2 or versions.left() % 2:
        raise TlsHelloError(f"ClientHello: supported_versions of {versions.left()} bytes (a non-empty list of 2-byte versions)")
    return tuple(versions.uint(2, "version") for _ in range(versions.left() // 2))

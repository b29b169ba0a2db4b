"""DNS messages (RFC 1035) as bytes ⇄ objects, for resolving backend names.

Sans-IO: the resolver sends what :func:`encode_query` builds and feeds each datagram it
receives to :func:`decode_message`; :func:`is_answer_to` says whether a message answers a
query and :func:`answer_addresses` follows the CNAME chain to the addresses. Decoding is
strict about structure (every length checked, compression pointers must point backwards,
so a pointer loop cannot hang it) and raises :class:`DnsError` naming the offset.

Names are text without the trailing dot (``""`` is the root); label bytes are decoded as
Latin-1 with ``.`` and ``\\`` escaped. Comparisons are case-insensitive (RFC 4343).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_PTR = 12
TYPE_AAAA = 28
TYPE_OPT = 41
CLASS_IN = 1

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = range(6)
RCODE_NAMES = {NOERROR: "NOERROR", FORMERR: "FORMERR", SERVFAIL: "SERVFAIL", NXDOMAIN: "NXDOMAIN", NOTIMP: "NOTIMP", REFUSED: "REFUSED"}
TYPE_NAMES = {TYPE_A: "A", TYPE_NS: "NS", TYPE_CNAME: "CNAME", TYPE_PTR: "PTR", TYPE_AAAA: "AAAA", TYPE_OPT: "OPT"}

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080

HEADER = struct.Struct("!HHHHHH")
_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
MAX_NAME = 255  # wire length, RFC 1035 2.3.4
MAX_LABEL = 63
_NAME_TYPES = frozenset((TYPE_NS, TYPE_CNAME, TYPE_PTR))


class DnsError(ValueError):
    """A malformed message or an impossible name; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Question:
    name: str
    qtype: int
    qclass: int = CLASS_IN


@dataclass(frozen=True, slots=True)
class Record:
    """A resource record. ``data``: the address text for A/AAAA, the target name for
    CNAME/NS/PTR, the raw rdata bytes for every other type."""

    name: str
    rtype: int
    data: str | bytes
    ttl: int = 0
    rclass: int = CLASS_IN


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    flags: int = 0
    questions: tuple[Question, ...] = ()
    answers: tuple[Record, ...] = ()
    authorities: tuple[Record, ...] = ()
    additionals: tuple[Record, ...] = ()

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_QR)

    @property
    def truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rcode(self) -> int:
        return self.flags & 0xF


@dataclass(frozen=True, slots=True)
class Answer:
    """Addresses for one question, after following CNAMEs; ``ttl``: the smallest TTL of
    the records used (None when there are none); ``name``: the canonical name reached."""

    addresses: tuple[str, ...] = ()
    ttl: int | None = None
    name: str = ""
    chain: tuple[str, ...] = ()


def rcode_name(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, f"rcode {rcode}")


def type_name(rtype: int) -> str:
    return TYPE_NAMES.get(rtype, f"type {rtype}")


def normalize_name(name: str) -> str:
    """Lower case, no trailing dot: the form names are compared in."""
    return name[:-1].lower() if name.endswith(".") and not name.endswith("\\.") else name.lower()


# --- encoding -----------------------------------------------------------------------------------

def encode_name(name: str) -> bytes:
    """Wire form of ``name`` (no compression); non-ASCII labels go through IDNA."""
    text = name.removesuffix(".")
    if not text:
        return b"\0"
    out = bytearray()
    for label in _split_labels(text):
        if not label:
            raise DnsError(f"name {name!r} has an empty label")
        try:
            raw = label.encode("latin-1") if label.isascii() else label.encode("idna")
        except UnicodeError as exc:
            raise DnsError(f"name {name!r}: label {label!r} cannot be encoded ({exc})") from None
        if len(raw) > MAX_LABEL:
            raise DnsError(f"name {name!r}: label {label[:20]!r}... is {len(raw)} bytes, over {MAX_LABEL}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise DnsError(f"name {name[:40]!r}... is {len(out)} bytes on the wire, over {MAX_NAME}")
    return bytes(out)


def _split_labels(text: str) -> list[str]:
    if "\\" not in text:
        return text.split(".")
    labels, current, chars = [], [], iter(text)
    for c in chars:
        if c == "\\":
            current.append(next(chars, "\\"))
        elif c == ".":
            labels.append("".join(current))
            current = []
        else:
            current.append(c)
    labels.append("".join(current))
    return labels


def encode_query(qid: int, name: str, qtype: int, *, recursion_desired: bool = True) -> bytes:
    """A standard query for one question (class IN)."""
    if not 0 <= qid <= 0xFFFF:
        raise DnsError(f"query id {qid} is not a 16-bit value")
    flags = FLAG_RD if recursion_desired else 0
    return HEADER.pack(qid, flags, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


def encode_message(message: Message) -> bytes:
    """Any message, without name compression (test servers, round trips)."""
    out = bytearray(HEADER.pack(
        message.id, message.flags, len(message.questions), len(message.answers),
        len(message.authorities), len(message.additionals),
    ))
    for q in message.questions:
        out += encode_name(q.name) + struct.pack("!HH", q.qtype, q.qclass)
    for record in (*message.answers, *message.authorities, *message.additionals):
        rdata = _encode_rdata(record)
        out += encode_name(record.name) + _FIXED.pack(record.rtype, record.rclass, record.ttl, len(rdata)) + rdata
    return bytes(out)


def _encode_rdata(record: Record) -> bytes:
    data = record.data
    if isinstance(data, bytes):
        return data
    if record.rtype == TYPE_A:
        return ipaddress.IPv4Address(data).packed
    if record.rtype == TYPE_AAAA:
        return ipaddress.IPv6Address(data).packed
    if record.rtype in _NAME_TYPES:
        return encode_name(data)
    raise DnsError(f"{type_name(record.rtype)} record {record.name!r}: give its rdata as bytes")


# --- decoding -----------------------------------------------------------------------------------

def decode_message(data: bytes) -> Message:
    """Parse a whole message; bytes after the last record are ignored."""
    if len(data) < HEADER.size:
        raise DnsError(f"message is {len(data)} bytes, shorter than the {HEADER.size}-byte header")
    qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    pos = HEADER.size
    questions = []
    for index in range(qdcount):
        try:
            name, pos = read_name(data, pos)
        except DnsError as exc:
            raise DnsError(f"question {index + 1}: {exc}") from None
        if pos + 4 > len(data):
            raise DnsError(f"question {index + 1} at offset {pos}: type and class cut off ({len(data) - pos} of 4 bytes)")
        qtype, qclass = struct.unpack_from("!HH", data, pos)
        pos += 4
        questions.append(Question(name, qtype, qclass))
    sections: list[tuple[Record, ...]] = []
    for section, count in (("answer", ancount), ("authority", nscount), ("additional", arcount)):
        records = []
        for index in range(count):
            record, pos = _read_record(data, pos, f"{section} record {index + 1}")
            records.append(record)
        sections.append(tuple(records))
    return Message(qid, flags, tuple(questions), *sections)


def _read_record(data: bytes, pos: int, what: str) -> tuple[Record, int]:
    start = pos
    try:
        name, pos = read_name(data, pos)
    except DnsError as exc:
        raise DnsError(f"{what} at offset {start}: {exc}") from None
    if pos + _FIXED.size > len(data):
        raise DnsError(f"{what} at offset {start}: fixed fields cut off ({len(data) - pos} of {_FIXED.size} bytes)")
    rtype, rclass, ttl, rdlength = _FIXED.unpack_from(data, pos)
    pos += _FIXED.size
    end = pos + rdlength
    if end > len(data):
        raise DnsError(f"{what} at offset {start}: rdata of {rdlength} bytes runs past the end ({len(data) - pos} left)")
    if ttl & 0x80000000:
        ttl = 0  # RFC 2181 8: a TTL with the top bit set counts as zero
    rdata: str | bytes
    if rtype == TYPE_A and rclass == CLASS_IN:
        if rdlength != 4:
            raise DnsError(f"{what} at offset {start}: A rdata is {rdlength} bytes, expected 4")
        rdata = str(ipaddress.IPv4Address(data[pos:end]))
    elif rtype == TYPE_AAAA and rclass == CLASS_IN:
        if rdlength != 16:
            raise DnsError(f"{what} at offset {start}: AAAA rdata is {rdlength} bytes, expected 16")
        rdata = str(ipaddress.IPv6Address(data[pos:end]))
    elif rtype in _NAME_TYPES:
        try:
            rdata, name_end = read_name(data, pos, limit=end)
        except DnsError as exc:
            raise DnsError(f"{what} at offset {start}: {type_name(rtype)} {exc}") from None
        if name_end != end:
            raise DnsError(f"{what} at offset {start}: {type_name(rtype)} name ends at {name_end}, rdata ends at {end}")
    else:
        rdata = bytes(data[pos:end])
    return Record(name, rtype, rdata, ttl, rclass), end


def read_name(data: bytes, offset: int, *, limit: int | None = None) -> tuple[str, int]:
    """The name at ``offset`` and the offset just after it (after its first pointer, if any).

    Every pointer must point before the labels that lead to it, so decoding always ends.
    ``limit`` bounds the uncompressed part (a name inside rdata must not leave it).
    """
    end_of_data = len(data) if limit is None else limit
    labels: list[str] = []
    pos = offset
    floor = offset  # a pointer must point before this
    after: int | None = None
    wire = 1
    while True:
        if pos >= end_of_data:
            where = "rdata" if limit is not None and after is None else "message"
            raise DnsError(f"name at offset {offset} runs past the end of the {where}")
        length = data[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= end_of_data:
                raise DnsError(f"compression pointer at offset {pos} is cut off")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= floor:
                raise DnsError(f"compression pointer at offset {pos} points to {target}, not before {floor}: a loop or a forward reference")
            if after is None:
                after = pos + 2
                end_of_data = len(data)  # the target may be anywhere before us
            pos = floor = target
            continue
        if kind:
            raise DnsError(f"label type 0x{kind:02x} at offset {pos} is not supported")
        if length == 0:
            pos += 1
            break
        if pos + 1 + length > end_of_data:
            raise DnsError(f"label at offset {pos} ({length} bytes) runs past the end ({end_of_data - pos - 1} left)")
        wire += length + 1
        if wire > MAX_NAME:
            raise DnsError(f"name at offset {offset} is over {MAX_NAME} bytes")
        label = data[pos + 1 : pos + 1 + length].decode("latin-1")
        labels.append(label.replace("\\", "\\\\").replace(".", "\\."))
        pos += 1 + length
    return ".".join(labels), (after if after is not None else pos)


# --- interpretation -----------------------------------------------------------------------------

def is_answer_to(message: Message, qid: int, name: str, qtype: int) -> bool:
    """Does ``message`` answer our query (same id, a response, the same question)?

    A server that refuses a query may leave the question out; an error rcode with no
    question and our id counts as the answer.
    """
    if message.id != qid or not message.is_response:
        return False
    if not message.questions:
        return message.rcode != NOERROR
    if len(message.questions) != 1:
        return False
    q = message.questions[0]
    return q.qtype == qtype and q.qclass == CLASS_IN and normalize_name(q.name) == normalize_name(name)


def answer_addresses(message: Message, name: str, qtype: int) -> Answer:
    """The ``qtype`` addresses for ``name`` in the answer section, following CNAMEs.

    An empty ``addresses`` means the section holds none for the end of the chain (a CNAME
    to a name the server did not resolve, or no data). A CNAME loop raises DnsError.
    """
    current = normalize_name(name)
    chain = [current]
    ttl: int | None = None
    for _ in range(len(message.answers) + 1):
        addresses: list[str] = []
        cname: Record | None = None
        for record in message.answers:
            if record.rclass != CLASS_IN or normalize_name(record.name) != current:
                continue
            if record.rtype == qtype:
                if isinstance(record.data, str) and record.data not in addresses:
                    addresses.append(record.data)
                ttl = record.ttl if ttl is None else min(ttl, record.ttl)
            elif record.rtype == TYPE_CNAME and cname is None:
                cname = record
        if addresses or cname is None:
            return Answer(tuple(addresses), ttl if addresses else None, current, tuple(chain))
        ttl = cname.ttl if ttl is None else min(ttl, cname.ttl)
        current = normalize_name(str(cname.data))
        if current in chain:
            raise DnsError(f"CNAME loop: {' → '.join(chain)} → {current}")
        chain.append(current)
    raise DnsError(f"CNAME chain longer than the answer section: {' → '.join(chain)}")  # unreachable

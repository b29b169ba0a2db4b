"""HPACK (RFC 7541) for the hot path: a header block encoder and a decoder front-end.

The pure-Python ``hpack`` package spends tens of microseconds per header block (a table
search, a log call and several small allocations per field). Proxied traffic repeats
itself: the same response fields block after block, the same request block from a client
that polls or streams to one endpoint. So:

* :class:`Encoder` (replaces ``hpack.Encoder`` on our connections) keeps its own dynamic
  table as a dict from field to insertion number: a field already in the table costs one
  dict lookup, and the literal form of a field (Huffman-coded when shorter) is built once
  and memoised. Indexing policy as nghttp2's: sensitive fields (``authorization``, short
  cookies) are never indexed; fields that change on every message (``:path``,
  ``content-length``, ``etag`` ...) and entries larger than 3/4 of the table are sent as
  literals without indexing, so they do not evict useful entries. A whole block that
  left the table as it was is remembered too: the same header list encodes to the same
  bytes until the next insertion (or a new table size).
* :class:`Decoder` (a ``hpack.Decoder``) memoises the blocks that did not change the
  dynamic table (indexed fields and literals without indexing): such a block decodes to
  the same fields for as long as the table does not change. A block that changed the
  table clears the memo.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from hpack import Decoder as _HpackDecoder
from hpack import HeaderTuple
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

__all__ = ["Decoder", "Encoder", "encode_integer"]

_STATIC = HeaderTable.STATIC_TABLE
_STATIC_FIELD: dict[tuple[bytes, bytes], bytes] = {}  # exact match -> its indexed representation
_STATIC_NAME: dict[bytes, int] = {}  # name -> its first static index
for _i, (_name, _value) in enumerate(_STATIC, 1):
    _STATIC_FIELD.setdefault((_name, _value), bytes((0x80 | _i,)))
    _STATIC_NAME.setdefault(_name, _i)
_STATIC_FIELD.pop((b":authority", b""), None)  # an empty :authority is not worth a special case
_INDEXED = [bytes((0x80 | i,)) for i in range(127)]  # one-byte indexed representations

# nghttp2's indexing policy (lib/nghttp2_hd.c, hd_deflate_should_indexing)
_NOT_INDEXED = frozenset((
    b":path", b"age", b"content-length", b"etag", b"if-modified-since", b"if-none-match",
    b"location", b"set-cookie",
))
_NEVER_INDEXED = frozenset((b"authorization", b"proxy-authorization"))
_ENTRY_OVERHEAD = 32  # RFC 7541 §4.1
# Memos are per connection and bounded in entries and in the size of what they keep (a
# peer sending many large distinct blocks must not make a connection hold megabytes).
_LITERALS_LIMIT, _LITERAL_SIZE = 128, 1024  # literal fields: entries, name + value bytes
_BLOCKS_LIMIT, _BLOCK_SIZE = 64, 512  # decoded (and encoded) blocks: entries, encoded bytes
_BLOCK_RAW = 4096  # encoded blocks: their fields' name + value bytes

_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def _to_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def encode_integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 §5.1: ``value`` with an N-bit prefix, ``first`` OR-ed into the first byte."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    """A string literal (§5.2), Huffman-coded when that is shorter."""
    coded = _huffman.encode(data)
    if len(coded) < len(data):
        return encode_integer(len(coded), 7, 0x80) + coded
    return encode_integer(len(data), 7) + data


def _raw_size(fields: tuple) -> int:
    """The name and value bytes of a header list (more than any limit if not measurable)."""
    try:
        return sum(len(field[0]) + len(field[1]) for field in fields)
    except (TypeError, IndexError):
        return 1 << 62


def _literal(name: bytes, value: bytes, kind: int) -> bytes:
    """A literal field (§6.2): ``kind`` 0x40 incremental indexing, 0x00 without indexing,
    0x10 never indexed; the name by static index when there is one."""
    index = _STATIC_NAME.get(name, 0)
    prefix = encode_integer(index, 6 if kind == 0x40 else 4, kind)
    if not index:
        prefix += _string(name)
    return prefix + _string(value)


class Encoder:
    """A header block encoder with the interface h2 uses (``encode``, ``header_table_size``).

    ``encode`` takes ``(name, value)`` byte pairs, names lowercase (our blocks are built by
    :mod:`.headers`; h2's outbound normalisation is off)."""

    def __init__(self) -> None:
        self._max = 4096  # the table size the peer's decoder expects (SETTINGS_HEADER_TABLE_SIZE)
        self._size = 0
        self._entries: deque[tuple[tuple[bytes, bytes], int, int]] = deque()  # (field, size, number), oldest first
        self._numbers: dict[tuple[bytes, bytes], int] = {}  # field -> insertion number of its newest entry
        self._inserted = 0  # insertions so far: the newest entry has number _inserted - 1
        self._resize: list[int] = []  # table size updates to signal at the start of the next block
        self._literals: dict[tuple[bytes, bytes], tuple[bytes, bool]] = {}  # field -> (literal, indexed)
        self._blocks: dict[tuple, tuple[bytes, int]] = {}  # header list -> (block, _inserted when it was encoded)

    @property
    def header_table_size(self) -> int:
        return self._max

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE changed: use it as our table size and say so
        (§4.2: the smallest size since the last block, then the final one)."""
        if value == self._max and not self._resize:
            return
        resize = self._resize
        if not resize:
            resize.append(value)
        elif value < min(resize):
            resize[:] = [value]
        else:
            del resize[1:]
            if value != resize[0]:
                resize.append(value)
        self._max = value
        self._literals.clear()  # indexing choices depend on the table size
        self._blocks.clear()
        self._evict(0)

    def _evict(self, room: int) -> None:
        entries, numbers = self._entries, self._numbers
        limit = self._max - room
        while self._size > limit and entries:
            field, size, number = entries.popleft()
            self._size -= size
            if numbers.get(field) == number:
                del numbers[field]

    def encode(self, headers: list[Any], huffman: bool = True) -> bytes:
        """A header block. ``headers``: ``(name, value)`` bytes pairs, or what hpack takes too
        (a hook's str or int values, never-indexed ``HeaderTuple``s). A list of plain pairs
        that was encoded before without changing the table encodes to the same bytes for as
        long as nothing was inserted since (evictions come only with insertions or a new
        table size)."""
        if self._resize:
            self._blocks.clear()
            return self._encode(headers)
        for field in headers:
            if type(field) is not tuple:  # never-indexed and other special fields: field by field
                return self._encode(headers)
        key = tuple(headers)
        memo = self._blocks.get(key)
        inserted = self._inserted
        if memo is not None and memo[1] == inserted:
            return memo[0]
        block = self._encode(headers)
        if self._inserted == inserted and len(block) <= _BLOCK_SIZE and _raw_size(key) <= _BLOCK_RAW:
            blocks = self._blocks  # (it left the table as it was, and it is small)
            if len(blocks) >= _BLOCKS_LIMIT:
                blocks.clear()
            blocks[key] = (block, inserted)
        return block

    def _encode(self, headers: list[Any]) -> bytes:
        out: list[bytes] = []
        if self._resize:
            out.extend(encode_integer(size, 5, 0x20) for size in self._resize)
            self._resize = []
        numbers, literals = self._numbers, self._literals
        for field in headers:
            if type(field) is not tuple or len(field) != 2:
                out.append(self._special(field))
                continue
            static = _STATIC_FIELD.get(field)
            if static is not None:
                out.append(static)
                continue
            number = numbers.get(field)
            if number is not None:
                index = 61 + self._inserted - number
                out.append(_INDEXED[index] if index < 127 else encode_integer(index, 7, 0x80))
                continue
            memo = literals.get(field)
            if memo is None:
                if type(field[0]) is not bytes or type(field[1]) is not bytes:  # a hook's str or int
                    out.append(self._encode([(_to_bytes(field[0]), _to_bytes(field[1]))]))
                    continue
                memo = self._literal(field)
            literal, indexed = memo
            out.append(literal)
            if indexed:
                self._add(field)
        return b"".join(out)

    def _special(self, field: Any) -> bytes:
        """A field given as hpack's ``HeaderTuple`` / ``NeverIndexedHeaderTuple``, as
        ``(name, value, sensitive)`` or as a list: sensitive ones are never indexed."""
        name, value = _to_bytes(field[0]), _to_bytes(field[1])
        sensitive = not field.indexable if isinstance(field, HeaderTuple) else len(field) > 2 and bool(field[2])
        if sensitive:
            return _literal(name, value, 0x10)
        return self._encode([(name, value)])

    def _literal(self, field: tuple[bytes, bytes]) -> tuple[bytes, bool]:
        name, value = field
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        if name in _NEVER_INDEXED or (name == b"cookie" and len(value) < 20):
            memo = (_literal(name, value, 0x10), False)
        elif name in _NOT_INDEXED or size * 4 > self._max * 3:
            memo = (_literal(name, value, 0x00), False)
        else:
            memo = (_literal(name, value, 0x40), True)
        if size <= _LITERAL_SIZE + _ENTRY_OVERHEAD:
            if len(self._literals) >= _LITERALS_LIMIT:
                self._literals.clear()
            self._literals[field] = memo
        return memo

    def _add(self, field: tuple[bytes, bytes]) -> None:
        size = len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
        self._evict(size)
        if size > self._max:  # §4.4: the table is now empty and the entry is not added
            return
        number = self._inserted
        self._inserted = number + 1
        self._entries.append((field, size, number))
        self._numbers[field] = number
        self._size += size


class Decoder(_HpackDecoder):
    """``hpack.Decoder`` with a memo of the blocks that left the dynamic table as it was
    (indexed fields and literals without indexing: what a client repeating a request sends)."""

    def __init__(self, max_header_list_size: int = 2**16) -> None:
        super().__init__(max_header_list_size)
        self._memo: dict[bytes, tuple] = {}
        self._memo_limit = max_header_list_size

    def decode(self, data: bytes, raw: bool = False):  # type: ignore[no-untyped-def, override]
        if not raw:
            return super().decode(data, raw)
        memo = self._memo
        block = bytes(data)
        if self.max_header_list_size != self._memo_limit:  # what is memoised passed another limit
            memo.clear()
            self._memo_limit = self.max_header_list_size
        headers = memo.get(block)
        if headers is not None:
            return list(headers)
        table = self.header_table
        entries = table.dynamic_entries
        newest, size = entries[0] if entries else None, table.maxsize
        decoded = super().decode(block, raw)
        if (entries[0] if entries else None) is not newest or table.maxsize != size:
            memo.clear()  # the table changed: what was memoised may mean something else now
        elif len(block) <= _BLOCK_SIZE:  # this block decodes the same until the table changes
            if len(memo) >= _BLOCKS_LIMIT:
                memo.clear()
            memo[block] = tuple(decoded)
        return decoded

"""HPACK on the hot path (ferryman.protocol.h2.compression): the encoder checked against the
``hpack`` package's decoder as the oracle, the decoder's memo against a plain decoder."""

from __future__ import annotations

import random

import pytest
from hpack import Decoder as ReferenceDecoder
from hpack import Encoder as ReferenceEncoder
from hpack.exceptions import OversizedHeaderListError

from ferryman.protocol.h2.compression import Decoder, Encoder, encode_integer

RESPONSE = [(b":status", b"200"), (b"server", b"nginx"), (b"date", b"Sat, 21 Nov 2026 15:18:21 GMT"), (b"content-type", b"text/plain"), (b"content-length", b"100")]


def decoded(decoder: ReferenceDecoder, block: bytes) -> list[tuple[bytes, bytes]]:
    return [tuple(field) for field in decoder.decode(block, raw=True)]


@pytest.mark.parametrize("seed", range(8))
def test_random_blocks_decode_to_what_was_encoded_through_evictions_and_resizes(seed: int) -> None:
    rng = random.Random(seed)
    names = [b"server", b"date", b"x-a", b"x-b", b"cookie", b"authorization", b":status", b"etag", b"content-type", b"accept-encoding"]
    encoder, decoder = Encoder(), ReferenceDecoder()
    for _ in range(60):
        if rng.random() < 0.15:
            for _ in range(rng.randint(1, 3)):  # several changes between two blocks: the smallest and the last are signalled
                encoder.header_table_size = rng.choice([0, 64, 100, 256, 1000, 4096])
        block = []
        for _ in range(rng.randint(0, 10)):
            value = rng.choice([b"", b"1", b"200", b"gzip, deflate", b"nginx", b"v" * rng.randint(0, 3000), bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))])
            block.append((rng.choice(names), value))
        assert decoded(decoder, encoder.encode(block)) == block
    assert decoder.header_table_size == encoder.header_table_size


def test_a_repeated_block_is_sent_as_table_indices() -> None:
    encoder, decoder = Encoder(), ReferenceDecoder()
    first = encoder.encode(RESPONSE)
    second = encoder.encode(RESPONSE)
    assert decoded(decoder, first) == decoded(decoder, second) == RESPONSE
    # :status 200 is static; server, date and content-type now in the table; content-length stays a literal
    assert len(second) < len(first) and second[:4] == bytes((0x88, 0xC0, 0xBF, 0xBE))


def test_sensitive_and_changing_fields_stay_out_of_the_table() -> None:
    encoder, decoder = Encoder(), ReferenceDecoder()
    block = [(b"authorization", b"Basic c2VjcmV0"), (b"cookie", b"id=1"), (b":path", b"/a?x=1"), (b"x-kept", b"1")]
    fields = decoder.decode(encoder.encode(block), raw=True)
    assert [f.indexable for f in fields] == [False, False, True, True]
    assert [tuple(entry) for entry in decoder.header_table.dynamic_entries] == [(b"x-kept", b"1")]


def test_a_table_size_change_is_signalled_before_the_next_block() -> None:
    encoder = Encoder()
    encoder.header_table_size = 0
    encoder.header_table_size = 4096
    block = encoder.encode([(b"x-a", b"1")])
    assert block.startswith(encode_integer(0, 5, 0x20) + encode_integer(4096, 5, 0x20))
    assert not encoder.encode([]).startswith(b"\x20")  # signalled once


def test_an_entry_larger_than_the_table_empties_it_and_is_not_added() -> None:
    encoder, decoder = Encoder(), ReferenceDecoder()
    encoder.header_table_size = decoder.header_table_size = 200
    small, large = (b"x-a", b"1"), (b"x-big", b"v" * 150)  # 3/4 of 200 is 150: the large one is not indexed
    assert decoded(decoder, encoder.encode([small, large, small])) == [small, large, small]
    assert len(encoder.encode([small])) == 1  # still indexed


def literal_indexed(name: bytes, value: bytes) -> bytes:
    """A literal field with incremental indexing and a new name, no Huffman coding."""
    return b"\x40" + bytes((len(name),)) + name + bytes((len(value),)) + value


def test_a_memoised_block_follows_the_table_when_it_changes() -> None:
    decoder, reference = Decoder(), ReferenceDecoder()
    newest = b"\xbe"  # index 62: the newest entry of the dynamic table
    blocks = [literal_indexed(b"x-a", b"1"), newest, newest, literal_indexed(b"x-b", b"2"), newest, newest + b"\xbf"]
    for block in blocks:
        assert [tuple(f) for f in decoder.decode(block, raw=True)] == decoded(reference, block)
    assert [tuple(f) for f in decoder.decode(newest, raw=True)] == [(b"x-b", b"2")]


def test_a_memoised_block_is_decoded_again_under_a_smaller_header_list_limit() -> None:
    decoder = Decoder()
    decoder.decode(literal_indexed(b"x-long", b"v" * 100), raw=True)
    repeat = b"\xbe"
    assert decoder.decode(repeat, raw=True) == decoder.decode(repeat, raw=True)
    decoder.max_header_list_size = 50
    with pytest.raises(OversizedHeaderListError):
        decoder.decode(repeat, raw=True)


def test_repeated_blocks_with_literals_without_indexing_decode_the_same() -> None:
    encoder, decoder, reference = ReferenceEncoder(), Decoder(), ReferenceDecoder()
    request = [(b":method", b"GET"), (b":path", b"/small"), (b"user-agent", b"h2load")]
    blocks = [encoder.encode(request) for _ in range(3)]
    blocks.append(encoder.encode([(b"user-agent", b"other")]))
    blocks.append(blocks[1])
    for block in blocks:
        assert [tuple(f) for f in decoder.decode(block, raw=True)] == decoded(reference, block)


def test_fields_given_as_str_or_marked_sensitive_are_encoded_as_hpack_would() -> None:
    from hpack import HeaderTuple, NeverIndexedHeaderTuple

    encoder, decoder = Encoder(), ReferenceDecoder()
    block = [(b"x", "é"), ("y", 3), NeverIndexedHeaderTuple(b"s", b"1"), HeaderTuple(b"h", b"2"), (b"t", b"3", True)]
    fields = decoder.decode(encoder.encode(block), raw=True)
    assert [tuple(f) for f in fields] == [(b"x", "é".encode()), (b"y", b"3"), (b"s", b"1"), (b"h", b"2"), (b"t", b"3")]
    assert [f.indexable for f in fields] == [True, True, False, True, False]
    assert decoded(decoder, encoder.encode([(b"x", "é".encode())])) == [(b"x", "é".encode())]  # the same entry, indexed


def test_what_the_memos_keep_is_bounded() -> None:
    decoder, encoder = Decoder(), Encoder()
    without_indexing = [b"\x00" + bytes((3,)) + b"x-%d" % (i % 10) + encode_integer(1000, 7) + b"v" * 1000 for i in range(3)]  # 1000-byte values
    for block in without_indexing:
        decoder.decode(block, raw=True)
    for i in range(500):
        decoder.decode(b"\x00\x03x-a" + bytes((len(b"%d" % i),)) + b"%d" % i, raw=True)
    assert 0 < len(decoder._memo) <= 64 and all(len(block) <= 512 for block in decoder._memo)
    for i in range(500):
        encoder.encode([(b"x-%d" % i, b"v" * (i * 7))])
    assert 0 < len(encoder._literals) <= 128 and all(len(n) + len(v) <= 1024 for n, v in encoder._literals)

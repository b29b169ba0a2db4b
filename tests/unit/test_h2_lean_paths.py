"""The per-request lean paths of the HTTP/2 layer, checked against what h2's own code does:
a repeated request block opening its stream without h2's stream machinery, a whole response
sent in one step, streams built without h2's constructors, encoded blocks and request heads
remembered per connection."""

from __future__ import annotations

import random

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.settings import SettingCodes
from h2.stream import StreamClosedBy, StreamState
from hpack import Decoder as ReferenceDecoder
from hpack import NeverIndexedHeaderTuple
from support.h2_pair import shuttle

from ferryman.protocol.h2 import (
    H2ConnectionError,
    H2Endpoint,
    Malformed,
    RequestHeads,
    request_head,
)
from ferryman.protocol.h2 import connection as h2_connection
from ferryman.protocol.h2.compression import Encoder

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/small"), (b":authority", b"a.test"), (b"user-agent", b"test")]
POST = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/up"), (b":authority", b"a.test"), (b"content-length", b"5")]
RESPONSE = [(b":status", b"200"), (b"server", b"origin"), (b"content-type", b"text/plain"), (b"content-length", b"100")]
BODY = b"b" * 100


def plain(**settings: int) -> H2Connection:
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    if settings:
        conn.update_settings({getattr(SettingCodes, k.upper()): v for k, v in settings.items()})
    return conn


def connected(**settings: int) -> tuple[H2Endpoint, H2Connection, list, list]:
    server, client = H2Endpoint(client=False), plain(**settings)
    s_events: list = []
    c_events: list = []
    shuttle(server, client, s_events, c_events)
    return server, client, s_events, c_events


def state(stream: object) -> dict:
    """What h2 keeps about a stream (its state machine's and window manager's too), ids aside."""
    out = {k: v for k, v in vars(stream).items() if k not in ("state_machine", "_inbound_window_manager", "stream_id")}
    out["machine"] = {k: v for k, v in vars(stream.state_machine).items() if k != "stream_id"}  # type: ignore[attr-defined]
    out["windows"] = vars(stream._inbound_window_manager)  # type: ignore[attr-defined]
    return out


def test_streams_are_built_as_h2s_constructors_build_them() -> None:
    assert h2_connection._same_streams()
    assert h2_connection._new_stream is h2_connection._built_stream


@pytest.mark.parametrize("headers", [GET, POST])
def test_a_repeated_request_block_opens_its_stream_as_h2_does(headers: list) -> None:
    server, client, s_events, c_events = connected()
    ends = headers is GET
    ids = []
    for _ in range(2):  # the first goes through h2's code, the second (validated before) does not
        ids.append(client.get_next_available_stream_id())
        client.send_headers(ids[-1], headers, end_stream=ends)
        shuttle(server, client, s_events, c_events)
    first, second = (server.conn.streams[i] for i in ids)
    assert state(first) == state(second)
    assert second.state_machine.state is (StreamState.HALF_CLOSED_REMOTE if ends else StreamState.OPEN)
    requests = [e for e in s_events if isinstance(e, RequestReceived)]
    assert [(e.stream_id, [tuple(f) for f in e.headers], e.stream_ended is not None, e.priority_updated) for e in requests] == [
        (i, headers, ends, None) for i in ids
    ]
    assert [e.stream_id for e in s_events if isinstance(e, StreamEnded)] == (ids if ends else [])
    if ends:
        assert requests[1].stream_ended is [e for e in s_events if isinstance(e, StreamEnded)][1]


def test_a_repeated_request_still_has_its_body_checked_against_its_content_length() -> None:
    server, client, s_events, c_events = connected()
    for _ in range(2):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, POST)  # content-length: 5
        client.send_data(stream_id, b"abc", end_stream=True)
        shuttle(server, client, s_events, c_events)
    assert [type(e) for e in s_events if isinstance(e, (RequestReceived, Malformed))] == [RequestReceived, Malformed] * 2
    assert [e.error_code for e in c_events if isinstance(e, StreamReset)] == [ErrorCodes.PROTOCOL_ERROR] * 2


def test_a_request_block_sent_again_on_a_finished_stream_is_a_connection_error() -> None:
    server, client, s_events, c_events = connected()
    for _ in range(2):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, GET, end_stream=True)
        frames = client.data_to_send()
        s_events += server.receive(frames)
        assert server.send_response(stream_id, RESPONSE, BODY)
        shuttle(server, client, s_events, c_events)
    with pytest.raises(H2ConnectionError) as err:
        server.receive(frames)  # the last request's HEADERS again: its stream is closed
    assert err.value.code == ErrorCodes.STREAM_CLOSED


def test_closed_streams_are_remembered_up_to_h2s_limit_oldest_first() -> None:
    server, client, s_events, c_events = connected()
    server.conn._closed_streams._size_limit = 3
    ids = []
    for _ in range(5):
        ids.append(client.get_next_available_stream_id())
        client.send_headers(ids[-1], GET, end_stream=True)
        shuttle(server, client, s_events, c_events)
        assert server.send_response(ids[-1], RESPONSE, BODY)
        shuttle(server, client, s_events, c_events)
    assert list(server.conn._closed_streams) == ids[-3:]


def test_a_whole_response_goes_out_in_two_frames_and_its_stream_is_closed() -> None:
    server, client, s_events, c_events = connected()
    ids = []
    for _ in range(3):
        ids.append(client.get_next_available_stream_id())
        client.send_headers(ids[-1], GET, end_stream=True)
    shuttle(server, client, s_events, c_events)
    window = server.conn.outbound_flow_control_window
    for stream_id in ids:
        assert server.send_response(stream_id, RESPONSE, BODY)
    out = server.data_to_send()
    assert len(out) == 3 * (9 + 9 + len(BODY)) + _blocks_length(out)  # HEADERS and DATA frames, nothing else
    assert server.conn.outbound_flow_control_window == window - 3 * len(BODY)
    c_events += client.receive_data(out)
    assert [(e.stream_id, [tuple(f) for f in e.headers]) for e in c_events if isinstance(e, ResponseReceived)] == [(i, RESPONSE) for i in ids]
    assert [(e.stream_id, e.data) for e in c_events if isinstance(e, DataReceived)] == [(i, BODY) for i in ids]
    assert [e.stream_id for e in c_events if isinstance(e, StreamEnded)] == ids
    for stream_id in ids:  # closed, as h2 would close it, and out of the table h2 counts open streams in
        assert stream_id not in server.conn.streams
        assert server.conn._closed_streams[stream_id] == StreamClosedBy.SEND_END_STREAM
        assert not server.is_open(stream_id)
        assert server.send_data(stream_id, b"late") == -1
        server.reset(stream_id)
        server.ack(stream_id, 0)
    assert server.data_to_send() == b""


def _blocks_length(out: bytes) -> int:
    """The payload bytes of the HEADERS frames in ``out``."""
    total = pos = 0
    while pos < len(out):
        length, kind = int.from_bytes(out[pos:pos + 3], "big"), out[pos + 3]
        if kind == 0x1:
            total += length
        pos += 9 + length
    return total


def test_a_whole_response_larger_than_a_frame_of_headers_goes_in_continuation_frames() -> None:
    server, client, s_events, c_events = connected()
    big = RESPONSE + [(b"x-big-%d" % i, b"%d" % i * 3000) for i in range(8)]  # ~24 KB of header block
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, GET, end_stream=True)
    shuttle(server, client, s_events, c_events)
    assert server.send_response(stream_id, big, BODY)
    shuttle(server, client, s_events, c_events)
    assert [[tuple(f) for f in e.headers] for e in c_events if isinstance(e, ResponseReceived)] == [big]
    assert [e.data for e in c_events if isinstance(e, DataReceived)] == [BODY]
    assert [e.stream_id for e in c_events if isinstance(e, StreamEnded)] == [stream_id]


@pytest.mark.parametrize("case", ["small window", "small frames", "request body coming", "informational", "head sent", "no body status line"])
def test_a_whole_response_is_refused_untouched_where_the_two_frame_form_does_not_apply(case: str) -> None:
    settings = {"small window": {"initial_window_size": 50}, "small frames": {}}.get(case, {})
    server, client, s_events, c_events = connected(**settings)
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, POST if case == "request body coming" else GET, end_stream=case != "request body coming")
    shuttle(server, client, s_events, c_events)
    headers, body = RESPONSE, BODY
    if case == "small frames":
        body = b"b" * (server.conn.max_outbound_frame_size + 1)
        server.conn.outbound_flow_control_window = server.conn.streams[stream_id].outbound_flow_control_window = 1 << 20
    elif case == "informational":
        headers = [(b":status", b"103"), (b"link", b"</a>")]
    elif case == "head sent":
        server.send_headers(stream_id, RESPONSE)
        server.data_to_send()
    elif case == "no body status line":
        headers = [(b"server", b"origin")]
    machine = vars(server.conn.streams[stream_id].state_machine).copy()
    window = server.conn.outbound_flow_control_window
    assert not server.send_response(stream_id, headers, body)
    assert server.data_to_send() == b""
    assert vars(server.conn.streams[stream_id].state_machine) == machine
    assert server.conn.outbound_flow_control_window == window


def test_a_client_endpoint_does_not_send_whole_responses() -> None:
    client = H2Endpoint(client=True)
    client.data_to_send()
    stream_id = client.next_stream_id()
    client.send_headers(stream_id, GET, end_stream=True)
    assert not client.send_response(stream_id, RESPONSE, BODY)


BLOCKS = [
    RESPONSE,
    RESPONSE[:3] + [(b"date", b"Sat, 21 Nov 2026 15:18:21 GMT")],
    RESPONSE[:3] + [(b"date", b"Sat, 21 Nov 2026 15:18:22 GMT")],
    [(b":status", b"404"), (b"etag", b'"abc"'), (b"content-length", b"0")],
    [(b":status", b"200"), (b"set-cookie", b"a=1"), (b"cache-control", b"no-store")],
    [(b":status", b"200"), (b"authorization", b"secret"), (b"x-v", b"v" * 300)],
]


@pytest.mark.parametrize("seed", range(6))
def test_repeated_blocks_encode_to_what_decodes_back_through_insertions_and_resizes(seed: int) -> None:
    rng = random.Random(seed)
    encoder, decoder = Encoder(), ReferenceDecoder()
    remembered = 0
    for _ in range(300):
        if rng.random() < 0.03:
            encoder.header_table_size = rng.choice([0, 100, 256, 4096])
        block = rng.choice(BLOCKS) if rng.random() < 0.9 else [(b"x-new", b"%d" % rng.randrange(1000))]
        assert [tuple(f) for f in decoder.decode(encoder.encode(list(block)), raw=True)] == block
        remembered = max(remembered, len(encoder._blocks))
    assert remembered  # the memo was in use


def test_a_remembered_block_is_not_reused_once_the_table_changed() -> None:
    encoder, decoder = Encoder(), ReferenceDecoder()
    first = encoder.encode(RESPONSE)  # inserts: not remembered
    second = encoder.encode(RESPONSE)  # indices only: remembered
    again = encoder.encode(RESPONSE)
    other = encoder.encode([(b"x-other", b"1")])  # an insertion moves every dynamic index
    third = encoder.encode(RESPONSE)
    assert again == second != first and third != second
    decoded = [[tuple(f) for f in decoder.decode(block, raw=True)] for block in (first, second, again, other, third)]
    assert decoded == [RESPONSE, RESPONSE, RESPONSE, [(b"x-other", b"1")], RESPONSE]


def test_a_field_marked_never_indexed_is_not_served_from_a_remembered_plain_block() -> None:
    encoder, decoder = Encoder(), ReferenceDecoder()
    block = [(b":status", b"200"), (b"x-token", b"t")]
    for _ in range(3):
        decoder.decode(encoder.encode(block), raw=True)
    sensitive = [(b":status", b"200"), NeverIndexedHeaderTuple(b"x-token", b"t")]
    assert sensitive == block  # equal as tuples, yet
    fields = decoder.decode(encoder.encode(sensitive), raw=True)
    assert [f.indexable for f in fields] == [True, False]


def test_remembered_blocks_are_bounded() -> None:
    encoder = Encoder()
    for i in range(300):
        block = [(b":status", b"200"), (b"x-n", b"%d" % i), (b"x-big", b"v" * (i * 20))]
        encoder.encode(block)
        encoder.encode(block)
    assert 0 < len(encoder._blocks) <= 64
    assert all(sum(len(n) + len(v) for n, v in key) <= 4096 for key in encoder._blocks)


REQUESTS = [
    GET,
    GET + [(b"cookie", b"a=1"), (b"cookie", b"b=2")],
    [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"a"), (b"host", b"b")],
    POST,
    [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"a")],
    [(b":method", b"CONNECT"), (b":authority", b"a:443")],
    GET + [(b"content-length", b"0")],
]


@pytest.mark.parametrize("end_stream", [True, False])
def test_remembered_request_heads_are_the_heads_request_head_makes(end_stream: bool) -> None:
    heads = RequestHeads()
    for _ in range(3):
        for block in REQUESTS:
            expected = request_head(list(block), end_stream)
            announced = expected.get(b"content-length") not in (None, b"0")
            got = heads(list(block), end_stream)
            if end_stream and announced:
                assert got is None
                continue
            assert got == expected
            got.headers.append((b"x-added", b"by a hook"))  # each head has its own headers
            got.body.length = -1 if got.body.length is not None else None
    assert len(heads._memo) == len(REQUESTS)


def test_remembered_request_heads_are_bounded() -> None:
    heads = RequestHeads()
    for i in range(200):
        heads(GET + [(b"x-n", b"%d" % i), (b"x-big", b"v" * (i * 30))], True)
    assert 0 < len(heads._memo) <= 32
    assert all(sum(len(n) + len(v) for n, v in key) <= 2048 for key in heads._memo)

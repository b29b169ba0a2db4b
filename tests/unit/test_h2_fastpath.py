"""The endpoint's lean paths (frames cut without hyperframe, packed HEADERS/DATA, the stream
count done near the limit only, memoised header validation) against plain h2 connections as
the peer: what one side sends, the other must see exactly, however the bytes are split."""

from __future__ import annotations

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes

from ferryman.protocol.h2 import ErrorCodes, H2ConnectionError, H2Endpoint, Malformed

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/small"), (b":authority", b"a.test"), (b"user-agent", b"test")]
RESPONSE = [(b":status", b"200"), (b"server", b"origin"), (b"content-type", b"text/plain"), (b"content-length", b"100")]
BODY = b"b" * 100


def plain(client: bool, **settings: int) -> H2Connection:
    conn = H2Connection(H2Configuration(client_side=client, header_encoding=None))
    conn.initiate_connection()
    if settings:
        conn.update_settings({getattr(SettingCodes, k.upper()): v for k, v in settings.items()})
    return conn


def shuttle(ours: H2Endpoint, peer: H2Connection, ours_events: list, peer_events: list, step: int = 0) -> None:
    """Move bytes both ways until both are quiet (bounded); ``step``: feed ours that many
    bytes at a time (frames cut across reads)."""
    for _ in range(50):
        to_ours, to_peer = peer.data_to_send(), ours.data_to_send()
        if not to_ours and not to_peer:
            return
        if to_ours:
            if step:
                for start in range(0, len(to_ours), step):
                    ours_events += ours.receive(to_ours[start:start + step])
            else:
                ours_events += ours.receive(to_ours)
        if to_peer:
            for event in peer.receive_data(to_peer):
                peer_events.append(event)
                if isinstance(event, DataReceived) and event.flow_controlled_length:
                    peer.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    raise AssertionError("endpoints kept talking")


def fields(block: list) -> list[tuple[bytes, bytes]]:
    return [tuple(field) for field in block]


@pytest.mark.parametrize("step", [0, 1, 7, 100])
def test_many_requests_and_responses_between_our_server_and_a_plain_client(step: int) -> None:
    server, client = H2Endpoint(client=False), plain(True)
    s_events: list = []
    c_events: list = []
    shuttle(server, client, s_events, c_events, step)
    sent = []
    for batch in range(5):
        for i in range(10):
            stream_id = client.get_next_available_stream_id()
            client.send_headers(stream_id, GET + [(b"x-batch", b"%d" % batch)], end_stream=True)
            sent.append(stream_id)
        shuttle(server, client, s_events, c_events, step)
        for event in [e for e in s_events if isinstance(e, RequestReceived)][-10:]:
            assert fields(event.headers) == GET + [(b"x-batch", b"%d" % batch)] and event.stream_ended is not None
            assert server.send_headers(event.stream_id, RESPONSE)
            assert server.send_data(event.stream_id, BODY, end_stream=True) == len(BODY)
        shuttle(server, client, s_events, c_events, step)
    heads = {e.stream_id: fields(e.headers) for e in c_events if isinstance(e, ResponseReceived)}
    bodies = {e.stream_id: e.data for e in c_events if isinstance(e, DataReceived)}
    ended = {e.stream_id for e in c_events if isinstance(e, StreamEnded)}
    assert sorted(heads) == sorted(bodies) == sorted(ended) == sent
    assert all(head == RESPONSE for head in heads.values()) and set(bodies.values()) == {BODY}
    assert not server.conn.streams or all(s.closed for s in server.conn.streams.values())


def test_our_client_against_a_plain_server_with_a_request_body_and_trailers() -> None:
    client, server = H2Endpoint(client=True), plain(False)
    c_events: list = []
    s_events: list = []
    shuttle(client, server, c_events, s_events)
    for round_ in range(3):
        stream_id = client.next_stream_id()
        assert client.send_headers(stream_id, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/up"), (b":authority", b"a")])
        assert client.send_data(stream_id, b"body%d" % round_) == 5
        assert client.send_headers(stream_id, [(b"x-trailer", b"t")], end_stream=True)
        shuttle(client, server, c_events, s_events)
        assert [e.data for e in s_events if isinstance(e, DataReceived)][-1] == b"body%d" % round_
        assert fields([e for e in s_events if isinstance(e, TrailersReceived)][-1].headers) == [(b"x-trailer", b"t")]
        server.send_headers(stream_id, [(b":status", b"200"), (b"content-length", b"2")])
        server.send_data(stream_id, b"ok", end_stream=True)
        shuttle(client, server, c_events, s_events)
        assert [e.data for e in c_events if isinstance(e, DataReceived)][-1] == b"ok"
        assert [e.stream_id for e in c_events if isinstance(e, StreamEnded)][-1] == stream_id


def test_a_head_request_accepts_a_content_length_without_data() -> None:
    client, server = H2Endpoint(client=True), plain(False)
    c_events: list = []
    s_events: list = []
    shuttle(client, server, c_events, s_events)
    stream_id = client.next_stream_id()
    client.send_headers(stream_id, [(b":method", b"HEAD"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")], end_stream=True)
    shuttle(client, server, c_events, s_events)
    server.send_headers(stream_id, [(b":status", b"200"), (b"content-length", b"100")], end_stream=True)
    shuttle(client, server, c_events, s_events)
    assert not [e for e in c_events if isinstance(e, Malformed)]
    assert [e.stream_id for e in c_events if isinstance(e, StreamEnded)] == [stream_id]


def test_priority_and_padding_take_the_general_path_and_arrive_intact() -> None:
    server, client = H2Endpoint(client=False), plain(True)
    s_events: list = []
    c_events: list = []
    shuttle(server, client, s_events, c_events)
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")], priority_weight=42)
    client.send_data(stream_id, b"padded", pad_length=10)
    client.send_data(stream_id, b"plain", end_stream=True)
    shuttle(server, client, s_events, c_events)
    [request] = [e for e in s_events if isinstance(e, RequestReceived)]
    assert request.priority_updated is not None and request.priority_updated.weight == 42
    data = [(e.data, e.flow_controlled_length) for e in s_events if isinstance(e, DataReceived)]
    assert data == [(b"padded", 17), (b"plain", 5)]


def test_header_blocks_larger_than_a_frame_go_in_continuation_frames_both_ways() -> None:
    server, client = H2Endpoint(client=False), plain(True)
    s_events: list = []
    c_events: list = []
    shuttle(server, client, s_events, c_events)
    big = [(b"x-big-%d" % i, b"%d" % i * 3000) for i in range(8)]  # ~24 KB: more than 16 KiB frames
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, GET + big, end_stream=True)
    shuttle(server, client, s_events, c_events, step=1000)
    [request] = [e for e in s_events if isinstance(e, RequestReceived)]
    assert fields(request.headers) == GET + big
    server.send_headers(stream_id, [(b":status", b"200")] + big, end_stream=True)
    shuttle(server, client, s_events, c_events)
    [response] = [e for e in c_events if isinstance(e, ResponseReceived)]
    assert fields(response.headers) == [(b":status", b"200")] + big


def test_a_peer_without_a_dynamic_table_gets_blocks_it_can_decode() -> None:
    server, client = H2Endpoint(client=False), plain(True, header_table_size=0)
    s_events: list = []
    c_events: list = []
    shuttle(server, client, s_events, c_events)
    assert [e for e in c_events if isinstance(e, SettingsAcknowledged)]
    for _ in range(3):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, GET, end_stream=True)
        shuttle(server, client, s_events, c_events)
        server.send_headers(stream_id, RESPONSE, end_stream=True)
        shuttle(server, client, s_events, c_events)
    assert [fields(e.headers) for e in c_events if isinstance(e, ResponseReceived)] == [RESPONSE] * 3
    assert server.conn.encoder.header_table_size == 0


def test_closed_streams_do_not_count_and_open_ones_do() -> None:
    server, client = H2Endpoint(client=False, max_streams=3), plain(True)
    s_events: list = []
    c_events: list = []
    shuttle(server, client, s_events, c_events)
    assert [e for e in s_events if isinstance(e, RemoteSettingsChanged)]
    for _ in range(10):  # one after the other: never more than one open
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, GET, end_stream=True)
        shuttle(server, client, s_events, c_events)
        server.send_headers(stream_id, RESPONSE[:1], end_stream=True)
        shuttle(server, client, s_events, c_events)
    assert len([e for e in s_events if isinstance(e, RequestReceived)]) == 10
    for _ in range(3):  # three open at once: the limit
        client.send_headers(client.get_next_available_stream_id(), GET, end_stream=True)
    shuttle(server, client, s_events, c_events)
    assert len([e for e in s_events if isinstance(e, RequestReceived)]) == 13
    client.local_settings.acknowledge()  # let the plain client open a fourth one
    client.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 10
    client.remote_settings.acknowledge()
    client.send_headers(client.get_next_available_stream_id(), GET, end_stream=True)
    with pytest.raises(H2ConnectionError):
        server.receive(client.data_to_send())


def test_a_remembered_valid_block_does_not_let_an_invalid_one_through() -> None:
    server, client = H2Endpoint(client=False), plain(True)
    client.config.validate_outbound_headers = False
    client.config.normalize_outbound_headers = False
    s_events: list = []
    c_events: list = []
    shuttle(server, client, s_events, c_events)
    for headers in (GET, GET, GET + [(b"X-Upper", b"1")], GET, GET + [(b"X-Upper", b"1")]):
        client.send_headers(client.get_next_available_stream_id(), headers, end_stream=True)
        shuttle(server, client, s_events, c_events)
    kinds = [type(e).__name__ for e in s_events if isinstance(e, (RequestReceived, Malformed))]
    assert kinds == ["RequestReceived", "RequestReceived", "Malformed", "RequestReceived", "Malformed"]
    assert [e.error_code for e in c_events if isinstance(e, StreamReset)] == [ErrorCodes.PROTOCOL_ERROR] * 2


def test_the_memory_of_valid_blocks_is_bounded() -> None:
    server, client = H2Endpoint(client=False, max_streams=1000), plain(True)
    s_events: list = []
    c_events: list = []
    shuttle(server, client, s_events, c_events)
    for i in range(100):
        client.send_headers(client.get_next_available_stream_id(), GET + [(b"x-n", b"%d" % i), (b"x-big", b"v" * (i * 50))], end_stream=True)
    shuttle(server, client, s_events, c_events)
    assert len([e for e in s_events if isinstance(e, RequestReceived)]) == 100
    assert 0 < len(server.conn._validated) <= 32

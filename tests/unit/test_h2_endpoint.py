"""The sans-IO HTTP/2 endpoint (ferryman.protocol.h2.endpoint): a server and a client
endpoint wired back to back in memory; malformed messages are stream errors."""

from __future__ import annotations

import pytest
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, ResponseReceived, StreamEnded, StreamReset
from support.h2_pair import shuttle as exchange

from ferryman.protocol.h2 import PREFACE, ErrorCodes, H2ConnectionError, H2Endpoint, Malformed

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a.test")]


def pair() -> tuple[H2Endpoint, H2Endpoint, list, list]:
    server, client = H2Endpoint(client=False), H2Endpoint(client=True)
    s_events, c_events = [], []
    exchange(server, client, s_events, c_events)
    return server, client, s_events, c_events


def raw_headers(client: H2Endpoint, headers: list, end: bool = True) -> int:
    """A header block the client's own validation would refuse (h2 does not check outbound here)."""
    stream_id = client.next_stream_id()
    client.send_headers(stream_id, headers, end_stream=end)
    return stream_id


def test_the_client_preface_starts_the_client_output() -> None:
    assert H2Endpoint(client=True).data_to_send().startswith(PREFACE)


@pytest.mark.parametrize("headers", [
    GET + [(b"X-Upper", b"1")],
    GET + [(b"connection", b"close")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")],
    GET + [(b":path", b"/again")],
    [(b":method", b"GET"), (b"x", b"1"), (b":scheme", b"http"), (b":path", b"/")],
])
def test_a_malformed_request_resets_its_stream_and_the_connection_goes_on(headers: list) -> None:
    server, client, s_events, c_events = pair()
    bad = raw_headers(client, headers)
    exchange(server, client, s_events, c_events)
    assert [e for e in s_events if isinstance(e, Malformed)][0].stream_id == bad
    assert not [e for e in s_events if isinstance(e, RequestReceived)]
    resets = [e for e in c_events if isinstance(e, StreamReset)]
    assert resets and resets[0].stream_id == bad and resets[0].error_code == ErrorCodes.PROTOCOL_ERROR
    good = raw_headers(client, GET)
    exchange(server, client, s_events, c_events)
    assert [e.stream_id for e in s_events if isinstance(e, RequestReceived)] == [good]
    server.send_headers(good, [(b":status", b"200")], end_stream=True)
    exchange(server, client, s_events, c_events)
    assert [e.stream_id for e in c_events if isinstance(e, ResponseReceived)] == [good]


def test_data_beyond_content_length_is_a_stream_error_and_its_window_is_returned() -> None:
    server, client, s_events, c_events = pair()
    stream = raw_headers(client, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a"), (b"content-length", b"2")], end=False)
    client.send_data(stream, b"toolong", end_stream=True)
    exchange(server, client, s_events, c_events)
    assert [e for e in s_events if isinstance(e, Malformed)]
    assert [e.error_code for e in c_events if isinstance(e, StreamReset)] == [ErrorCodes.PROTOCOL_ERROR]


def test_send_data_sends_what_the_window_allows() -> None:
    server, client, s_events, c_events = pair()
    stream = raw_headers(client, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")], end=False)
    exchange(server, client, s_events, c_events)
    window = client.window(stream)
    assert window == 256 * 1024  # the server's SETTINGS_INITIAL_WINDOW_SIZE
    sent = client.send_data(stream, b"x" * (window + 1000))
    assert sent == window and client.window(stream) == 0
    exchange(server, client, s_events, c_events)
    received = sum(e.flow_controlled_length for e in s_events if isinstance(e, DataReceived))
    assert received == window
    server.ack(stream, received)  # the credit comes back only now
    exchange(server, client, s_events, c_events)
    assert client.window(stream) > 0
    assert client.send_data(stream, b"y" * 10, end_stream=True) == 10
    exchange(server, client, s_events, c_events)
    assert [e.stream_id for e in s_events if isinstance(e, StreamEnded)] == [stream]


def test_a_frame_level_error_raises_with_a_goaway_queued() -> None:
    server, client, s_events, c_events = pair()
    with pytest.raises(H2ConnectionError) as failed:
        server.receive(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0
    assert failed.value.code == ErrorCodes.PROTOCOL_ERROR and "PROTOCOL_ERROR" in str(failed.value)
    c_events += client.receive(server.data_to_send())
    assert [e.error_code for e in c_events if isinstance(e, ConnectionTerminated)] == [ErrorCodes.PROTOCOL_ERROR]


def test_a_graceful_goaway_lets_open_streams_finish_on_both_sides() -> None:
    server, client, s_events, c_events = pair()
    first = raw_headers(client, GET)
    exchange(server, client, s_events, c_events)
    server.drain(first)
    exchange(server, client, s_events, c_events)
    [goaway] = [e for e in c_events if isinstance(e, ConnectionTerminated)]
    assert goaway.last_stream_id == first and goaway.error_code == ErrorCodes.NO_ERROR
    server.send_headers(first, [(b":status", b"200")], end_stream=False)  # after the GOAWAY, both sides still work
    assert server.send_data(first, b"done", end_stream=True) == 4
    exchange(server, client, s_events, c_events)
    assert [e.data for e in c_events if isinstance(e, DataReceived)] == [b"done"]
    assert [e.stream_id for e in c_events if isinstance(e, StreamEnded)] == [first]


def test_sends_on_a_closed_stream_are_refused_quietly() -> None:
    server, client, s_events, c_events = pair()
    stream = raw_headers(client, GET)
    exchange(server, client, s_events, c_events)
    server.reset(stream, ErrorCodes.CANCEL)
    assert server.send_data(stream, b"late") == -1
    assert not server.send_headers(stream, [(b":status", b"200")])
    assert not server.end_stream(stream)
    server.reset(stream)  # twice: nothing happens
    assert not server.is_open(stream)

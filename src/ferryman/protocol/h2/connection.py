"""h2's connection with two changes: malformed messages are stream errors, and the frames
of every request take lean paths.

* RFC 9113 §8.1.1: a malformed request or response (bad or missing pseudo-headers,
  connection-specific fields, uppercase names, a content-length the DATA frames do not
  match ...) resets its stream with PROTOCOL_ERROR and yields :class:`Malformed`; h2 itself
  would end the whole connection.
* Speed (measured: the HTTP/2 small-request benchmark spent most of its time in h2): the
  HEADERS and DATA frames every request sends and receives are cut and packed here, with
  the same state machine transitions, window accounting and errors as h2's own methods;
  HPACK goes through :mod:`.compression`; a header block validated once is not validated
  again. Every other frame, and anything unusual about these (padding, CONTINUATION, a
  frame cut across reads), goes through h2's own code.
* Per request, a server also skips h2's stream machinery where its outcome is known: a
  request block validated before opens its stream by setting what h2's ``receive_headers``
  would set (:meth:`Connection._request_received`); a whole small response goes out as
  HEADERS + DATA in one step (:meth:`Connection.send_response`); streams are built without
  running h2's constructors (:func:`_built_stream`, checked against them at import).
"""

from __future__ import annotations

from collections import OrderedDict
from struct import Struct
from typing import ClassVar

from h2.config import H2Configuration
from h2.connection import (
    AllowedStreamIDs,
    ConnectionInputs,
    ConnectionState,
    H2Connection,
)
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, RequestReceived, StreamEnded
from h2.exceptions import (
    DenialOfServiceError,
    FlowControlError,
    FrameTooLargeError,
    InvalidBodyLengthError,
    ProtocolError,
    StreamClosedError,
    StreamIDTooLowError,
    TooManyStreamsError,
)
from h2.stream import (
    H2Stream,
    H2StreamStateMachine,
    StreamClosedBy,
    StreamInputs,
    StreamState,
)
from h2.stream import _transitions as _STREAM_TRANSITIONS
from h2.utilities import (
    HeaderValidationFlags,
    authority_from_headers,
    extract_method_header,
    is_informational_response,
    validate_headers,
)
from h2.windows import WindowManager
from hpack.exceptions import HPACKError, OversizedHeaderListError
from hyperframe.frame import GoAwayFrame, RstStreamFrame

from .compression import Decoder, Encoder

__all__ = ["Connection", "Malformed"]


class Malformed:
    """A message RFC 9113 §8.1.1 calls malformed: its stream was reset with PROTOCOL_ERROR
    (already queued for sending); the connection carries on."""

    __slots__ = ("stream_id", "reason")

    def __init__(self, stream_id: int, reason: str) -> None:
        self.stream_id = stream_id
        self.reason = reason

    def __repr__(self) -> str:
        return f"<Malformed stream_id:{self.stream_id}, reason:{self.reason}>"


_FRAME = Struct(">HBBBL")  # a frame header: 24-bit length (as 16 + 8 bits), type, flags, stream id
_PRIORITY = Struct(">LB")  # a HEADERS frame's priority fields: E + stream dependency, weight
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
_VALIDATED_LIMIT, _VALIDATED_SIZE = 32, 2048  # header blocks remembered as valid, per connection: entries, bytes
# Connection states in which HEADERS and DATA, sent or received, change nothing (h2's state
# machine maps them to no side effect and the same state): no need to run the machine.
_OPEN = (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN)
# h2's validation flags for a request block received by a server (what _Stream builds for it)
_REQUEST_FLAGS = HeaderValidationFlags(is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False)
_IDLE, _STREAM_OPEN, _HALF_CLOSED_REMOTE, _CLOSED = StreamState.IDLE, StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE, StreamState.CLOSED
_new = object.__new__


def _flag_names(byte: int, defined: tuple[tuple[str, int], ...]) -> frozenset[str]:
    return frozenset(name for name, bit in defined if byte & bit)


_HEADERS_FLAGS = [_flag_names(b, (("END_STREAM", 0x1), ("END_HEADERS", 0x4), ("PADDED", 0x8), ("PRIORITY", 0x20))) for b in range(256)]
_DATA_FLAGS = [_flag_names(b, (("END_STREAM", 0x1), ("PADDED", 0x8))) for b in range(256)]


class _Received:
    """A received HEADERS or DATA frame without padding: the fields of hyperframe's frame
    objects that h2's handlers (and ours) read, filled in without hyperframe."""

    __slots__ = ("data", "depends_on", "exclusive", "flags", "flow_controlled_length", "stream_id", "stream_weight")

    def __init__(self, stream_id: int, flags: frozenset[str], data: bytes) -> None:
        self.stream_id = stream_id
        self.flags = flags
        self.data = data
        self.flow_controlled_length = len(data)


_ordered_set = OrderedDict.__setitem__
_SEND_END_STREAM = StreamClosedBy.SEND_END_STREAM


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    size = len(payload)
    return _FRAME.pack(size >> 8, size & 0xFF, kind, flags, stream_id) + payload


# h2's stream transitions keyed by the enum members' values: a tuple of ints hashes in C,
# a tuple of enum members calls Enum.__hash__ (Python) twice, on every input of every stream
_TRANSITIONS = {(state._value_, event._value_): step for (state, event), step in _STREAM_TRANSITIONS.items()}


class _Machine(H2StreamStateMachine):
    """h2's stream state machine with a cheaper transition lookup (same table, same errors)."""

    def process_input(self, input_: StreamInputs) -> list:
        try:
            func, target_state = _TRANSITIONS[self.state._value_, input_._value_]
        except (KeyError, AttributeError) as err:
            if not isinstance(input_, StreamInputs):
                raise ValueError("Input must be an instance of StreamInputs") from err  # noqa: TRY004 - as h2
            old_state = self.state
            self.state = StreamState.CLOSED
            raise ProtocolError(f"Invalid input {input_} in state {old_state}") from err
        previous_state = self.state
        self.state = target_state
        if func is None:
            return []
        try:
            return func(self, previous_state)
        except ProtocolError:
            self.state = StreamState.CLOSED
            raise
        except AssertionError as err:
            self.state = StreamState.CLOSED
            raise ProtocolError(err) from err


class _Stream(H2Stream):
    """h2's stream, remembering which received header blocks passed validation: a validated
    block (and the flags it was checked with) is valid the next time too."""

    validated: set  # the connection's: (fields, flags) of the blocks that passed validation
    _flags: ClassVar[dict] = {}  # (event type, client side) -> h2's validation flags (they depend on nothing else)

    def _build_hdr_validation_flags(self, events):  # type: ignore[no-untyped-def]
        key = (type(events[0]), bool(self.state_machine.client))
        flags = self._flags.get(key)
        if flags is None:
            flags = self._flags[key] = super()._build_hdr_validation_flags(events)
        return flags

    def _process_received_headers(self, headers, header_validation_flags, header_encoding):  # type: ignore[no-untyped-def]
        if self.config.normalize_inbound_headers or header_encoding:
            return super()._process_received_headers(headers, header_validation_flags, header_encoding)
        fields = list(headers)
        key = (tuple(fields), header_validation_flags)
        validated = self.validated
        if key not in validated:
            for _ in validate_headers(fields, header_validation_flags):  # raises for an invalid block
                pass  # (h2's checks pass the fields on unchanged)
            if sum(len(name) + len(value) for name, value in fields) <= _VALIDATED_SIZE:
                if len(validated) >= _VALIDATED_LIMIT:
                    validated.clear()
                validated.add(key)
        return fields


def _built_stream(stream_id: int, config: H2Configuration, inbound: int, outbound: int, frame_size: int | None, validated: set) -> _Stream:
    """A new stream with the attributes h2's constructors give it (and its state machine
    and window manager), set without running them: they cost microseconds per stream."""
    machine = _new(_Machine)
    machine.__dict__ = {
        "state": _IDLE, "stream_id": stream_id, "client": None, "headers_sent": None, "trailers_sent": None,
        "headers_received": None, "trailers_received": None, "stream_closed_by": None,
    }
    manager = _new(WindowManager)
    manager.__dict__ = {"max_window_size": inbound, "current_window_size": inbound, "_bytes_processed": 0}
    stream = _new(_Stream)
    stream.__dict__ = {
        "state_machine": machine, "stream_id": stream_id, "max_outbound_frame_size": frame_size,
        "request_method": None, "outbound_flow_control_window": outbound, "_inbound_window_manager": manager,
        "_expected_content_length": None, "_actual_content_length": 0, "_authority": None, "config": config,
        "validated": validated,
    }
    return stream


def _constructed_stream(stream_id: int, config: H2Configuration, inbound: int, outbound: int, frame_size: int | None, validated: set) -> _Stream:
    """A new stream made by h2's constructors."""
    stream = _Stream(stream_id, config=config, inbound_window_size=inbound, outbound_window_size=outbound)
    stream.validated = validated
    stream.state_machine.__class__ = _Machine
    stream.max_outbound_frame_size = frame_size
    return stream


def _same_streams() -> bool:
    """Whether :func:`_built_stream` makes what h2's constructors make (this h2 version's)."""
    config = H2Configuration()
    built, made = _built_stream(3, config, 5, 7, 11, set()), _constructed_stream(3, config, 5, 7, 11, set())
    parts = ("state_machine", "_inbound_window_manager")
    return (
        {k: v for k, v in vars(built).items() if k not in parts} == {k: v for k, v in vars(made).items() if k not in parts}
        and vars(built).keys() == vars(made).keys()
        and vars(built.state_machine) == vars(made.state_machine)
        and vars(built._inbound_window_manager) == vars(made._inbound_window_manager)
    )


_new_stream = _built_stream if _same_streams() else _constructed_stream


class Connection(H2Connection):
    """h2's connection, with malformed messages turned into stream errors, and leaner code
    for the frames of every request (HEADERS and DATA, both ways).

    Validation of a header block happens in the stream, after HPACK decoding (so the
    decoder's state stays in step) and after the stream was created or found: an error
    raised from that point on concerns that stream alone.

    The lean paths make the same state machine transitions and window accounting as h2's
    own methods, minus what does not apply here: per-frame debug logging (h2 builds a
    ``repr`` of every received frame for it), hyperframe objects for frames we send (their
    bytes are packed directly), counting the open streams on every new stream (done only
    when the stream table is as large as the limit), and work a repeated header block
    already went through (see :mod:`.compression` and :class:`_Stream`)."""

    _scope = 0  # the stream a HEADERS frame is being processed for, once it exists

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        self.encoder = Encoder()  # type: ignore[assignment]
        self.decoder = Decoder(self.DEFAULT_MAX_HEADER_LIST_SIZE)
        self._validated: set = set()
        self._inbound_ids = AllowedStreamIDs(not config.client_side)  # (an Enum call costs a microsecond)
        self._outbound_ids = AllowedStreamIDs(config.client_side)
        self._max_inbound: int | None = None  # our SETTINGS_MAX_CONCURRENT_STREAMS in force, once read
        self._client = config.client_side  # (h2's config attributes are Python descriptors)
        # a server receiving requests whose header blocks h2 passes on as they are: the lean path
        self._lean_requests = not config.client_side and not config.normalize_inbound_headers and not config.header_encoding
        self._windows: tuple[int, int] | None = None  # initial windows (ours, the peer's) in force, once read

    def _local_settings_acked(self):  # type: ignore[no-untyped-def]
        self._max_inbound = None  # our new SETTINGS are in force now
        self._windows = None
        return super()._local_settings_acked()

    def _receive_settings_frame(self, frame):  # type: ignore[no-untyped-def]
        self._windows = None  # the peer's initial window may change (or ours, on an ACK)
        return super()._receive_settings_frame(frame)

    def _begin_new_stream(self, stream_id, allowed_ids):  # type: ignore[no-untyped-def]
        """h2's, creating a :class:`_Stream` (see :func:`_built_stream`)."""
        outbound = stream_id % 2 == self._client
        highest_stream_id = self.highest_outbound_stream_id if outbound else self.highest_inbound_stream_id
        if stream_id <= highest_stream_id:
            raise StreamIDTooLowError(stream_id, highest_stream_id)
        if (stream_id % 2) != int(allowed_ids):
            raise ProtocolError("Invalid stream ID for peer.")
        windows = self._windows
        if windows is None:
            windows = self._windows = (self.local_settings.initial_window_size, self.remote_settings.initial_window_size)
        stream = _new_stream(stream_id, self.config, windows[0], windows[1], self.max_outbound_frame_size, self._validated)
        self.streams[stream_id] = stream
        if outbound:
            self.highest_outbound_stream_id = stream_id
        else:
            self.highest_inbound_stream_id = stream_id
        return stream

    def _get_or_create_stream(self, stream_id, allowed_ids):  # type: ignore[no-untyped-def]
        stream = self.streams.get(stream_id)
        if stream is None:
            stream = self._begin_new_stream(stream_id, allowed_ids)
        self._scope = stream_id
        return stream

    def receive_data(self, data):  # type: ignore[no-untyped-def]
        """h2's, with the frames of every request (HEADERS with the whole header block, DATA;
        no padding) cut from ``data`` directly. Anything else, and everything after it in
        ``data``, goes through h2's frame buffer, as do the bytes of an incomplete frame."""
        buffer = self.incoming_buffer
        if buffer._preamble_len or buffer._data or buffer._headers_buffer:
            return super().receive_data(data)
        if type(data) is not bytes:
            data = bytes(data)
        events: list = []
        size = len(data)
        pos = 0
        limit = self.max_inbound_frame_size
        try:
            while size - pos >= 9:
                high, low, kind, flags, stream_id = _FRAME.unpack_from(data, pos)
                length = (high << 8) | low
                end = pos + 9 + length
                stream_id &= 0x7FFFFFFF
                if end > size or length > limit or not stream_id or flags & _PADDED:
                    break
                if kind == _HEADERS and flags & _END_HEADERS:
                    if flags & _PRIORITY_FLAG:  # (the priority fields are read only then)
                        if length < 5:
                            break
                        depends_on, weight = _PRIORITY.unpack_from(data, pos + 9)
                        frame = _Received(stream_id, _HEADERS_FLAGS[flags], data[pos + 14:end])
                        frame.exclusive = bool(depends_on >> 31)
                        frame.depends_on = depends_on & 0x7FFFFFFF
                        frame.stream_weight = weight
                    else:
                        frame = _Received(stream_id, _HEADERS_FLAGS[flags], data[pos + 9:end])
                    handler = self._receive_headers_frame
                elif kind == _DATA:
                    frame = _Received(stream_id, _DATA_FLAGS[flags], data[pos + 9:end])
                    handler = self._receive_data_frame
                else:
                    break
                pos = end
                events.extend(self._dispatch(handler, frame))
        except ProtocolError as e:
            self._terminate_connection(e.error_code)
            raise
        if pos < size:
            events.extend(super().receive_data(data[pos:] if pos else data))
        return events

    def _receive_frame(self, frame):  # type: ignore[no-untyped-def]
        """h2's, without the trace log (which formats every frame even when nobody listens)."""
        return self._dispatch(self._frame_dispatch_table[frame.__class__], frame)

    def _dispatch(self, handler, frame):  # type: ignore[no-untyped-def]
        try:
            frames, events = handler(frame)
        except StreamClosedError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            if frames:
                self._prepare_for_sending(frames)
        return events

    def _receive_headers_frame(self, frame):  # type: ignore[no-untyped-def]
        self._scope = 0
        try:
            return self._headers_frame(frame)
        except (StreamClosedError, TooManyStreamsError):
            raise
        except ProtocolError as exc:
            if self._scope != frame.stream_id or exc.error_code != ErrorCodes.PROTOCOL_ERROR:
                raise
            return self._malformed(frame.stream_id, str(exc), 0)

    def _headers_frame(self, frame):  # type: ignore[no-untyped-def]
        """h2's ``_receive_headers_frame``; the open streams are counted only when there may
        be too many (the count is at most the size of the stream table)."""
        streams = self.streams
        if frame.stream_id not in streams:
            max_open_streams = self._max_inbound
            if max_open_streams is None:
                max_open_streams = self._max_inbound = self.local_settings.max_concurrent_streams
            if len(streams) >= max_open_streams:
                value = self.open_inbound_streams
                if value + 1 > max_open_streams:
                    raise TooManyStreamsError(f"Max inbound streams is {max_open_streams}, {value} open")
        try:
            headers = self.decoder.decode(frame.data, raw=True)
        except OversizedHeaderListError as e:
            raise DenialOfServiceError(f"Oversized header block: {e}") from e
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as e:
            raise ProtocolError(f"Error decoding header block: {e}") from e
        events = [] if self.state_machine.state in _OPEN else self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        flags = frame.flags
        if self._lean_requests and frame.stream_id not in streams and "PRIORITY" not in flags and (tuple(headers), _REQUEST_FLAGS) in self._validated:
            return [], events + self._request_received(frame.stream_id, headers, "END_STREAM" in flags)
        stream = self._get_or_create_stream(frame.stream_id, self._inbound_ids)
        frames, stream_events = stream.receive_headers(headers, "END_STREAM" in flags, self.config.header_encoding)
        if "PRIORITY" in flags:
            _, p_events = self._receive_priority_frame(frame)
            stream_events[0].priority_updated = p_events[0]
            stream_events.extend(p_events)
        return frames, events + stream_events

    def _request_received(self, stream_id: int, headers: list, end_stream: bool) -> list:
        """A new stream opened by a request block that passed validation before (so it passes
        again): what h2's ``receive_headers`` does for it (IDLE -> OPEN, and -> HALF_CLOSED_REMOTE
        with END_STREAM; the request's content-length, if a body follows), without running
        the state machine or the checks."""
        stream = self._begin_new_stream(stream_id, self._inbound_ids)
        self._scope = stream_id
        machine = stream.state_machine
        machine.client = False
        machine.headers_received = True
        event = _new(RequestReceived)
        event.stream_id = stream_id
        event.headers = headers
        event.priority_updated = None
        if end_stream:
            machine.state = _HALF_CLOSED_REMOTE
            ended = _new(StreamEnded)
            ended.stream_id = stream_id
            event.stream_ended = ended
            return [event, ended]
        machine.state = _STREAM_OPEN
        event.stream_ended = None
        stream._initialize_content_length(headers)
        return [event]

    # sending: the same transitions and accounting as h2's send_headers / send_data ---------------
    def send_headers(self, stream_id, headers, end_stream=False, priority_weight=None, priority_depends_on=None, priority_exclusive=None):  # type: ignore[no-untyped-def]
        if priority_weight is not None or priority_depends_on is not None or priority_exclusive is not None:
            return super().send_headers(stream_id, headers, end_stream, priority_weight, priority_depends_on, priority_exclusive)
        streams = self.streams
        if stream_id not in streams:
            max_open_streams = self.remote_settings.max_concurrent_streams
            if len(streams) >= max_open_streams:
                value = self.open_outbound_streams
                if value + 1 > max_open_streams:
                    raise TooManyStreamsError(f"Max outbound streams is {max_open_streams}, {value} open")
        if self.state_machine.state not in _OPEN:
            self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        stream = streams.get(stream_id)
        if stream is None:
            stream = self._begin_new_stream(stream_id, self._outbound_ids)
        machine = stream.state_machine
        client = machine.client
        if client:
            informational = False
        elif headers and headers[0][0] == b":status":  # where response_block puts it
            informational = headers[0][1][:1] == b"1"
        else:
            informational = is_informational_response(headers)
        if informational:
            if end_stream:
                raise ProtocolError("Cannot set END_STREAM on informational responses.")
            machine.process_input(StreamInputs.SEND_INFORMATIONAL_HEADERS)
        else:
            machine.process_input(StreamInputs.SEND_HEADERS)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        elif machine.trailers_sent:
            raise ProtocolError("Trailers must have END_STREAM set.")
        block = self.encoder.encode(headers)
        if client:  # the request's method decides whether its response has a body (HEAD)
            if stream._authority is None:
                stream._authority = authority_from_headers(headers)
            stream.request_method = extract_method_header(headers)
        else:  # a response block has no :method
            stream.request_method = None
        self._send_block(stream_id, block, _END_STREAM if end_stream else 0)
        return None

    def _send_block(self, stream_id: int, block: bytes, flags: int) -> None:
        """A header block: HEADERS, plus CONTINUATION frames if it exceeds the frame size."""
        stream = self.streams[stream_id]
        limit = stream.max_outbound_frame_size or self.max_outbound_frame_size
        if len(block) <= limit:
            self._data_to_send += _frame(_HEADERS, flags | _END_HEADERS, stream_id, block)
            return
        out = self._data_to_send
        out += _frame(_HEADERS, flags, stream_id, block[:limit])
        for start in range(limit, len(block), limit):
            out += _frame(_CONTINUATION, _END_HEADERS if start + limit >= len(block) else 0, stream_id, block[start:start + limit])

    def send_response(self, stream_id: int, headers: list, body: bytes) -> bool:
        """A whole final response: HEADERS (CONTINUATION too if the block exceeds a frame) and
        one DATA with END_STREAM, on a server stream whose request ended and that sent nothing
        yet (the usual small response); False, with nothing sent, when anything differs (the
        caller then uses send_headers and send_data). The same transitions and accounting as
        those two (HALF_CLOSED_REMOTE -> CLOSED, closed by SEND_END_STREAM)."""
        stream = self.streams.get(stream_id)
        if stream is None or self._client:
            return False
        machine = stream.state_machine
        size = len(body)
        if (
            machine.state is not _HALF_CLOSED_REMOTE or machine.headers_sent or machine.client is not False
            or size > self.outbound_flow_control_window or size > stream.outbound_flow_control_window
            or size > self.max_outbound_frame_size or self.state_machine.state not in _OPEN
            or not headers or headers[0][0] != b":status" or headers[0][1][:1] == b"1"
        ):
            return False
        block = self.encoder.encode(headers)
        length = len(block)
        if length > (stream.max_outbound_frame_size or self.max_outbound_frame_size):
            self._send_block(stream_id, block, 0)  # (encoded: the block must go out, in pieces)
        else:
            self._data_to_send += _FRAME.pack(length >> 8, length & 0xFF, _HEADERS, _END_HEADERS, stream_id) + block
        machine.headers_sent = True
        machine.state = _CLOSED
        machine.stream_closed_by = StreamClosedBy.SEND_END_STREAM
        stream.request_method = None
        # closed: out of the stream table now, as h2 moves closed streams when it counts the
        # open ones (which it would otherwise do by walking a table full of closed streams)
        del self.streams[stream_id]
        closed = self._closed_streams  # h2's SizeLimitDict, filled as its __setitem__ would (two Python calls less)
        _ordered_set(closed, stream_id, _SEND_END_STREAM)
        if closed._size_limit is not None and len(closed) > closed._size_limit:
            closed.popitem(last=False)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        out = self._data_to_send
        out += _FRAME.pack(size >> 8, size & 0xFF, _DATA, _END_STREAM, stream_id)
        out += body
        return True

    def send_data(self, stream_id, data, end_stream=False, pad_length=None):  # type: ignore[no-untyped-def]
        stream = self.streams.get(stream_id)
        if stream is None or pad_length is not None:
            return super().send_data(stream_id, data, end_stream, pad_length)
        size = len(data)
        if size and size > min(self.outbound_flow_control_window, stream.outbound_flow_control_window):
            raise FlowControlError(f"Cannot send {size} bytes, flow control window is {self.local_flow_control_window(stream_id)}")
        if size > self.max_outbound_frame_size:
            raise FrameTooLargeError(f"Cannot send frame size {size}, max frame size is {self.max_outbound_frame_size}")
        if self.state_machine.state not in _OPEN:
            self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_DATA)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        out = self._data_to_send
        out += _FRAME.pack(size >> 8, size & 0xFF, _DATA, _END_STREAM if end_stream else 0, stream_id)
        out += data
        return None

    def _receive_data_frame(self, frame):  # type: ignore[no-untyped-def]
        try:
            return super()._receive_data_frame(frame)
        except InvalidBodyLengthError as exc:
            return self._malformed(frame.stream_id, str(exc), frame.flow_controlled_length)

    def _receive_goaway_frame(self, frame):  # type: ignore[no-untyped-def]
        """RFC 9113 §6.8: streams up to the GOAWAY's last stream id may still complete. h2
        would close its side at once (dropping their responses and our queued frames); here
        the connection goes on and the caller opens no new stream on it."""
        event = ConnectionTerminated()
        event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def announce_goaway(self, code: int, last_stream_id: int, reason: bytes) -> None:
        """A GOAWAY that leaves the connection open: streams up to ``last_stream_id`` go on
        (h2's close_connection would refuse to send anything more on them)."""
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = code
        frame.additional_data = reason
        self._prepare_for_sending([frame])

    def _malformed(self, stream_id: int, reason: str, consumed: int):  # type: ignore[no-untyped-def]
        self.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
        if consumed:  # the stream is gone but the connection window still counts these bytes
            self.acknowledge_received_data(consumed, stream_id)
        return [], [Malformed(stream_id, reason)]

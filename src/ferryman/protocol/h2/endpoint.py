"""One HTTP/2 connection, sans-IO: an adapter over python-hyper ``h2``.

Bytes go in through :meth:`H2Endpoint.receive` (h2 events come out, plus :class:`Malformed`)
and out through :meth:`H2Endpoint.data_to_send`. What this adds to h2:

* RFC 9113 §8.1.1: a malformed request or response is a *stream* error (see
  :mod:`.connection`): the stream is reset with PROTOCOL_ERROR and the rest of the
  connection keeps serving (h2 itself would end the whole connection).
* Sending DATA within the peer's flow-control windows and frame size: :meth:`send_data`
  sends what the windows allow and says how much; the caller keeps the rest.
* Credit: received DATA is never acknowledged automatically; the caller calls :meth:`ack`
  once the bytes were accepted by the other side (see :mod:`.credit`).
* Speed: the frames every request sends and receives take lean paths (see
  :mod:`.connection`).
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings

from .connection import Connection, Malformed

__all__ = ["PREFACE", "H2ConnectionError", "H2Endpoint", "Malformed", "ErrorCodes"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # the client connection preface (RFC 9113 §3.4)


class H2ConnectionError(Exception):
    """A connection error: a GOAWAY with ``code`` is queued; send it, then close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        try:
            name = ErrorCodes(self.code).name
        except ValueError:
            name = str(self.code)
        return f"{name}: {self.reason}"


class H2Endpoint:
    """One side of an HTTP/2 connection (``client=True`` for upstream connections).

    ``max_streams``: the SETTINGS_MAX_CONCURRENT_STREAMS we allow the peer to open.
    ``stream_window`` / ``connection_window``: the receive windows we grant (the most a peer
    can send before our credit comes back). ``max_header_list``: SETTINGS_MAX_HEADER_LIST_SIZE.
    """

    __slots__ = ("conn", "client")

    def __init__(
        self,
        *,
        client: bool,
        max_streams: int = 100,
        stream_window: int = 256 * 1024,
        connection_window: int = 1024 * 1024,
        max_header_list: int = 65536,
    ) -> None:
        config = H2Configuration(
            client_side=client,
            header_encoding=None,
            validate_inbound_headers=True,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,  # heads we send are built by .headers (lowercase, no hop-by-hop)
            normalize_outbound_headers=False,
        )
        conn = self.conn = Connection(config)
        self.client = client
        values = {
            SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list,
            SettingCodes.INITIAL_WINDOW_SIZE: stream_window,
        }
        if client:
            values[SettingCodes.ENABLE_PUSH] = 0
        conn.local_settings = Settings(client=client, initial_values=values)
        conn.decoder.max_header_list_size = max_header_list
        conn.initiate_connection()
        extra = connection_window - 65535
        if extra > 0:
            conn.increment_flow_control_window(extra)

    # receiving -----------------------------------------------------------------------------
    def receive(self, data: bytes) -> list:
        """h2 events (and :class:`Malformed`) for ``data``; raises :class:`H2ConnectionError`
        for a connection error (a GOAWAY is then queued)."""
        try:
            return self.conn.receive_data(data)
        except ProtocolError as exc:
            return self._connection_error(exc)

    def _connection_error(self, exc: ProtocolError) -> list:
        code = getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR)
        raise H2ConnectionError(int(code), str(exc) or type(exc).__name__) from exc

    def ack(self, stream_id: int, size: int) -> None:
        """``size`` flow-controlled bytes of ``stream_id`` were accepted: return the credit
        (WINDOW_UPDATEs go out once a useful amount accumulated)."""
        if size:
            self.conn.acknowledge_received_data(size, stream_id)

    # sending --------------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()

    def next_stream_id(self) -> int:
        return self.conn.get_next_available_stream_id()

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False) -> bool:
        """A header block (head or trailers); False when the stream is already closed."""
        try:
            self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        except StreamClosedError:
            return False
        return True

    def send_response(self, stream_id: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """A whole final response (header block and a non-empty body): HEADERS, then one DATA
        frame with END_STREAM, when the windows and the frame size take the body and the
        stream's request has ended; False, with nothing sent, otherwise (then send_headers and
        send_data). The stream is closed and forgotten as h2 forgets closed streams."""
        return self.conn.send_response(stream_id, headers, body)

    def window(self, stream_id: int) -> int:
        """Bytes of DATA the peer accepts on ``stream_id`` now (stream and connection windows)."""
        try:
            return self.conn.local_flow_control_window(stream_id)
        except StreamClosedError:
            return 0

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> int:
        """Send as much of ``data`` as the windows allow, in frames of the peer's maximum
        size; returns the bytes sent (``end_stream`` applies only if all of it went).
        -1: the stream is closed."""
        conn = self.conn
        size = len(data)
        try:
            stream = conn.streams.get(stream_id)
            if stream is None:
                window = conn.local_flow_control_window(stream_id)  # raises what h2 raises
            else:
                window = min(conn.outbound_flow_control_window, stream.outbound_flow_control_window)
            if size == 0:
                if end_stream:
                    conn.end_stream(stream_id)
                return 0
            frame = conn.max_outbound_frame_size
            if size <= window and size <= frame:  # the usual case: one frame
                conn.send_data(stream_id, data, end_stream=end_stream)
                return size
            view = memoryview(data)
            sent = 0
            while sent < size and window > 0:
                n = min(window, frame, size - sent)
                conn.send_data(stream_id, view[sent:sent + n], end_stream=end_stream and sent + n == size)
                sent += n
                window -= n
            return sent
        except StreamClosedError:
            return -1

    def end_stream(self, stream_id: int) -> bool:
        try:
            self.conn.end_stream(stream_id)
        except StreamClosedError:
            return False
        return True

    def reset(self, stream_id: int, code: int = ErrorCodes.CANCEL) -> None:
        """RST_STREAM, unless the stream is already closed."""
        try:
            self.conn.reset_stream(stream_id, code)
        except (StreamClosedError, ProtocolError):
            pass

    def goaway(self, code: int = ErrorCodes.NO_ERROR, last_stream_id: int | None = None, reason: bytes = b"") -> None:
        """GOAWAY and the end of the connection: nothing more may be sent after it."""
        try:
            self.conn.close_connection(code, additional_data=reason or None, last_stream_id=last_stream_id)
        except ProtocolError:
            pass

    def drain(self, last_stream_id: int, reason: bytes = b"") -> None:
        """Graceful GOAWAY (NO_ERROR): no stream above ``last_stream_id`` will be processed,
        the ones up to it finish; the caller refuses newer streams and closes at the end."""
        self.conn.announce_goaway(ErrorCodes.NO_ERROR, last_stream_id, reason)

    @property
    def highest_inbound_stream_id(self) -> int:
        return self.conn.highest_inbound_stream_id

    @property
    def remote_max_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (h2's default until it tells)."""
        return self.conn.remote_settings.max_concurrent_streams

    def is_open(self, stream_id: int) -> bool:
        stream = self.conn.streams.get(stream_id)
        return stream is not None and not stream.closed

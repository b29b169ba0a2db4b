"""Sending a stream's queued DATA as far as HTTP/2 flow control allows (client and upstream
streams share it)."""

from __future__ import annotations

from collections import deque
from typing import Any


def send_queued(conn: Any, stream_id: int, out: deque[bytes]) -> bool:
    """Send ``out``'s chunks on ``stream_id`` while the windows and the transport allow; a
    chunk only partly sent keeps its rest at the front. True once ``out`` is empty. The
    stream being gone (``send_data`` < 0) drops what waits. ``conn``: the protocol owning the
    h2 endpoint (``endpoint``, ``write_blocked``, ``schedule_flush``)."""
    endpoint = conn.endpoint
    while out and not conn.write_blocked:
        data = out[0]
        sent = endpoint.send_data(stream_id, data)
        if sent < 0:
            out.clear()
            break
        if sent < len(data):
            out[0] = data[sent:]
            break
        out.popleft()
    conn.schedule_flush()
    return not out

"""Helpers shared by the HTTP/1.1 codec tests."""

from __future__ import annotations

from ferryman.protocol.h1.events import Data
from ferryman.protocol.h1.parser import RequestParser, ResponseParser


def normalize(events: list[object]) -> list[object]:
    """Data merged into bytes (how a body was cut into events is not part of the contract)."""
    out: list[object] = []
    for ev in events:
        if isinstance(ev, Data):
            piece = bytes(ev.data)
            assert piece, "empty Data event"
            if out and isinstance(out[-1], bytes):
                out[-1] += piece
            else:
                out.append(piece)
        else:
            out.append(ev)
    return out


def feed_all(parser: RequestParser | ResponseParser, *pieces: bytes) -> list[object]:
    events: list[object] = []
    for piece in pieces:
        events += parser.feed(piece)
    return normalize(events)

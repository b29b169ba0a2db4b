"""An HTTP/1.1 connection to a backend: sends request heads and bodies, parses responses,
and goes back to the pool after a complete exchange.

Response events are pushed to the current :class:`Exchange`-like ``listener`` as they are
parsed, so response bodies stream by callbacks (no coroutine per chunk).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

from ..protocol.h1.events import Data, EndOfMessage, H1Error, ResponseHead, Trailers
from ..protocol.h1.parser import ResponseParser


class UpstreamH1(asyncio.Protocol):
    """One upstream connection. ``listener`` receives ``on_upstream_*`` callbacks."""

    h2 = False  # see UpstreamH2Stream: the exchange frames request bodies itself (chunked)

    def __init__(self, pool_key: Hashable, peer_name: str) -> None:
        self.pool_key = pool_key
        self.peer_name = peer_name
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser()
        self.listener: Any = None
        self.pool: Any = None  # set while idle in a pool
        self.idle_deadline = 0.0  # while pooled: when it is closed as idle
        self.max_idle: int | None = None  # its upstream's pool_size (None: the pool's default)
        self.idle_timeout: float | None = None  # its upstream's pool_idle_timeout
        self.alive = True
        self.keep_alive = True  # cleared by "Connection: close", HTTP/1.0, read-until-close
        self.received = 0  # bytes received for the current exchange
        self.requests = 0  # exchanges completed on this connection
        self.write_paused = False

    # pool interface ------------------------------------------------------------------------
    def is_reusable(self) -> bool:
        return self.alive and self.keep_alive and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.alive = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.abort()

    # exchange ------------------------------------------------------------------------------
    def begin(self, listener: Any, method: bytes) -> None:
        self.listener = listener
        self.received = 0
        self.parser.expect(method)

    def finish(self) -> None:
        self.listener = None
        self.requests += 1

    def write(self, data: bytes | memoryview) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def writelines(self, parts: list[bytes | memoryview]) -> None:
        self.transport.writelines(parts)  # type: ignore[union-attr]

    # asyncio callbacks -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        listener = self.listener
        if listener is None:  # idle: the upstream spoke out of turn or is closing
            self.alive = False
            if self.pool is not None:
                self.pool.discard(self)
            self.close()
            return
        self.received += len(data)
        if listener.tunnel:
            listener.on_upstream_tunnel_data(data)
            return
        try:
            events = self.parser.feed(data)
        except H1Error as exc:
            self.alive = False
            listener.on_upstream_error(exc)
            return
        self._dispatch(listener, events)

    def _dispatch(self, listener: Any, events: list) -> None:
        for event in events:
            kind = type(event)
            if kind is Data:
                listener.on_upstream_body(event.data)
            elif kind is ResponseHead:
                if not event.keep_alive:
                    self.keep_alive = False
                listener.on_upstream_head(event)
            elif kind is EndOfMessage:
                listener.on_upstream_end()
            elif kind is Trailers:
                listener.on_upstream_trailers(event.headers)
            if self.listener is not listener:
                return  # the exchange ended (or switched protocols) on this event

    def eof_received(self) -> bool:
        listener = self.listener
        self.alive = False
        if listener is not None and not listener.tunnel:
            try:
                events = self.parser.feed_eof()
            except H1Error as exc:
                listener.on_upstream_error(exc)
                return False
            self._dispatch(listener, events)
        elif listener is not None:
            listener.on_upstream_tunnel_eof()
            return self.transport is not None and self.transport.can_write_eof()  # TLS cannot half-close
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self.pool is not None:
            self.pool.discard(self)
        listener = self.listener
        if listener is not None:
            self.listener = None
            listener.on_upstream_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.listener is not None:
            self.listener.on_upstream_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.listener is not None:
            self.listener.on_upstream_write_resumed()

"""Take the plain socket out of an asyncio transport, so an HTTP connection that became a
tunnel (101 Switching Protocols, CONNECT) can move to the zero-copy splice pump."""

from __future__ import annotations

import asyncio
import os
import socket

FLUSH_POLL = 0.002  # seconds between checks that a transport's write buffer drained


def can_detach(transport: asyncio.BaseTransport | None) -> bool:
    """True for a live transport over a plain TCP/Unix socket (not TLS)."""
    if transport is None or transport.is_closing() or transport.get_extra_info("sslcontext") is not None:
        return False
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.type == socket.SOCK_STREAM


def pause(transport: asyncio.Transport) -> None:
    """Stop reading now: bytes not yet read stay in the kernel for the new owner."""
    if transport.is_reading():
        transport.pause_reading()


async def detach(transport: asyncio.Transport, deadline: float) -> socket.socket | None:
    """Wait until ``transport`` wrote everything (at most until loop time ``deadline``), then
    return a duplicate of its socket and abort the transport (closing only its own fd: the
    connection lives on in the duplicate). Call :func:`pause` first. The protocol sees
    ``connection_lost`` and must ignore it. None when the buffer did not drain in time or
    the connection closed meanwhile."""
    loop = asyncio.get_running_loop()
    while transport.get_write_buffer_size():
        if transport.is_closing() or loop.time() >= deadline:
            return None
        await asyncio.sleep(FLUSH_POLL)
    if transport.is_closing():
        return None
    raw = transport.get_extra_info("socket")
    sock = socket.socket(raw.family, raw.type, raw.proto, fileno=os.dup(raw.fileno()))
    sock.setblocking(False)
    transport.abort()
    return sock

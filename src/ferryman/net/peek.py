"""Reading the first bytes of a raw socket without taking more than they are: a PROXY header
before TLS, a ClientHello for SNI routing. What follows stays queued in the kernel for the
next reader (OpenSSL, the splice pump)."""

from __future__ import annotations

import asyncio
import socket


from ..errors import ErrorKind, ErrorSource, ProxyError
from ..protocol import proxy_protocol
from .reactor import EPOLLIN, EPOLLONESHOT, reactor_for

PROXY_HEADER_MAX = proxy_protocol.V2_DEFAULT_MAX_SIZE


def recv_exactly(sock: socket.socket, size: int, what: str) -> bytes:
    """Consume ``size`` bytes already seen with MSG_PEEK (they are queued)."""
    out = bytearray()
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        if not chunk:
            raise ProxyError(ErrorKind.CONNECTION_CLOSED, ErrorSource.DOWNSTREAM, context=f"peeked {what} bytes vanished")
        out += chunk
    return bytes(out)


async def wait_readable(loop: asyncio.AbstractEventLoop, sock: socket.socket, deadline: float, what: str) -> None:
    """One-shot wait in the loop's reactor (a peeked socket stays readable: never wait with
    unread peeked bytes). ProxyError(READ_TIMEOUT, "no complete WHAT") at ``deadline``."""
    reactor = reactor_for(loop)
    fd = sock.fileno()
    ready = loop.create_future()
    reactor.register(fd, EPOLLIN | EPOLLONESHOT, lambda events: ready.done() or ready.set_result(None))
    timer = loop.call_at(deadline, lambda: ready.done() or ready.set_exception(TimeoutError()))
    try:
        await ready
    except TimeoutError as exc:
        reactor.forget(fd)
        raise ProxyError(ErrorKind.READ_TIMEOUT, ErrorSource.DOWNSTREAM, context=f"no complete {what}") from exc
    except BaseException:
        reactor.forget(fd)
        raise
    finally:
        timer.cancel()
    reactor.park(fd)


async def peek(sock: socket.socket, size: int, deadline: float, what: str, timeout: float, taken: int) -> bytes:
    """Up to ``size`` bytes queued on ``sock``, left there (MSG_PEEK), waiting for some until
    ``deadline``. ``taken``: bytes of ``what`` consumed before (for the message). ProxyError
    on a reset, an EOF or the deadline."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = sock.recv(max(1, size), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            await wait_readable(loop, sock, deadline, f"{what} within {timeout:g}s")
            continue
        except OSError as exc:
            raise ProxyError(ErrorKind.CONNECTION_RESET, ErrorSource.DOWNSTREAM, context=f"client reset the connection before its {what} ended") from exc
        if not data:
            raise ProxyError(ErrorKind.CONNECTION_CLOSED, ErrorSource.DOWNSTREAM, context=f"client closed the connection after {taken} bytes, before its {what} ended")
        return data


async def read_proxy_header(sock: socket.socket, *, timeout: float) -> proxy_protocol.ProxyHeader:
    """The PROXY v1/v2 header a connection starts with, and not one byte more (TLS follows).

    Peeks; once the header is complete only its bytes are consumed. The pieces of a header
    that arrives in several reads are consumed as they come (they are all header bytes).
    Raises ProxyError for a malformed header, EOF, or no complete header within ``timeout``.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    taken = bytearray()
    while True:
        data = await peek(sock, PROXY_HEADER_MAX - len(taken), deadline, "PROXY header", timeout, len(taken))
        seen = taken + data
        try:
            header, used = proxy_protocol.parse(seen)
        except proxy_protocol.ProxyProtocolError as exc:
            raise ProxyError(ErrorKind.PROTOCOL_ERROR, ErrorSource.DOWNSTREAM, context=f"bad PROXY header: {exc}") from exc
        if header is not None:
            recv_exactly(sock, used - len(taken), "PROXY header")
            return header
        if len(seen) >= PROXY_HEADER_MAX:
            raise ProxyError(ErrorKind.PROTOCOL_ERROR, ErrorSource.DOWNSTREAM, context=f"no complete PROXY header in {PROXY_HEADER_MAX} bytes")
        taken += recv_exactly(sock, len(data), "PROXY header")  # incomplete: all of it is header

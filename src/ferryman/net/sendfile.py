"""``send_file``: copy a region of a file to a socket with sendfile(2), kernel to kernel.

Why: a static file body then never passes through Python memory, whatever its size. The
socket is non-blocking; when its send buffer is full the coroutine waits in the loop's
:class:`~ferryman.net.reactor.Reactor` (one one-shot EPOLLOUT registration, the way a
connect waits) instead of holding the loop.
"""

from __future__ import annotations

import asyncio
import os

from .reactor import Reactor, reactor_for

#: after this many bytes sent without the socket ever filling up (a fast reader), yield to
#: the loop once so other connections are not starved by one long transfer
YIELD_EVERY = 4 * 1024 * 1024


async def send_file(
    sock_fd: int,
    file_fd: int,
    offset: int,
    count: int,
    reactor: Reactor | None = None,
    *,
    timeout: float | None = None,
) -> int:
    """Send ``count`` bytes of ``file_fd`` from ``offset`` to the NON-BLOCKING socket ``sock_fd``.

    Returns the bytes sent: ``count``, or fewer only when the file ended early (it shrank
    since the caller measured it; the caller must then abort the connection, the framing it
    announced is broken). Raises ``ConnectionError`` (e.g. ``BrokenPipeError``,
    ``ConnectionResetError``) or another ``OSError`` when the peer goes away or the socket
    fails, and ``TimeoutError`` when a wait for the socket to drain lasts ``timeout`` seconds
    (None: no limit). Neither fd is closed here and the file offset is not moved.

    ``reactor`` defaults to the running loop's. While this runs, ``sock_fd`` must not be
    registered in that reactor for anything else; afterwards it is left parked there.
    """
    if count <= 0:
        return 0
    loop = asyncio.get_running_loop()
    if reactor is None:
        reactor = reactor_for(loop)
    sent = 0
    unyielded = 0
    while sent < count:
        try:
            n = os.sendfile(sock_fd, file_fd, offset + sent, count - sent)
        except BlockingIOError:
            deadline = loop.time() + timeout if timeout is not None else None
            await reactor.wait_writable_once(sock_fd, deadline)
            unyielded = 0
            continue
        if n == 0:  # end of file before count bytes
            break
        sent += n
        unyielded += n
        if unyielded >= YIELD_EVERY and sent < count:
            unyielded = 0
            await asyncio.sleep(0)
    return sent

"""Listening sockets: bind (TCP, UDP, Unix), and an accept loop that hands out raw sockets.

The accept loop runs on ``loop.add_reader`` and accepts in batches, so a burst of new
connections costs one wake-up. ``max_connections`` pauses accepting (connections wait in the
kernel backlog, as HAProxy's maxconn does) until one closes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable

from .addr import Address

log = logging.getLogger(__name__)

ACCEPT_BATCH = 64


class BindError(OSError):
    """A listener could not be bound; the message is one line a user can act on."""


def bind_socket(address: Address, *, udp: bool = False, backlog: int = 2048, reuse_port: bool = False) -> socket.socket:
    """Create, bind and (for TCP) listen. Raise BindError with a one-line explanation."""
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    sock = socket.socket(address.family, kind)
    try:
        if address.is_unix:
            _remove_stale_unix_socket(address.path)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if address.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address.sockaddr)
        if not udp:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindError(exc.errno, f"cannot listen on {address}: {_explain(exc, address)}") from exc
    return sock


def _remove_stale_unix_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _explain(exc: OSError, address: Address) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another process is listening there)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{address.host} is not an address of this host"
    if exc.errno == errno.ENOENT and address.is_unix:
        return f"directory {os.path.dirname(address.path) or '.'} does not exist"
    return exc.strerror or str(exc)


class SocketReader:
    """Readiness callbacks (``_on_readable``) for one socket, switched on and off: a socket
    that is not read leaves its work queued in the kernel (backlog, channel)."""

    loop: asyncio.AbstractEventLoop
    sock: socket.socket
    _reading = False
    _closed = False

    def _on_readable(self) -> None:
        raise NotImplementedError

    def _may_read(self) -> bool:
        return True

    def _resume(self) -> None:
        if not self._reading and not self._closed and self._may_read():
            self.loop.add_reader(self.sock.fileno(), self._on_readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False


class Acceptor(SocketReader):
    """Accept connections on a listening socket and pass each ``(sock, peer)`` to a handler.

    The handler must call :meth:`release` once per accepted connection when it is closed,
    so ``max_connections`` can resume accepting.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        handler: Callable[[socket.socket, object], None],
        *,
        max_connections: int | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.handler = handler
        self.max_connections = max_connections
        self.active = 0
        self._reading = False
        self._closed = False

    def start(self) -> None:
        self._resume()

    def _on_readable(self) -> None:
        limit = self.max_connections
        accept = self.sock.accept
        for _ in range(ACCEPT_BATCH):
            if limit is not None and self.active >= limit:
                self._pause()
                return
            try:
                conn, peer = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept on %s failed: %s; pausing for 100ms", self.sock.getsockname(), exc.strerror)
                    self._pause()
                    self.loop.call_later(0.1, self._resume)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            conn.setblocking(False)
            self.active += 1
            self.handler(conn, peer)

    def release(self) -> None:
        self.active -= 1
        if not self._reading and (self.max_connections is None or self.active < self.max_connections):
            self._resume()

    def close(self) -> None:
        """Stop accepting and close the listening socket; live connections are untouched."""
        self._pause()
        self._closed = True
        self.sock.close()

"""Pass sockets between processes over Unix sockets (SCM_RIGHTS).

Two users: least_conn accept balancing (:mod:`ferryman.net.balance`) and binary upgrade:
:class:`ListenerHandoff` lets an old master give every listening socket, by listener name,
to a new master without closing them: connections waiting in a backlog stay there and are
accepted by the new process.

Channels are ``AF_UNIX``/``SOCK_SEQPACKET``: message boundaries are kept, so one message is
one payload plus the fds attached to it. Received fds are close-on-exec.
"""

from __future__ import annotations

import array
import asyncio
import errno
import json
import logging
import os
import select
import socket
import stat
import struct
import time
from collections.abc import Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

__all__ = [
    "MAX_FDS_PER_MESSAGE",
    "HandoffError",
    "ListenerHandoff",
    "recv_fds",
    "recv_fds_async",
    "send_fds",
    "send_fds_async",
]

MAX_FDS_PER_MESSAGE = 253  # the kernel's SCM_MAX_FD
MANIFEST_CHUNK = 200  # listeners per handoff message
MANIFEST_BYTES = 32 * 1024  # and about this much name text (a seqpacket message fits in the send buffer)
MANIFEST_VERSION = 1
CONNECT_RETRY = 0.02  # seconds between tries to reach an old master that is not serving yet
SEND_TIMEOUT = 10.0  # bound on finishing a partially sent stream message
_INT = array.array("i").itemsize
_MASK = 0xFFFFFFFF


class HandoffError(OSError):
    """A socket handoff failed: truncated or malformed message, wrong peer, protocol error."""


# ------------------------------------------------------------------------ fd passing


def send_fds(sock: socket.socket, fds: Sequence[int], payload: bytes) -> None:
    """Send ``payload`` with ``fds`` attached to its first byte.

    On a non-blocking socket with no room, raises BlockingIOError having sent nothing.
    A stream socket that takes only part of the payload gets the rest without fds
    (within ``SEND_TIMEOUT``); datagram and seqpacket sends are all or nothing.
    """
    sent = sock.sendmsg([payload], _ancillary(fds, payload))
    if sent < len(payload):
        _send_rest(sock, memoryview(payload)[sent:])


def _ancillary(fds: Sequence[int], payload: bytes) -> list[tuple[int, int, array.array]]:
    if not payload:
        raise ValueError("the payload must not be empty: an empty read means end of stream")
    if len(fds) > MAX_FDS_PER_MESSAGE:
        raise ValueError(f"at most {MAX_FDS_PER_MESSAGE} fds fit in one message, not {len(fds)}")
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []


def _send_rest(sock: socket.socket, view: memoryview) -> None:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    deadline = time.monotonic() + SEND_TIMEOUT
    while view:
        try:
            view = view[sock.send(view) :]
        except (BlockingIOError, InterruptedError):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                raise TimeoutError(f"the rest of a message with fds was not sent within {SEND_TIMEOUT}s") from None


def recv_fds(sock: socket.socket, max_fds: int, bufsize: int = 65536) -> tuple[bytes, list[int]]:
    """Receive one message and the fds attached to it (as close-on-exec descriptors).

    ``(b"", [])`` means the peer closed. A message that did not fit (more than ``max_fds``
    fds, or a seqpacket payload over ``bufsize``) raises :class:`HandoffError` after
    closing whatever fds did arrive, so none leak. BlockingIOError when nothing is queued.
    """
    payload, ancillary, flags, _ = sock.recvmsg(bufsize, socket.CMSG_LEN(max_fds * _INT), socket.MSG_CMSG_CLOEXEC)
    fds = _fds_of(ancillary)
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or (fds and not payload):
        _close_fds(fds)
        what = "fds" if flags & socket.MSG_CTRUNC else "bytes" if flags & socket.MSG_TRUNC else "an empty payload"
        raise HandoffError(errno.EMSGSIZE, f"received a truncated message ({what}: room for {max_fds} fds and {bufsize} bytes); its fds were closed")
    return payload, fds


def _fds_of(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % _INT])
    return fds.tolist()


def _close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


async def send_fds_async(loop: asyncio.AbstractEventLoop, sock: socket.socket, fds: Sequence[int], payload: bytes) -> None:
    """:func:`send_fds` on a non-blocking socket, waiting for room instead of failing."""
    ancillary = _ancillary(fds, payload)
    while True:
        try:
            sent = sock.sendmsg([payload], ancillary)
            break
        except (BlockingIOError, InterruptedError):
            await _ready(loop, sock.fileno(), write=True)
    if sent < len(payload):
        await loop.sock_sendall(sock, memoryview(payload)[sent:])


async def recv_fds_async(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, max_fds: int, bufsize: int = 65536
) -> tuple[bytes, list[int]]:
    """:func:`recv_fds` on a non-blocking socket, waiting until a message arrives."""
    while True:
        try:
            return recv_fds(sock, max_fds, bufsize)
        except (BlockingIOError, InterruptedError):
            await _ready(loop, sock.fileno(), write=False)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


# ------------------------------------------------------------------ listener handoff


class ListenerHandoff:
    """Binary upgrade: the old master serves its listening sockets by name on a Unix
    socket path; the new master receives them and acknowledges.

    The old master keeps accepting until a receiver acknowledged (``served``), then closes
    its copies: the sockets themselves stay open in the new master, backlog included.
    Only a peer with the same uid (or root) is served; the path is mode 0600.
    """

    def __init__(self) -> None:
        self.served = 0  # receivers that acknowledged a complete manifest
        self._served = asyncio.Event()

    async def serve(self, path: str, sockets: Mapping[str, socket.socket]) -> None:
        """Hand ``sockets`` to every receiver that connects, until cancelled."""
        loop = asyncio.get_running_loop()
        server, inode = _listen_unix(path)
        try:
            while True:
                conn, _ = await loop.sock_accept(server)
                with conn:
                    conn.setblocking(False)
                    try:
                        async with asyncio.timeout(SEND_TIMEOUT):
                            _check_peer(conn)
                            for payload, fds in _manifest(sockets):
                                await send_fds_async(loop, conn, fds, payload)
                            ack = await loop.sock_recv(conn, 16)
                    except (OSError, TimeoutError) as exc:
                        log.warning("listener handoff on %s failed: %s", path, exc)
                        continue
                if ack == b"ack":
                    self.served += 1
                    self._served.set()
                    log.info("listener handoff on %s: %d listeners handed over", path, len(sockets))
        finally:
            server.close()
            _unlink_if_ours(path, inode)

    async def wait_served(self) -> None:
        """Return once a receiver has acknowledged the sockets."""
        await self._served.wait()

    def serve_blocking(self, path: str, sockets: Mapping[str, socket.socket], timeout: float) -> None:
        """For a master without an event loop: serve until one receiver acknowledged.

        Raises TimeoutError when nobody took the sockets within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        server, inode = _listen_unix(path)
        try:
            while True:
                try:
                    server.settimeout(_remaining(deadline, ""))
                    conn, _ = server.accept()
                except TimeoutError:
                    raise TimeoutError(f"no new master took the listeners on {path} within {timeout}s") from None
                with conn:
                    try:  # a receiver that fails or stalls is dropped; the next one may connect
                        conn.settimeout(min(SEND_TIMEOUT, max(0.001, deadline - time.monotonic())))
                        _check_peer(conn)
                        for payload, fds in _manifest(sockets):
                            send_fds(conn, fds, payload)
                        if conn.recv(16) == b"ack":
                            self.served += 1
                            return
                    except OSError as exc:
                        log.warning("listener handoff on %s failed: %s", path, exc)
        finally:
            server.close()
            _unlink_if_ours(path, inode)

    @staticmethod
    async def receive(path: str, timeout: float) -> dict[str, socket.socket]:
        """Connect to ``path`` and take over the listening sockets it serves, by name.

        Waits (up to ``timeout``) for an old master that is not serving yet.
        """
        loop = asyncio.get_running_loop()
        collected = _Collected(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.setblocking(False)
            async with asyncio.timeout(timeout):
                while True:  # the old master may not be serving yet
                    try:
                        await loop.sock_connect(sock, path)
                        break
                    except (ConnectionRefusedError, FileNotFoundError):
                        await asyncio.sleep(CONNECT_RETRY)
                while not collected.done:
                    collected.add(*await recv_fds_async(loop, sock, MAX_FDS_PER_MESSAGE, _MANIFEST_BUF))
                await loop.sock_sendall(sock, b"ack")
        except BaseException:
            collected.close()
            raise
        finally:
            sock.close()
        return collected.sockets

    @staticmethod
    def receive_blocking(path: str, timeout: float) -> dict[str, socket.socket]:
        """:meth:`receive` for a process without an event loop (a new master before forking)."""
        deadline = time.monotonic() + timeout
        collected = _Collected(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            while True:  # the old master may not be serving yet
                try:
                    sock.settimeout(_remaining(deadline, f"nobody served listeners on {path}"))
                    sock.connect(path)
                    break
                except (ConnectionRefusedError, FileNotFoundError):
                    time.sleep(min(CONNECT_RETRY, max(0.0, deadline - time.monotonic())))
            while not collected.done:
                sock.settimeout(_remaining(deadline, f"the listeners from {path} did not arrive"))
                collected.add(*recv_fds(sock, MAX_FDS_PER_MESSAGE, _MANIFEST_BUF))
            sock.sendall(b"ack")
        except BaseException:
            collected.close()
            raise
        finally:
            sock.close()
        return collected.sockets


_MANIFEST_BUF = 1 << 20


def _manifest(sockets: Mapping[str, socket.socket]) -> Iterable[tuple[bytes, list[int]]]:
    """Messages of at most ``MANIFEST_CHUNK`` listeners and about ``MANIFEST_BYTES`` of names."""
    items = list(sockets.items())
    start = 0
    while True:
        end, size = start, 0
        while end < len(items) and end - start < MANIFEST_CHUNK and (end == start or size < MANIFEST_BYTES):
            size += len(items[end][0]) + 4
            end += 1
        body = {"v": MANIFEST_VERSION, "names": [name for name, _ in items[start:end]], "more": end < len(items)}
        yield json.dumps(body).encode(), [sock.fileno() for _, sock in items[start:end]]
        if end >= len(items):
            return
        start = end


class _Collected:
    """Listening sockets rebuilt from manifest messages; closes them all on failure."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sockets: dict[str, socket.socket] = {}
        self.done = False

    def add(self, payload: bytes, fds: list[int]) -> None:
        try:
            if not payload:
                raise HandoffError(errno.ECONNRESET, f"{self.path}: the old master closed the handoff before the last listener")
            try:
                body = json.loads(payload)
                names, more = body["names"], body["more"]
                version = body["v"]
            except (ValueError, KeyError, TypeError) as exc:
                raise HandoffError(errno.EPROTO, f"{self.path}: malformed listener manifest ({exc})") from None
            if version != MANIFEST_VERSION:
                raise HandoffError(errno.EPROTO, f"{self.path}: listener manifest version {version}, expected {MANIFEST_VERSION}")
            if len(names) != len(fds):
                raise HandoffError(errno.EPROTO, f"{self.path}: manifest names {len(names)} listeners but carries {len(fds)} fds")
        except BaseException:
            _close_fds(fds)
            raise
        for i, (name, fd) in enumerate(zip(names, fds)):
            try:
                sock = socket.socket(fileno=fd)  # the kernel says its family, type and protocol
            except OSError as exc:
                _close_fds(fds[i:])
                raise HandoffError(errno.EPROTO, f"{self.path}: listener {name!r} did not arrive as a socket") from exc
            sock.setblocking(False)
            old = self.sockets.pop(name, None)
            if old is not None:
                old.close()
            self.sockets[name] = sock
        self.done = not more

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()


def _listen_unix(path: str) -> tuple[socket.socket, int]:
    """A SEQPACKET listener on ``path``, mode 0600 before anyone can connect."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        server.bind(path)
        os.chmod(path, 0o600)  # connect() is refused until listen(): no window
        server.listen(8)
        server.setblocking(False)
        return server, os.stat(path).st_ino
    except BaseException:
        server.close()
        raise


def _unlink_if_ours(path: str, inode: int) -> None:
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _check_peer(conn: socket.socket) -> None:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", creds)
    if uid not in (os.getuid(), 0):
        raise HandoffError(errno.EPERM, f"process {pid} of uid {uid} may not take the listeners")


def _remaining(deadline: float, what: str) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(what)
    return remaining

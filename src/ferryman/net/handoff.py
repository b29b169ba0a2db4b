"""Pass sockets between processes over Unix sockets (SCM_RIGHTS).

Two users:

- **least_conn accept balancing**: a master-side :class:`BalancedAcceptor` accepts and a
  :class:`ConnectionDispatcher` sends each connection to the worker with the fewest live
  connections; the worker's :class:`ConnectionReceiver` turns the fds back into sockets
  and reports its count back on the same channel.
- **binary upgrade**: :class:`ListenerHandoff` lets an old master give every listening
  socket, by listener name, to a new master without closing them: connections waiting
  in a backlog stay there and are accepted by the new process.

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
from collections.abc import Callable, Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

__all__ = [
    "MAX_FDS_PER_MESSAGE",
    "BalancedAcceptor",
    "ConnectionDispatcher",
    "ConnectionReceiver",
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


# ------------------------------------------------------------- least_conn balancing

# dispatcher → worker: the channel's running count of fds sent, this message included
_STAMP = struct.Struct("=I")
# worker → dispatcher: the last stamp received (0: none yet) and its live connections
_REPORT = struct.Struct("=II")
REPORT_BATCH = 64
RECV_BATCH = 16
ACCEPT_BATCH = 64
RETRY_DELAY = 0.05  # seconds between dispatch retries when the kernel refuses more fds in flight


class ConnectionDispatcher:
    """Master side of ``least_conn``: one seqpacket channel per worker.

    A worker's load is its last reported live count plus the connections sent since the
    message that report acknowledged, so a burst is spread before any report comes back,
    and a lost or coalesced report costs nothing (each report is absolute). A replaced
    worker says hello (count 0) on the same channel and is chosen again at once.
    """

    def __init__(self, channels: Sequence[socket.socket]) -> None:
        self.channels = list(channels)
        for sock in self.channels:
            sock.setblocking(False)
        n = len(self.channels)
        self._sent = [0] * n  # fds sent, mod 2**32
        self._acked = [0] * n  # stamp of the last message the worker said it received
        self._active = [0] * n  # live connections the worker last reported
        self._load = [0] * n  # estimate: active + in flight
        self._dead = [False] * n  # the worker's end is gone for good (EPIPE / EOF)
        self._next = 0  # rotates the winner among equal loads
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def create(cls, workers: int) -> tuple[ConnectionDispatcher, list[socket.socket]]:
        """A dispatcher and the worker ends of its channels (worker ``i`` keeps ``[i]``)."""
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(workers)]
        return cls([ours for ours, _ in pairs]), [theirs for _, theirs in pairs]

    @property
    def loads(self) -> list[int]:
        """Estimated live connections per worker."""
        return list(self._load)

    def live_channels(self) -> list[socket.socket]:
        """The channels that may still take connections."""
        return [sock for sock, dead in zip(self.channels, self._dead) if not dead]

    def dispatch(self, conn: socket.socket) -> int:
        """Send ``conn`` to the least loaded worker and close our copy; return the worker.

        Raises BlockingIOError (``conn`` still open and ours) when no channel has room.
        """
        blocked = list(self._dead)
        while True:
            worker = self._pick(self._load, blocked)
            if worker < 0:
                raise BlockingIOError(errno.EAGAIN, "every worker's connection channel is full")
            if self._send(worker, [conn]):
                return worker
            blocked[worker] = True

    def dispatch_batch(self, conns: Sequence[socket.socket]) -> list[socket.socket]:
        """Send a burst, one message per worker where possible; return what nobody took
        (still open and the caller's)."""
        pending = list(conns)
        blocked = list(self._dead)
        while pending:
            load = list(self._load)
            groups: dict[int, list[socket.socket]] = {}
            for conn in pending:
                worker = self._pick(load, blocked)
                if worker < 0:  # blocked does not change while assigning: this is the first conn
                    return pending
                load[worker] += 1
                groups.setdefault(worker, []).append(conn)
            pending = []
            for worker, group in groups.items():
                for start in range(0, len(group), MAX_FDS_PER_MESSAGE):
                    if not self._send(worker, group[start : start + MAX_FDS_PER_MESSAGE]):
                        blocked[worker] = True
                        pending.extend(group[start:])
                        break
        return []

    def _pick(self, load: list[int], blocked: list[bool]) -> int:
        n = len(load)
        best, best_load = -1, 0
        for i in range(n):
            worker = (self._next + i) % n
            if not blocked[worker] and (best < 0 or load[worker] < best_load):
                best, best_load = worker, load[worker]
        if best >= 0:
            self._next = (best + 1) % n
        return best

    def _send(self, worker: int, conns: list[socket.socket]) -> bool:
        stamp = (self._sent[worker] + len(conns)) & _MASK
        try:
            send_fds(self.channels[worker], [c.fileno() for c in conns], _STAMP.pack(stamp))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno in (errno.ETOOMANYREFS, errno.ENOBUFS, errno.ENOMEM):
                return False  # too many fds in flight: try another worker
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ECONNREFUSED):
                self._mark_dead(worker, "is closed")
                return False
            raise
        for conn in conns:
            conn.close()
        self._sent[worker] = stamp
        self._load[worker] += len(conns)
        return True

    def read_reports(self, worker: int) -> None:
        """Take the reports queued on ``worker``'s channel (call when it is readable)."""
        sock = self.channels[worker]
        report = None
        for _ in range(REPORT_BATCH):
            try:
                data = sock.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self._mark_dead(worker, "reached end of file")
                return
            if len(data) == _REPORT.size:
                report = _REPORT.unpack(data)
        if report is not None:
            self._apply(worker, *report)

    def _apply(self, worker: int, stamp: int, active: int) -> None:
        if stamp:  # 0: a new worker's hello, before it received anything
            self._acked[worker] = stamp
        in_flight = (self._sent[worker] - self._acked[worker]) & _MASK
        if in_flight > _MASK >> 1:  # acknowledged more than we sent: not our numbering
            self._acked[worker], in_flight = self._sent[worker], 0
        self._active[worker] = active
        self._load[worker] = active + in_flight

    def _mark_dead(self, worker: int, why: str) -> None:
        if self._dead[worker]:
            return
        log.error("worker %d's connection channel %s; it gets no more connections", worker, why)
        self._dead[worker] = True
        if self._loop is not None:
            self._loop.remove_reader(self.channels[worker].fileno())

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read worker reports as they arrive on ``loop``."""
        self._loop = loop
        for worker, sock in enumerate(self.channels):
            if not self._dead[worker]:
                loop.add_reader(sock.fileno(), self.read_reports, worker)

    def close(self) -> None:
        """Close our ends (a worker process calls this on its inherited copy)."""
        if self._loop is not None and not self._loop.is_closed():
            for worker, sock in enumerate(self.channels):
                if not self._dead[worker]:
                    self._loop.remove_reader(sock.fileno())
        self._loop = None
        for sock in self.channels:
            sock.close()


class BalancedAcceptor:
    """Accept on a listening socket (in the process that balances) and dispatch each
    burst of connections with a :class:`ConnectionDispatcher` (attached to the same loop).

    When every channel is full, the burst is held and accepting pauses (clients wait in
    the kernel backlog) until a channel has room again.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, dispatcher: ConnectionDispatcher) -> None:
        self.loop, self.sock, self.dispatcher = loop, sock, dispatcher
        self._held: list[socket.socket] = []
        self._reading = False
        self._waiting: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self) -> None:
        self._resume()

    def _resume(self) -> None:
        if not self._reading and not self._closed and not self._held:
            self.loop.add_reader(self.sock.fileno(), self._on_readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _on_readable(self) -> None:
        conns = []
        accept = self.sock.accept
        for _ in range(ACCEPT_BATCH):
            try:
                conns.append(accept()[0])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept on %s failed: %s; pausing for 100ms", self.sock.getsockname(), exc.strerror)
                    self._pause()
                    self.loop.call_later(0.1, self._resume)
                    break
                raise
        if conns:
            self._dispatch(conns)

    def _dispatch(self, conns: list[socket.socket], *, retry: bool = False) -> None:
        self._held = self.dispatcher.dispatch_batch(conns)
        if not self._held:
            self._resume()
            return
        self._pause()
        channels = self.dispatcher.live_channels()
        if not channels:
            log.error("no worker can take connections from %s; closing %d", self.sock.getsockname(), len(self._held))
            self._drop_held()
            self._resume()
        elif retry:  # room was reported yet the send failed (the fds-in-flight limit): back off
            self._timer = self.loop.call_later(RETRY_DELAY, self._retry, False)
        else:
            for sock in channels:
                self.loop.add_writer(sock.fileno(), self._retry, True)
                self._waiting.append(sock.fileno())

    def _retry(self, woken_by_room: bool) -> None:
        self._stop_waiting()
        self._timer = None
        held, self._held = self._held, []
        self._dispatch(held, retry=woken_by_room)

    def _stop_waiting(self) -> None:
        for fd in self._waiting:
            self.loop.remove_writer(fd)
        self._waiting.clear()

    def _drop_held(self) -> None:
        for conn in self._held:
            conn.close()
        self._held.clear()

    def close(self) -> None:
        """Stop accepting and close the listening socket and any held connections."""
        self._pause()
        self._stop_waiting()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._drop_held()
        self._closed = True
        self.sock.close()


class ConnectionReceiver:
    """Worker side of ``least_conn``: receive connections from the dispatcher's channel.

    Drop-in for :class:`~ferryman.net.listener.Acceptor`: ``handler(sock, peer)`` gets each
    non-blocking connection, and the owner calls :meth:`release` once per connection when
    it closes. The live count goes back to the dispatcher at most once per loop iteration.
    With ``max_connections`` reached it stops reading: connections queue in the channel,
    and once it is full the dispatcher picks other workers.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        handler: Callable[[socket.socket, object], None],
        *,
        max_connections: int | None = None,
    ) -> None:
        self.loop, self.sock, self.handler = loop, sock, handler
        self.max_connections = max_connections
        self.active = 0
        self.received = 0  # connections received in total
        self._stamp = 0
        self._reading = False
        self._report_due = False
        self._report_blocked = False
        self._closed = False
        sock.setblocking(False)

    def start(self) -> None:
        self._resume()
        self._schedule_report()  # hello: a replaced worker starts from zero

    def _resume(self) -> None:
        if not self._reading and not self._closed:
            self.loop.add_reader(self.sock.fileno(), self._on_readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _on_readable(self) -> None:
        limit = self.max_connections
        for _ in range(RECV_BATCH):
            if limit is not None and self.active >= limit:
                self._pause()
                break
            try:
                payload, fds = recv_fds(self.sock, MAX_FDS_PER_MESSAGE, 64)
            except (BlockingIOError, InterruptedError):
                break
            except HandoffError as exc:
                log.error("connection channel: %s", exc)
                continue
            if not payload:
                log.error("connection channel closed by the dispatcher; no more connections will arrive")
                self._pause()
                self._closed = True
                break
            if len(payload) == _STAMP.size:
                self._stamp = _STAMP.unpack(payload)[0]
            for fd in fds:
                self._deliver(fd)
        self._schedule_report()

    def _deliver(self, fd: int) -> None:
        conn = socket.socket(fileno=fd)
        try:
            conn.setblocking(False)
            peer = conn.getpeername()
        except OSError:  # the client is already gone
            conn.close()
            return
        self.active += 1
        self.received += 1
        try:
            self.handler(conn, peer)
        except Exception:
            log.exception("connection handler failed; closing the connection")
            conn.close()
            self.active -= 1

    def release(self) -> None:
        """One connection handed out by this receiver has closed."""
        self.active -= 1
        if not self._reading and (self.max_connections is None or self.active < self.max_connections):
            self._resume()
        self._schedule_report()

    def _schedule_report(self) -> None:
        if not self._report_due and not self._report_blocked:
            self._report_due = True
            self.loop.call_soon(self._report)

    def _report(self) -> None:
        self._report_due = False
        if self.sock.fileno() < 0:
            return
        try:
            self.sock.send(_REPORT.pack(self._stamp, max(0, self.active) & _MASK))
        except (BlockingIOError, InterruptedError):
            if not self._report_blocked:  # the dispatcher is behind: send when there is room
                self._report_blocked = True
                self.loop.add_writer(self.sock.fileno(), self._report_unblocked)
        except OSError as exc:
            log.debug("connection channel: report not sent: %s", exc)

    def _report_unblocked(self) -> None:
        self.loop.remove_writer(self.sock.fileno())
        self._report_blocked = False
        self._report()

    def close(self) -> None:
        """Stop receiving and close the channel end; live connections are untouched."""
        self._pause()
        if self._report_blocked:
            self.loop.remove_writer(self.sock.fileno())
            self._report_blocked = False
        self._closed = True
        self.sock.close()

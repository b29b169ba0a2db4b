"""least_conn accept balancing across worker processes, over SCM_RIGHTS.

A :class:`BalancedAcceptor` (in the balancing process) accepts and a
:class:`ConnectionDispatcher` sends each connection to the worker with the fewest live
connections; the worker's :class:`ConnectionReceiver` turns the fds back into sockets and
reports its count back on the same channel (``AF_UNIX``/``SOCK_SEQPACKET``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable, Sequence

from .handoff import MAX_FDS_PER_MESSAGE, HandoffError, recv_fds, send_fds
from .listener import SocketReader

log = logging.getLogger(__name__)

__all__ = ["BalancedAcceptor", "ConnectionDispatcher", "ConnectionReceiver"]

_MASK = 0xFFFFFFFF


# dispatcher → worker: the channel's running count of fds sent, this message included
_STAMP = struct.Struct("=I")
# worker → dispatcher: the last stamp received (0: none yet) and its live connections
_REPORT = struct.Struct("=II")
# dispatcher → worker: no more connections will come (sent after its acceptors closed)
_END = b"end"
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

    def finish(self, timeout: float = 1.0) -> None:
        """Tell every worker that nothing more will come (once accepting stopped): a
        worker that is stopping closes its channel only then, after it took every
        connection sent before (a seqpacket channel keeps the order)."""
        for worker, sock in enumerate(self.channels):
            if self._dead[worker]:
                continue
            sock.settimeout(timeout)  # the channel may be full while the worker catches up
            try:
                sock.send(_END)
            except OSError as exc:
                log.warning("worker %d's connection channel: end not sent: %s", worker, exc)
            finally:
                sock.setblocking(False)

    def close(self) -> None:
        """Close our ends (a worker process calls this on its inherited copy)."""
        if self._loop is not None and not self._loop.is_closed():
            for worker, sock in enumerate(self.channels):
                if not self._dead[worker]:
                    self._loop.remove_reader(sock.fileno())
        self._loop = None
        for sock in self.channels:
            sock.close()


class BalancedAcceptor(SocketReader):
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

    def _may_read(self) -> bool:
        return not self._held  # a held burst goes out before more is accepted

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


class ConnectionReceiver(SocketReader):
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
        self.finished: asyncio.Future[None] | None = None  # set by finish(): done once closed
        sock.setblocking(False)

    def start(self) -> None:
        self._resume()
        self._schedule_report()  # hello: a replaced worker starts from zero

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
            if payload == _END:  # the dispatcher stopped: everything it sent has been taken
                self.close()
                return
            if not payload:
                if self.finished is None:
                    log.error("connection channel closed by the dispatcher; no more connections will arrive")
                self.close()
                return
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

    def finish(self) -> asyncio.Future[None]:
        """Graceful stop: keep taking what the dispatcher already sent until it says it
        stopped (the balancing process stops at the same time), then close. Closing at once
        would destroy connections still in the channel, and the kernel resets those whose
        clients already sent a request. The future is done once the channel is closed; the
        owner calls :meth:`close` if that takes too long."""
        if self.finished is None:
            self.finished = self.loop.create_future()
            if self._closed:
                self.finished.set_result(None)
        return self.finished

    def close(self) -> None:
        """Stop receiving and close the channel end; live connections are untouched."""
        if self._closed:
            return
        self._pause()
        if self._report_blocked:
            self.loop.remove_writer(self.sock.fileno())
            self._report_blocked = False
        self._closed = True
        self.sock.close()
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

"""syslog as a log sink: access log lines and error log records sent to a syslog server over
UDP, a Unix datagram socket (``/dev/log``) or TCP, framed as RFC 3164 or RFC 5424.

Sending never blocks the event loop. Datagram sinks send from the caller's thread on a
non-blocking socket: a datagram the socket cannot take now (``EAGAIN``), or one the
receiver refused, is dropped and counted in ``dropped``. A TCP sink queues lines (bounded;
beyond it they are dropped and counted) for a writer thread that connects, reconnects after
a failure, and frames each message for a stream (RFC 6587: octet counting for RFC 5424, a
trailing LF for RFC 3164).

:class:`SyslogFramer` is the sans-IO part (bytes of one message); :class:`SyslogSink` the
socket; :class:`SyslogHandler` puts a sink behind :mod:`logging`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass

__all__ = [
    "FACILITIES",
    "FORMATS",
    "SEVERITIES",
    "SyslogFramer",
    "SyslogHandler",
    "SyslogSink",
    "SyslogTarget",
    "error_log_sink",
    "install_error_log",
    "parse_target",
]

log = logging.getLogger(__name__)

FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, **{f"local{i}": 16 + i for i in range(8)},
}
SEVERITIES: dict[str, int] = {
    "emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7,
}
FORMATS = ("rfc3164", "rfc5424")
INFO = 6
MAX_MESSAGE = 8192  # bytes of one message (header included); longer ones are cut
QUEUE_LIMIT = 10000  # TCP: lines waiting for the writer thread
RECONNECT_INTERVAL = 1.0  # seconds between two attempts to reach a syslog server that went away
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, slots=True)
class SyslogTarget:
    """Where to send: ``transport`` is ``udp``, ``tcp`` or ``unix`` (datagram)."""

    transport: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.transport == "unix" else f"{self.transport}:{self.host}:{self.port}"


def parse_target(text: str) -> SyslogTarget:
    """``"udp:127.0.0.1:514"``, ``"tcp:[::1]:601"``, ``"unix:/dev/log"`` → a target;
    ValueError saying what is wrong otherwise."""
    transport, sep, rest = text.partition(":")
    if not sep or transport not in ("udp", "tcp", "unix"):
        raise ValueError(f"{text!r}: expected udp:HOST:PORT, tcp:HOST:PORT or unix:/path")
    if transport == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"{text!r}: expected an absolute socket path after unix:")
        return SyslogTarget("unix", path=rest)
    host, sep, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: expected {transport}:HOST:PORT with a port from 1 to 65535")
    return SyslogTarget(transport, host=host, port=int(port))


class SyslogFramer:
    """The bytes of one syslog message (sans-IO). The header after the priority is built
    once per second; ``frame`` adds the stream framing a TCP sink needs."""

    def __init__(self, facility: str = "local0", tag: str = "ferryman", format: str = "rfc3164",  # noqa: A002
                 hostname: str | None = None, pid: int | None = None) -> None:
        if facility not in FACILITIES:
            raise ValueError(f"unknown syslog facility {facility!r} (one of {', '.join(FACILITIES)})")
        if format not in FORMATS:
            raise ValueError(f"syslog format must be rfc3164 or rfc5424, not {format!r}")
        if not tag or len(tag) > 48 or not tag.isascii() or not tag.isprintable() or " " in tag:
            raise ValueError(f"syslog tag {tag!r} must be 1 to 48 printable ASCII characters without spaces")
        self.facility = FACILITIES[facility]
        self.format = format
        self.tag = tag
        self.hostname = (hostname or socket.gethostname() or "-").split(" ")[0]
        self.pid = os.getpid() if pid is None else pid
        self._priorities = tuple(f"<{self.facility * 8 + severity}>".encode() for severity in range(8))
        self._second = -1
        self._header = b""

    def message(self, text: str, severity: int = INFO, now: float | None = None) -> bytes:
        """``<PRI>HEADER text`` (UTF-8, cut to :data:`MAX_MESSAGE` bytes)."""
        sec = int(time.time() if now is None else now)
        if sec != self._second:
            self._header = self._build_header(sec)
            self._second = sec
        out = self._priorities[severity] + self._header + text.encode("utf-8", "backslashreplace")
        return out if len(out) <= MAX_MESSAGE else out[:MAX_MESSAGE]

    def frame(self, message: bytes) -> bytes:
        """Stream framing (RFC 6587): octet counting for RFC 5424, a trailing LF for RFC 3164."""
        if self.format == "rfc5424":
            return b"%d %s" % (len(message), message)
        return message.replace(b"\n", b" ") + b"\n"

    def _build_header(self, sec: int) -> bytes:
        tm = time.localtime(sec)
        if self.format == "rfc3164":  # "Nov 21 10:00:00 host tag[pid]: "
            stamp = f"{_MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} {tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
            return f"{stamp} {self.hostname} {self.tag}[{self.pid}]: ".encode()
        off = (tm.tm_gmtoff or 0) // 60
        zone = "Z" if off == 0 else f"{'+' if off > 0 else '-'}{abs(off) // 60:02d}:{abs(off) % 60:02d}"
        stamp = f"{tm.tm_year}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}{zone}"
        # VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA
        return f"1 {stamp} {self.hostname} {self.tag} {self.pid} - - ".encode()


class SyslogSink:
    """Send messages to one syslog server without blocking the caller.

    ``sent`` and ``dropped`` count messages. Raises ValueError at construction when a Unix
    socket cannot be reached or a name does not resolve (a bad address fails at start-up).
    """

    def __init__(self, target: SyslogTarget | str, framer: SyslogFramer | None = None) -> None:
        self.target = parse_target(target) if isinstance(target, str) else target
        self.framer = framer or SyslogFramer()
        self.sent = 0
        self.dropped = 0
        self._sock: socket.socket | None = None
        self._retry_at = 0.0
        self._closed = False
        self._thread: threading.Thread | None = None
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))  # a forked worker: its pid, its writer
        if self.target.transport == "tcp":
            self._addr = self._resolve(socket.SOCK_STREAM)
            self._start_writer()
            return
        if self.target.transport == "udp":
            self._addr = self._resolve(socket.SOCK_DGRAM)
        else:
            self._addr = (socket.AF_UNIX, self.target.path)
        try:
            self._sock = self._datagram_socket()
        except OSError as exc:
            raise ValueError(f"syslog {self.target}: {exc.strerror or exc}") from exc

    def _resolve(self, kind: int) -> tuple[int, object]:
        try:
            family, _, _, _, addr = socket.getaddrinfo(self.target.host, self.target.port, type=kind)[0]
        except OSError as exc:
            raise ValueError(f"syslog {self.target}: cannot resolve {self.target.host!r}: {exc}") from exc
        return family, addr

    def _datagram_socket(self) -> socket.socket:
        family, addr = self._addr
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(addr)  # type: ignore[arg-type]
        except OSError:
            sock.close()
            raise
        return sock

    # any thread ---------------------------------------------------------------------------------
    def send(self, text: str, severity: int = INFO) -> None:
        """Frame and send one message; drop it (counted) if it cannot go now."""
        message = self.framer.message(text, severity)
        if self._thread is not None:
            self._enqueue(message)
            return
        sock = self._sock
        if sock is None:
            sock = self._reconnect()
            if sock is None:
                self.dropped += 1
                return
        try:
            sock.send(message)
        except (BlockingIOError, InterruptedError):
            self.dropped += 1  # the socket's buffer is full: never wait for it
            return
        except OSError:
            # the receiver went away (ECONNREFUSED, ENOENT after a syslogd restart): reconnect later
            self.dropped += 1
            if self.target.transport == "unix":
                self._sock = None
                sock.close()
            return
        self.sent += 1

    def _reconnect(self) -> socket.socket | None:
        now = time.monotonic()
        if self._closed or now < self._retry_at:
            return None
        self._retry_at = now + RECONNECT_INTERVAL
        try:
            self._sock = self._datagram_socket()
        except OSError:
            return None
        return self._sock

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop sending (a TCP sink first writes what is queued, within ``timeout``)."""
        self._closed = True
        if self._thread is not None:
            with self._cond:
                self._cond.notify()
            self._thread.join(timeout)
            return
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # tcp: a writer thread -----------------------------------------------------------------------
    def _start_writer(self) -> None:
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._thread = threading.Thread(target=self._run, name="ferryman-syslog", daemon=True)
        self._thread.start()

    def _enqueue(self, message: bytes) -> None:
        with self._cond:
            if self._closed or len(self._queue) >= QUEUE_LIMIT:
                self.dropped += 1
                return
            self._queue.append(self.framer.frame(message))
            if len(self._queue) == 1:
                self._cond.notify()

    def _run(self) -> None:
        family, addr = self._addr
        sock: socket.socket | None = None
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if not self._queue:
                        return
                    batch = list(self._queue)
                    self._queue.clear()
                if sock is None:
                    sock = self._connect_stream(family, addr)
                    if sock is None:
                        with self._cond:
                            self.dropped += len(batch)
                            if self._closed:
                                return
                        time.sleep(RECONNECT_INTERVAL)  # writer thread only: wait before the next attempt
                        continue
                try:
                    sock.sendall(b"".join(batch))
                except OSError:
                    sock.close()
                    sock = None
                    with self._cond:
                        self.dropped += len(batch)
                    continue
                self.sent += len(batch)
        finally:
            if sock is not None:
                sock.close()

    def _connect_stream(self, family: int, addr: object) -> socket.socket | None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        try:
            sock.connect(addr)  # type: ignore[arg-type]
        except OSError as exc:
            sock.close()
            log.debug("syslog %s: cannot connect: %s", self.target, exc)
            return None
        return sock


def _after_fork(ref: weakref.ref[SyslogSink]) -> None:
    """In a forked worker: lines carry the worker's pid (the framer caches its header), and a
    TCP sink needs a writer thread of its own (the child has none, and maybe a lock held by
    the parent's)."""
    sink = ref()
    if sink is None or sink._closed:
        return
    sink.framer.pid = os.getpid()
    sink.framer._second = -1  # build the header again
    if sink.target.transport == "tcp":
        sink._start_writer()


_LEVELS = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def severity_of(levelno: int) -> int:
    """The syslog severity of a logging level (CRITICAL → crit ... DEBUG → debug)."""
    for level, severity in _LEVELS:
        if levelno >= level:
            return severity
    return 7


class SyslogHandler(logging.Handler):
    """A :mod:`logging` handler that sends each record to a :class:`SyslogSink`."""

    def __init__(self, sink: SyslogSink, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.sink = sink
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.send(self.format(record), severity_of(record.levelno))
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.sink.close()
        super().close()


_error_sink: SyslogSink | None = None


def install_error_log(sink: SyslogSink, level: int | None = None) -> SyslogHandler:
    """Send this process's log records to ``sink`` instead of the root logger's handlers."""
    global _error_sink
    root = logging.getLogger()
    handler = SyslogHandler(sink)
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    if level is not None:
        root.setLevel(level)
    _error_sink = sink
    return handler


def error_log_sink() -> SyslogSink | None:
    """The sink :func:`install_error_log` installed in this process, if any."""
    return _error_sink


def sink_from_config(config: object | None) -> SyslogSink:
    """The sink of a ``SyslogConfig`` table (None: every default, ``unix:/dev/log``)."""
    if config is None:
        return SyslogSink("unix:/dev/log")
    framer = SyslogFramer(config.facility, config.tag, config.format)  # type: ignore[attr-defined]
    return SyslogSink(config.address, framer)  # type: ignore[attr-defined]

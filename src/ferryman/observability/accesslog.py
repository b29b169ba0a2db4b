"""nginx-style access logs: ``$variable`` templates compiled once, and a writer that never
blocks the event loop.

A format (``combined``, ``common``, ``main``, ``json`` or a template such as
``'$remote_addr "$request" $status $request_time'``) becomes a formatter: a generated
function ``(session, error) -> str`` that calls one getter per variable and joins the parts.
Values a client controls are escaped as nginx does (``"`` → ``\\x22``, control and
non-ASCII bytes → ``\\xHH``), so a hostile header cannot forge a log line.

:class:`AccessLog` takes the formatted line on the loop thread (append to a list under a
lock) and a background thread writes batches every ``flush_interval`` seconds or when
``batch_bytes`` have accumulated. When the disk cannot keep up the buffer stays bounded:
lines beyond ``max_buffer`` are dropped and counted in ``dropped``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ProxyError

if TYPE_CHECKING:
    from ..http.session import Session

__all__ = [
    "FORMATS",
    "JSON_FIELDS",
    "VARIABLES",
    "AccessLog",
    "Formatter",
    "compile_json",
    "compile_template",
    "resolve_format",
    "time_iso8601",
    "time_local",
]

log = logging.getLogger(__name__)

Formatter = Callable[..., str]  # (session, error=None) -> one log line without "\n"

# named formats -------------------------------------------------------------------------------
_COMMON = '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent'
_COMBINED = _COMMON + ' "$http_referer" "$http_user_agent"'
FORMATS: dict[str, str] = {
    "common": _COMMON,
    "combined": _COMBINED,
    "main": _COMBINED + " $request_time $upstream_response_time",
}
# the json format: the fields of "main", typed (numbers as numbers, null when missing)
JSON_FIELDS: tuple[str, ...] = (
    "remote_addr",
    "remote_user",
    "time_local",
    "request",
    "status",
    "body_bytes_sent",
    "http_referer",
    "http_user_agent",
    "request_time",
    "upstream_response_time",
)

# escaping ----------------------------------------------------------------------------------------
_ESCAPES = {c: "\\x%02X" % c for c in (*range(0x20), 0x22, 0x5C, *range(0x7F, 0x100))}


def _plain(value: str) -> bool:
    return value.isascii() and value.isprintable() and '"' not in value and "\\" not in value


def _esc(value: str) -> str:
    """nginx's default escaping of wire bytes (decoded as latin-1): ``"``, ``\\``, control
    and non-ASCII bytes become ``\\xHH``."""
    if _plain(value):
        return value
    out = value.translate(_ESCAPES)
    return out if out.isascii() else _esc_u(value)  # not latin-1 after all: UTF-8 bytes


def _esc_u(value: str) -> str:
    """The same escaping for text the proxy holds as str (vars, route names, error text):
    characters beyond ASCII are escaped as their UTF-8 bytes, as nginx would see them."""
    if _plain(value):
        return value
    return value.encode("utf-8", "surrogatepass").decode("latin-1").translate(_ESCAPES)


_jstr = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _jwire(value: str) -> str:
    """JSON string of wire bytes decoded as latin-1: shown as UTF-8 where they are, bad
    bytes as ``\\xHH`` text."""
    if not value.isascii():
        try:
            value = value.encode("latin-1").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            pass
    return _jstr(value)


def _text_any(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bytes):
        return _esc(value.decode("latin-1")) if value else "-"
    if not isinstance(value, str):
        value = str(value)
    return _esc_u(value) if value else "-"


def _json_any(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "null"
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    elif not isinstance(value, str):
        value = str(value)
    return _jstr(value) if value else "null"


# value kinds: how a getter's raw value renders as text and as JSON ---------------------------------
STR, USTR, SAFE, INT, SEC, BOOL, STATUS, ANY = range(8)
_TEXT = {
    STR: '(_esc({v}) if {v} else "-")',  # wire bytes decoded as latin-1 (client-controlled)
    USTR: '(_esc_u({v}) if {v} else "-")',  # str held by the proxy (names, error text)
    SAFE: '({v} or "-")',  # text the proxy produced itself
    INT: '("-" if {v} is None else str({v}))',
    SEC: '("-" if {v} is None else "%.3f" % {v})',
    BOOL: '("-" if {v} is None else "1" if {v} else "0")',
    STATUS: '"%03d" % {v}',  # nginx writes 000 when no response was sent
    ANY: "_text_any({v})",
}
_JSON = {
    STR: '(_jwire({v}) if {v} else "null")',
    USTR: '(_jstr({v}) if {v} else "null")',
    SAFE: '(_jstr({v}) if {v} else "null")',
    INT: '("null" if {v} is None else str({v}))',
    SEC: '("null" if {v} is None else "%.3f" % {v})',
    BOOL: '("null" if {v} is None else "true" if {v} else "false")',
    STATUS: '(str({v}) if {v} else "null")',
    ANY: "_json_any({v})",
}

# time ---------------------------------------------------------------------------------------------
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _offset(tm: time.struct_time, sep: str) -> str:
    off = (tm.tm_gmtoff or 0) // 60
    sign = "+" if off >= 0 else "-"
    hours, minutes = divmod(abs(off), 60)
    return f"{sign}{hours:02d}{sep}{minutes:02d}"


def time_local(sec: float) -> str:
    """nginx's ``$time_local`` of a wall-clock time: ``21/Nov/2026:10:00:00 +0000``."""
    tm = time.localtime(sec)
    return (
        f"{tm.tm_mday:02d}/{_MONTHS[tm.tm_mon - 1]}/{tm.tm_year}:"
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {_offset(tm, '')}"
    )


def time_iso8601(sec: float) -> str:
    """nginx's ``$time_iso8601``: ``2026-11-21T10:00:00+00:00``."""
    tm = time.localtime(sec)
    return (
        f"{tm.tm_year}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T"
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}{_offset(tm, ':')}"
    )


class _Clock:
    """Both time strings, rendered once per second (nginx's cached time)."""

    __slots__ = ("iso", "local", "sec")

    def __init__(self) -> None:
        self.sec = -1
        self.local = self.iso = ""

    def refresh(self, sec: int) -> None:
        self.local = time_local(sec)
        self.iso = time_iso8601(sec)
        self.sec = sec


_clock = _Clock()
_now = time.time
_monotonic = time.monotonic


def _time_local(s: Session, e: Any) -> str:
    sec = int(_now())
    if sec != _clock.sec:
        _clock.refresh(sec)
    return _clock.local


def _time_iso8601(s: Session, e: Any) -> str:
    sec = int(_now())
    if sec != _clock.sec:
        _clock.refresh(sec)
    return _clock.iso


def _msec(s: Session, e: Any) -> float:
    return _now()


# getters: (session, error) -> raw value; None (or "" / 0 for STATUS) means missing ---------------
def _host_of(addr: Any) -> str | None:
    if type(addr) is tuple:
        return addr[0]
    if addr is None:
        return None
    if isinstance(addr, bytes):  # abstract unix socket
        return "unix:" + addr.decode("latin-1")
    if isinstance(addr, str):
        return "unix:" + addr
    return str(addr)


def _port_of(addr: Any) -> int | None:
    return addr[1] if type(addr) is tuple else None


def _remote_addr(s: Session, e: Any) -> str | None:
    return _host_of(s.client_addr)


def _remote_port(s: Session, e: Any) -> int | None:
    return _port_of(s.client_addr)


def _server_addr(s: Session, e: Any) -> str | None:
    return _host_of(s.local_addr)


def _server_port(s: Session, e: Any) -> int | None:
    return _port_of(s.local_addr)


def _remote_user(s: Session, e: Any) -> Any:
    return s.vars.get("remote_user")


def _request(s: Session, e: Any) -> str:
    r = s.request
    return (r.method + b" " + r.target + b" HTTP/" + r.version).decode("latin-1")


def _request_method(s: Session, e: Any) -> str:
    return s.request.method.decode("latin-1")


def _split_absolute(target: bytes) -> tuple[bytes, bytes] | None:
    """(authority, path and query) of an absolute-form target, else None."""
    start = target.find(b"://")
    if start <= 0:
        return None
    rest = target[start + 3 :]
    for i, c in enumerate(rest):
        if c in b"/?#":
            return rest[:i], (rest[i:] if c == 0x2F else b"/" + rest[i:])
    return rest, b"/"


def _origin_form(target: bytes) -> bytes:
    """Path and query of a target (an absolute-form target loses scheme and authority)."""
    if target[:1] == b"/":
        return target
    parts = _split_absolute(target)
    return target if parts is None else parts[1]  # "*" / authority-form (CONNECT) as sent


def _request_uri(s: Session, e: Any) -> str:
    return _origin_form(s.request.target).decode("latin-1")


def _uri(s: Session, e: Any) -> str:
    return _origin_form(s.request.target).partition(b"?")[0].decode("latin-1")


def _args(s: Session, e: Any) -> str:
    return _origin_form(s.request.target).partition(b"?")[2].decode("latin-1")


def _server_protocol(s: Session, e: Any) -> str:
    return "HTTP/" + s.request.version.decode("latin-1")


def _scheme(s: Session, e: Any) -> str:
    return "https" if s.tls else "http"


def _host(s: Session, e: Any) -> str | None:
    """Absolute-form authority, else the Host header; port stripped, lowercased."""
    r = s.request
    target = r.target
    name: bytes | None = None
    if target[:1] != b"/":
        parts = _split_absolute(target)
        if parts is not None:
            name = parts[0].rpartition(b"@")[2]
    if not name:
        for key, value in r.headers:
            if key == b"host":
                name = value
                break
        else:
            return None
    if name[:1] == b"[":
        name = name[: name.find(b"]") + 1]
    else:
        name = name.partition(b":")[0]
    return name.lower().decode("latin-1")


def _status(s: Session, e: Any) -> int:
    return s.response_status or 0


def _body_bytes_sent(s: Session, e: Any) -> int:
    return s.bytes_sent


def _request_length(s: Session, e: Any) -> int:
    return s.body_bytes_received


def _elapsed(start: float, t: float | None) -> float | None:
    if t is None:
        return None
    t -= start
    return t if t > 0.0 else 0.0


def _request_time(s: Session, e: Any) -> float | None:
    d = s.digest
    end = d.end
    return _elapsed(d.start, _monotonic() if end is None else end)


def _upstream_addr(s: Session, e: Any) -> str:
    return s.digest.upstream_addr


def _upstream_connect_time(s: Session, e: Any) -> float | None:
    d = s.digest
    return _elapsed(d.start, d.upstream_connect)


def _upstream_header_time(s: Session, e: Any) -> float | None:
    d = s.digest
    return _elapsed(d.start, d.upstream_header)


def _upstream_response_time(s: Session, e: Any) -> float | None:
    d = s.digest
    if d.upstream_connect is None:
        return None
    end = d.end
    return _elapsed(d.start, _monotonic() if end is None else end)


def _upstream_reused(s: Session, e: Any) -> bool | None:
    d = s.digest
    return None if d.upstream_connect is None else d.reused


def _upstream_tries(s: Session, e: Any) -> int:
    return s.tries


def _route(s: Session, e: Any) -> str:
    return s.route


def _request_id(s: Session, e: Any) -> Any:
    return s.vars.get("request_id")


def _error(s: Session, e: Any) -> str | None:
    if e is None:
        return None
    if isinstance(e, ProxyError):
        return f"{e.kind.value}: {e.context}" if e.context else e.kind.value
    return f"{type(e).__name__}: {e}"


def _request_header(name: bytes) -> Callable[[Session, Any], str | None]:
    def get(s: Session, e: Any) -> str | None:
        for key, value in s.request.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    return get


def _response_header(name: bytes) -> Callable[[Session, Any], str | None]:
    def get(s: Session, e: Any) -> str | None:
        for key, value in s.response_headers or ():
            if key == name:
                return value.decode("latin-1")
        return None

    return get


def _session_var(name: str) -> Callable[[Session, Any], Any]:
    def get(s: Session, e: Any) -> Any:
        return s.vars.get(name)

    return get


Getter = Callable[["Session", Any], Any]
VARIABLES: dict[str, tuple[int, Getter]] = {
    "remote_addr": (STR, _remote_addr),
    "remote_port": (INT, _remote_port),
    "remote_user": (ANY, _remote_user),  # session.vars["remote_user"] (set by auth filters)
    "server_addr": (STR, _server_addr),
    "server_port": (INT, _server_port),
    "time_local": (SAFE, _time_local),
    "time_iso8601": (SAFE, _time_iso8601),
    "msec": (SEC, _msec),
    "request": (STR, _request),
    "request_method": (STR, _request_method),
    "request_uri": (STR, _request_uri),
    "uri": (STR, _uri),
    "args": (STR, _args),
    "server_protocol": (STR, _server_protocol),
    "scheme": (SAFE, _scheme),
    "host": (STR, _host),
    "status": (STATUS, _status),
    "body_bytes_sent": (INT, _body_bytes_sent),
    "request_length": (INT, _request_length),
    "request_time": (SEC, _request_time),
    "upstream_addr": (USTR, _upstream_addr),
    "upstream_connect_time": (SEC, _upstream_connect_time),
    "upstream_header_time": (SEC, _upstream_header_time),
    "upstream_response_time": (SEC, _upstream_response_time),
    "upstream_reused": (BOOL, _upstream_reused),
    "upstream_tries": (INT, _upstream_tries),
    "route": (USTR, _route),
    "request_id": (ANY, _request_id),
    "error": (USTR, _error),
    "pid": (INT, lambda s, e: os.getpid()),  # the worker process that served the request
}
_PREFIXED: tuple[tuple[str, int, Callable[[str], Getter]], ...] = (
    ("http_", STR, lambda rest: _request_header(rest.replace("_", "-").lower().encode("latin-1"))),
    ("sent_http_", STR, lambda rest: _response_header(rest.replace("_", "-").lower().encode("latin-1"))),
    ("var_", ANY, _session_var),
)


def _variable(name: str) -> tuple[int, Getter]:
    """The (kind, getter) of a variable name; ValueError names an unknown one."""
    found = VARIABLES.get(name)
    if found is not None:
        return found
    for prefix, kind, make in _PREFIXED:
        if name.startswith(prefix) and len(name) > len(prefix):
            return kind, make(name[len(prefix) :])
    raise ValueError(f"unknown access log variable ${name}")


# compiling ----------------------------------------------------------------------------------------
_VAR = re.compile(r"\$(?:\{([^}]*)(\}?)|(\w*))", re.ASCII)
_NAME = re.compile(r"\w+", re.ASCII)


def _parse(text: str) -> list[str | tuple[str, int, Getter]]:
    """Literal strings and (name, kind, getter) triples, in template order."""
    items: list[str | tuple[str, int, Getter]] = []
    pos = 0
    for m in _VAR.finditer(text):
        braced, closed, bare = m.groups()
        if braced is not None and not closed:
            raise ValueError(f"unclosed '${{' at offset {m.start()} in access log format {text!r}")
        name = braced if braced is not None else bare
        if not name or not _NAME.fullmatch(name):
            raise ValueError(f"'$' at offset {m.start()} is not followed by a variable name in access log format {text!r}")
        if m.start() > pos:
            items.append(text[pos : m.start()])
        items.append((name, *_variable(name)))
        pos = m.end()
    if pos < len(text):
        items.append(text[pos:])
    return items


def _generate(name: str, body: list[str], parts: list[str], ns: dict[str, Any]) -> Formatter:
    ns.update(_esc=_esc, _esc_u=_esc_u, _jstr=_jstr, _jwire=_jwire, _text_any=_text_any, _json_any=_json_any)
    joined = '"".join((' + ", ".join(parts) + ",))" if parts else '""'
    src = "def _format(s, e=None):\n" + "".join(f"    {line}\n" for line in body) + f"    return {joined}\n"
    # the source holds only fragments of this module; template text lives in ns as values
    exec(compile(src, f"<access log {name}>", "exec"), ns)  # noqa: S102
    return ns["_format"]


def compile_template(text: str) -> Formatter:
    """Compile an nginx-style ``$var`` / ``${var}`` template into ``(session, error) -> str``.

    Called once per configured format; raises ValueError naming an unknown variable.
    """
    ns: dict[str, Any] = {}
    body: list[str] = []
    parts: list[str] = []
    for i, item in enumerate(_parse(text)):
        if isinstance(item, str):
            ns[f"_l{i}"] = item
            parts.append(f"_l{i}")
        else:
            _, kind, getter = item
            ns[f"_g{i}"] = getter
            body.append(f"v{i} = _g{i}(s, e)")
            parts.append(_TEXT[kind].format(v=f"v{i}"))
    fmt = _generate("format", body, parts, ns)
    fmt.template = text  # type: ignore[attr-defined]
    return fmt


def compile_json(fields: Sequence[str] | Mapping[str, str] = JSON_FIELDS) -> Formatter:
    """A formatter writing one JSON object per line, typed (numbers, strings, null).

    ``fields`` lists variable names (used as keys) or maps keys to variable names.
    """
    if isinstance(fields, str):
        raise ValueError(f"json access log fields must be a list of variable names, not {fields!r}")
    if isinstance(fields, Mapping):
        pairs = list(fields.items())
    else:
        pairs = [(f.removeprefix("$") if isinstance(f, str) else f, f) for f in fields]
    if not pairs:
        raise ValueError("a json access log format needs at least one field")
    seen: set[str] = set()
    ns: dict[str, Any] = {}
    body: list[str] = []
    parts: list[str] = []
    for i, (key, name) in enumerate(pairs):
        if key in seen:
            raise ValueError(f"duplicate field {key!r} in json access log format")
        seen.add(key)
        if not isinstance(name, str) or not _NAME.fullmatch(name.removeprefix("$")):
            raise ValueError(f"json access log field {key!r}: {name!r} is not a variable name")
        kind, getter = _variable(name.removeprefix("$"))
        ns[f"_k{i}"] = ("{" if i == 0 else ",") + json.dumps(key) + ":"
        ns[f"_g{i}"] = getter
        body.append(f"v{i} = _g{i}(s, e)")
        parts += [f"_k{i}", _JSON[kind].format(v=f"v{i}")]
    parts.append('"}"')
    fmt = _generate("json", body, parts, ns)
    fmt.template = "json"  # type: ignore[attr-defined]
    return fmt


def resolve_format(spec: str | Sequence[str] | Mapping[str, str]) -> Formatter:
    """``"combined"`` / ``"common"`` / ``"main"`` / ``"json"``, any other string as a template,
    or a list (or key → variable mapping) of variables for a JSON format."""
    if isinstance(spec, str):
        if spec == "json":
            return compile_json()
        return compile_template(FORMATS.get(spec, spec))
    return compile_json(spec)


# the writer ---------------------------------------------------------------------------------------
_REOPEN = object()  # a marker in the line list: reopen the file here
MiB = 1024 * 1024


def _off(session: Any, error: Any = None) -> None:
    """``AccessLog.log`` when the target is "off"."""


class AccessLog:
    """Append formatted lines to a file, ``"stdout"`` or ``"stderr"`` (or nowhere: ``"off"``),
    or send them to ``"syslog"`` through ``sink`` (a :class:`~ferryman.observability.syslog.SyslogSink`:
    one non-blocking send per line on the loop thread, no writer thread).

    ``log()`` runs on the loop thread and never blocks on I/O; a daemon thread writes
    batches. ``reopen()`` (logrotate, SIGUSR1) and ``close()`` (shutdown) are ordered with
    the lines: lines logged before ``reopen()`` go to the old file, later ones to the new.
    Counters: ``dropped`` (buffer full or write failed) and ``written`` (lines written).
    """

    def __init__(
        self,
        target: str,
        formatter: Formatter | str | Sequence[str] | Mapping[str, str] = "combined",
        *,
        max_buffer: int = 16 * MiB,
        batch_bytes: int = 64 * 1024,
        flush_interval: float = 0.2,
        sink: Any = None,
    ) -> None:
        self.target = target
        self.sink = sink
        self.format: Formatter = formatter if callable(formatter) else resolve_format(formatter)
        self.dropped = 0
        self.written = 0
        self._limit = max_buffer
        self._batch_bytes = batch_bytes
        self._interval = flush_interval
        self._cond = threading.Condition(threading.Lock())
        self._lines: list[Any] = []
        self._queued = 0  # bytes in _lines
        self._inflight = 0  # bytes taken by the writer, not yet written
        self._urgent = False  # write now: reopen or close asked
        self._closing = False
        self._fd = -1
        self._thread: threading.Thread | None = None
        if target == "off":
            self.log = _off  # type: ignore[method-assign]
            self._closing = True
            return
        if target == "syslog":
            if sink is None:
                raise ValueError("access log target 'syslog' needs a syslog sink")
            fmt, send = self.format, sink.send

            def to_sink(session: Session, error: ProxyError | None = None) -> None:
                send(fmt(session, error))

            self.log = to_sink  # type: ignore[method-assign]
            return
        if target not in ("stdout", "stderr"):
            self._fd = self._open()  # fail fast: a bad path is an error at start-up
        self._thread = threading.Thread(target=self._run, name="ferryman-accesslog", daemon=True)
        self._thread.start()

    # loop thread ------------------------------------------------------------------------------
    def log(self, session: Session, error: ProxyError | None = None) -> None:
        """Format one request's line and queue it (drop it when the buffer is full)."""
        line = self.format(session, error)
        size = len(line) + 1
        with self._cond:
            if self._closing:
                return
            queued = self._queued + size
            if queued + self._inflight > self._limit:
                self.dropped += 1
                return
            lines = self._lines
            if not lines or (queued >= self._batch_bytes > self._queued):
                self._cond.notify()  # wake an idle writer, or cut a full batch short
            lines.append(line)
            self._queued = queued

    def reopen(self) -> None:
        """Reopen the file (after logrotate renamed it); lines queued so far go to the old one."""
        if self._fd < 0:
            return
        with self._cond:
            if self._closing:
                return
            self._lines.append(_REOPEN)
            self._urgent = True
            self._cond.notify()

    @property
    def closed(self) -> bool:
        """close() was called (and, with a writer thread, that thread has ended)."""
        return self._closing and (self._thread is None or not self._thread.is_alive())

    @property
    def lost(self) -> int:
        """Lines dropped here or by the syslog sink."""
        return self.dropped + (self.sink.dropped if self.sink is not None else 0)

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued, stop the writer and close the file. Idempotent; blocks."""
        if self.sink is not None:
            self.sink.close(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # writer thread ----------------------------------------------------------------------------
    def _open(self) -> int:
        return os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _run(self) -> None:
        cond = self._cond
        try:
            while True:
                with cond:
                    while not self._lines and not self._closing:
                        cond.wait()
                    if not self._closing and not self._urgent and self._queued < self._batch_bytes:
                        cond.wait(self._interval)  # gather a batch; log()/reopen()/close() cut it short
                    batch, self._lines = self._lines, []
                    self._inflight, self._queued = self._queued, 0
                    self._urgent = False
                    closing = self._closing
                self._write_batch(batch)
                with cond:
                    self._inflight = 0
                if closing:
                    return
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _write_batch(self, batch: list[Any]) -> None:
        start = 0
        for i, item in enumerate(batch):
            if item is _REOPEN:
                self._write(batch[start:i])
                self._reopen_now()
                start = i + 1
        self._write(batch[start:])

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        text = "\n".join(lines) + "\n"
        try:
            if self._fd >= 0:
                view = memoryview(text.encode("utf-8", "backslashreplace"))
                while view:
                    view = view[os.write(self._fd, view) :]
            else:
                stream = sys.stdout if self.target == "stdout" else sys.stderr
                stream.write(text)
                stream.flush()
        except (OSError, ValueError) as exc:
            with self._cond:
                self.dropped += len(lines)
            log.error("access log %s: write failed, %d lines dropped: %s", self.target, len(lines), exc)
            return
        self.written += len(lines)

    def _reopen_now(self) -> None:
        try:
            fd = self._open()
        except OSError as exc:
            log.error("access log %s: reopen failed, still writing the old file: %s", self.target, exc)
            return
        os.close(self._fd)
        self._fd = fd

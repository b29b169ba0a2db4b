"""OpenTelemetry tracing: one server span per HTTP request, W3C trace context propagated
upstream, spans exported by OTLP/HTTP (protobuf) in batches from a background thread.

Why not the SDK's tracer on the data path: its ``start_span``/``end`` cost ~50 µs per span
here and its protobuf encoding ~90 µs more, about as much as proxying the request. So the
event loop only does what must happen per request, with plain ints and bytes:

* :meth:`Tracer.start` (first hook): read ``traceparent``/``tracestate``, make the ids,
  decide sampling (OpenTelemetry's ``ParentBased(TraceIdRatioBased)`` rules);
* :meth:`Tracer.inject` (each upstream attempt): our ``traceparent`` (and the client's
  ``tracestate``) replace the client's on the upstream request;
* :meth:`Tracer.finish` (``logging``): a tuple of the request's facts onto a queue.

:class:`OtlpExporter` (the batch processor) turns queued tuples into an OTLP
``ExportTraceServiceRequest`` and POSTs it; its resource (via the SDK's ``Resource``,
which also reads ``OTEL_RESOURCE_ATTRIBUTES``) and scope are encoded once with the
official protobuf classes, each span by :func:`encode_span` (the wire format written out;
the tests decode it with the official classes). Needs ``pip install 'ferryman[otel]'``.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import os
import random
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Mapping
from importlib.util import find_spec
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "OtlpExporter",
    "Span",
    "Tracer",
    "encode_span",
    "missing_extra",
    "parse_traceparent",
]

log = logging.getLogger(__name__)

EXTRA = "pip install 'ferryman[otel]'"
_MODULES = ("opentelemetry.sdk", "opentelemetry.proto", "opentelemetry.exporter.otlp.proto.http")
_HEX = frozenset(b"0123456789abcdef")
_TRACEPARENT = b"traceparent"
_TRACESTATE = b"tracestate"
_MASK64 = (1 << 64) - 1


def missing_extra() -> str | None:
    """Why tracing cannot run here (the extra is not installed), or None."""
    missing = []
    for name in _MODULES:
        try:
            found = find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    if not missing:
        return None
    return f"needs OpenTelemetry, which is not installed (no {', '.join(missing)}): {EXTRA}"


# W3C trace context -----------------------------------------------------------------------------
def parse_traceparent(value: bytes) -> tuple[int, int, int] | None:
    """``00-<trace id>-<parent id>-<flags>`` → (trace id, parent span id, flags), or None
    when it is not valid (then a new trace starts). Later versions are read by the
    version-00 layout, as the spec asks; version ``ff`` and all-zero ids are invalid."""
    value = value.strip()
    if len(value) < 55 or value[2:3] != b"-" or value[35:36] != b"-" or value[52:53] != b"-":
        return None
    version = value[:2]
    if version == b"ff" or not _HEX.issuperset(version) or (version == b"00" and len(value) != 55):
        return None
    if len(value) > 55 and value[55:56] != b"-":
        return None
    trace, parent, flags = value[3:35], value[36:52], value[53:55]
    if not (_HEX.issuperset(trace) and _HEX.issuperset(parent) and _HEX.issuperset(flags)):
        return None
    trace_id, parent_id = int(trace, 16), int(parent, 16)
    if not trace_id or not parent_id:
        return None
    return trace_id, parent_id, int(flags, 16)


class Span:
    """One request's trace context. ``str(span)`` is its trace id (``$var_trace`` in an
    access log template)."""

    __slots__ = ("trace_id", "span_id", "parent_id", "flags", "tracestate", "replace", "started", "traceparent")

    def __init__(self, trace_id: int, span_id: int, parent_id: int, flags: int, tracestate: bytes | None, replace: bool) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id  # 0: a new trace
        self.flags = flags  # bit 0: sampled
        self.tracestate = tracestate  # the client's, passed on unchanged
        self.replace = replace  # the client sent trace headers: drop them from the upstream request
        self.started = time.monotonic_ns()
        self.traceparent = b"00-%032x-%016x-%02x" % (trace_id, span_id, flags)

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    def __str__(self) -> str:
        return "%032x" % self.trace_id


class Tracer:
    """Start, propagate and finish the spans of one process (see the module docstring).

    ``sample_ratio``: the share of new traces recorded (by trace id, so every process
    decides alike). ``parent_based``: a request with a valid ``traceparent`` is recorded
    iff its sampled flag is set; otherwise the ratio decides for it too."""

    def __init__(self, exporter: OtlpExporter | None, sample_ratio: float = 1.0, parent_based: bool = True) -> None:
        self.exporter = exporter
        self.parent_based = parent_based
        self.bound = round(sample_ratio * (1 << 64))  # TraceIdRatioBased: low 64 bits of the id below it
        self._bits = random.getrandbits

    def start(self, session: Any) -> Span:
        """A span for the request whose head just arrived."""
        parent = None
        tracestate = None
        replace = False
        for name, value in session.request.headers:
            if name == _TRACEPARENT:
                replace = True
                if parent is None:
                    parent = parse_traceparent(value)
            elif name == _TRACESTATE:
                replace = True
                tracestate = value if tracestate is None else tracestate + b"," + value
        bits = self._bits
        span_id = bits(64) or 1
        if parent is not None:
            trace_id, parent_id, flags = parent
            if self.parent_based:
                sampled = flags & 1
            else:
                sampled = (trace_id & _MASK64) < self.bound
            return Span(trace_id, span_id, parent_id, (flags & 0xFE) | sampled, tracestate, replace)
        trace_id = bits(128) or 1
        return Span(trace_id, span_id, 0, 1 if (trace_id & _MASK64) < self.bound else 0, None, replace)

    @staticmethod
    def inject(span: Span, headers: list[tuple[bytes, bytes]]) -> None:
        """Put our context on an upstream request's headers (replacing the client's)."""
        if span.replace:
            headers[:] = [h for h in headers if h[0] != _TRACEPARENT and h[0] != _TRACESTATE]
        headers.append((_TRACEPARENT, span.traceparent))
        if span.tracestate is not None:
            headers.append((_TRACESTATE, span.tracestate))

    def finish(self, span: Span, session: Any, error: Any, listener: str, route: str, upstream: str) -> None:
        """Queue a sampled request's span for export (a tuple: encoding happens off the loop)."""
        if not span.flags & 1 or self.exporter is None:
            return
        request = session.request
        digest = session.digest
        self.exporter.submit((
            span.trace_id, span.span_id, span.parent_id, span.flags, span.tracestate, span.started, time.monotonic_ns(),
            request.method, request.target, request.version, session.header(b"host"), session.tls, session.client_addr,
            session.response_status, digest.upstream_addr, listener, route, upstream,
            None if error is None else (error.kind._value_, str(error)),
        ))


# protobuf wire format ------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, data: bytes) -> bytes:
    """A length-delimited field (``tag``: the field number)."""
    return _varint(tag << 3 | 2) + _varint(len(data)) + data


def _key(name: str) -> bytes:
    return _field(1, name.encode())  # KeyValue.key


_ATTR = _varint(9 << 3 | 2)  # Span.attributes (repeated KeyValue)
_K = {name: _key(name) for name in (
    "http.request.method", "url.path", "url.scheme", "http.route", "http.response.status_code",
    "network.protocol.name", "network.protocol.version", "server.address", "server.port", "client.address", "client.port",
    "error.type", "ferryman.listener", "ferryman.upstream", "ferryman.upstream.address",
)}


def _str_attr(key: bytes, value: str | bytes) -> bytes:
    raw = value.encode("utf-8", "backslashreplace") if isinstance(value, str) else value
    any_value = b"\x0a" + _varint(len(raw)) + raw  # AnyValue.string_value
    body = key + b"\x12" + _varint(len(any_value)) + any_value
    return _ATTR + _varint(len(body)) + body


def _int_attr(key: bytes, value: int) -> bytes:
    any_value = b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # AnyValue.int_value (int64)
    body = key + b"\x12" + _varint(len(any_value)) + any_value
    return _ATTR + _varint(len(body)) + body


_SERVER = b"\x30\x02"  # Span.kind = SPAN_KIND_SERVER
_HTTP = _str_attr(_K["network.protocol.name"], "http")
_SCHEMES = {False: _str_attr(_K["url.scheme"], "http"), True: _str_attr(_K["url.scheme"], "https")}
_Q = struct.Struct("<Q")
_I = struct.Struct("<I")
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # Span.flags: whether the parent is remote is known / it is


def _latin(value: bytes) -> str:
    return value.decode("latin-1")


def _split_host(host: bytes) -> tuple[bytes, int | None]:
    """A Host header → (name, port or None); ``[::1]:8080`` → (``::1``, 8080)."""
    if host.startswith(b"["):
        end = host.find(b"]")
        if end < 0:
            return host, None
        name, rest = host[1:end], host[end + 1 :]
        port = rest[1:] if rest.startswith(b":") else b""
    else:
        name, _, port = host.partition(b":")
    return name, int(port) if port.isdigit() and len(port) <= 5 else None


def encode_span(record: tuple, clock_offset: int) -> bytes:
    """One OTLP ``Span`` message (without its field tag) from a :meth:`Tracer.finish`
    record; ``clock_offset``: wall-clock ns minus monotonic ns."""
    (trace_id, span_id, parent_id, flags, tracestate, started, ended, method, target, version, host, tls, client,
     status, upstream_addr, listener, route, upstream, error) = record
    method_s = _latin(method)
    path = target.partition(b"?")[0]  # the query is left out: it may carry secrets
    parts = [
        b"\x0a\x10", trace_id.to_bytes(16, "big"), b"\x12\x08", span_id.to_bytes(8, "big"),
    ]
    if tracestate:
        parts.append(_field(3, tracestate))
    if parent_id:
        parts += (b"\x22\x08", parent_id.to_bytes(8, "big"))
    parts += (
        _field(5, (f"{method_s} {route}" if route else method_s).encode("utf-8", "backslashreplace")), _SERVER,
        b"\x39", _Q.pack(started + clock_offset), b"\x41", _Q.pack(ended + clock_offset),
        _str_attr(_K["http.request.method"], method), _str_attr(_K["url.path"], path), _SCHEMES[bool(tls)], _HTTP,
        _str_attr(_K["network.protocol.version"], version),
    )
    if route:
        parts.append(_str_attr(_K["http.route"], route))
    if status:
        parts.append(_int_attr(_K["http.response.status_code"], status))
    if host:
        name, port = _split_host(host)
        parts.append(_str_attr(_K["server.address"], name))
        if port is not None:
            parts.append(_int_attr(_K["server.port"], port))
    if type(client) is tuple:
        parts += (_str_attr(_K["client.address"], client[0]), _int_attr(_K["client.port"], client[1]))
    elif client:
        parts.append(_str_attr(_K["client.address"], f"unix:{client}"))
    if listener:
        parts.append(_str_attr(_K["ferryman.listener"], listener))
    if upstream:
        parts.append(_str_attr(_K["ferryman.upstream"], upstream))
    if upstream_addr:
        parts.append(_str_attr(_K["ferryman.upstream.address"], str(upstream_addr)))
    message = b""
    if error is not None:
        parts.append(_str_attr(_K["error.type"], error[0]))
        message = error[1].encode("utf-8", "backslashreplace")
    elif status >= 500:
        parts.append(_str_attr(_K["error.type"], str(status)))
    if error is not None or status >= 500:
        status_body = (_field(2, message) if message else b"") + b"\x18\x02"  # Status.message, code = ERROR
        parts.append(_field(15, status_body))
    parts += (b"\x85\x01", _I.pack(flags & 0xFF | _HAS_IS_REMOTE | (_IS_REMOTE if parent_id else 0)))  # Span.flags (fixed32)
    return b"".join(parts)


# the batch processor -----------------------------------------------------------------------
class OtlpExporter:
    """Queue span records (any thread, never blocking) and POST them in batches to an
    OTLP/HTTP traces endpoint from a daemon thread.

    A batch leaves every ``flush_interval`` seconds, or as soon as ``max_batch`` records
    wait. Beyond ``max_queue`` waiting records new ones are dropped. A failed POST (no
    connection, 429/502/503/504) is tried once more after a second, then dropped. Counters:
    ``exported`` and ``dropped`` (spans)."""

    def __init__(self, endpoint: str, *, service_name: str = "ferryman", headers: Mapping[str, str] | None = None,
                 timeout: float = 10.0, flush_interval: float = 5.0, max_batch: int = 512, max_queue: int = 2048,
                 compression: str = "none", resource: Mapping[str, Any] | None = None) -> None:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"OTLP endpoint {endpoint!r}: expected an http:// or https:// URL")
        self.endpoint = endpoint
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname, url.port
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._headers = {"Content-Type": "application/x-protobuf", "User-Agent": "ferryman", **(headers or {})}
        if compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"
        self._gzip = compression == "gzip"
        self.timeout = timeout
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.exported = 0
        self.dropped = 0
        self._prefix = _resource_and_scope(service_name, resource or {})
        self._queue: deque[tuple] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._conn: http.client.HTTPConnection | None = None
        self._warned = 0.0
        self._thread = threading.Thread(target=self._run, name="ferryman-otlp", daemon=True)
        self._thread.start()

    def submit(self, record: tuple) -> None:
        """Queue one span record (called on the event loop: a deque append)."""
        queue = self._queue
        if len(queue) >= self.max_queue:
            self.dropped += 1
            return
        queue.append(record)
        if len(queue) == self.max_batch:
            self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        """Export what is queued (within ``timeout``), then stop the thread."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    # the thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                closing = self._closing
                while self._queue:
                    batch = self._take()
                    try:
                        self._export(batch)
                    except Exception:  # the thread must outlive a bad batch (or a bug)
                        self.dropped += len(batch)
                        log.exception("tracing: exporting %d spans failed; they are dropped", len(batch))
                if closing:
                    return
        finally:
            if self._conn is not None:
                self._conn.close()

    def _take(self) -> list[tuple]:
        queue = self._queue
        popleft = queue.popleft
        return [popleft() for _ in range(min(len(queue), self.max_batch))]

    def _export(self, batch: list[tuple]) -> None:
        offset = time.time_ns() - time.monotonic_ns()
        spans = b"".join(_field(2, encode_span(record, offset)) for record in batch)  # ScopeSpans.spans
        scope_spans = _field(2, self._prefix[1] + spans)  # ResourceSpans.scope_spans
        body = _field(1, self._prefix[0] + scope_spans)  # ExportTraceServiceRequest.resource_spans
        if self._gzip:
            body = gzip.compress(body, 5)
        for attempt in (1, 2):
            problem = self._post(body)
            if problem is None:
                self.exported += len(batch)
                return
            retry, reason = problem
            if not retry or attempt == 2 or self._closing:
                break
            time.sleep(1.0)  # this thread only: back off before the one retry
        self.dropped += len(batch)
        now = time.monotonic()
        if now - self._warned > 60:
            self._warned = now
            log.warning("tracing: %d spans dropped: OTLP export to %s failed: %s (logged at most once a minute)",
                        len(batch), self.endpoint, reason)

    def _post(self, body: bytes) -> tuple[bool, str] | None:
        """None when accepted, else (worth a retry, why)."""
        try:
            conn = self._conn
            if conn is None:
                cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
                conn = self._conn = cls(self._host, self._port, timeout=self.timeout)
            conn.request("POST", self._path, body, self._headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            return True, f"{type(exc).__name__}: {exc}"
        if response.will_close:
            conn.close()
            self._conn = None
        if 200 <= response.status < 300:
            return None
        return response.status in (429, 502, 503, 504), f"HTTP {response.status}"


def _resource_and_scope(service_name: str, extra: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """(``ResourceSpans.resource`` field, ``ScopeSpans.scope`` field), encoded once with
    the official classes; the resource from the SDK (``OTEL_RESOURCE_ATTRIBUTES`` too)."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourcePb
    from opentelemetry.sdk.resources import Resource

    from .. import __version__

    resource = Resource.create({
        "service.name": service_name, "service.version": __version__, "process.pid": os.getpid(),
        "host.name": socket.gethostname(), **extra,
    })

    def value(v: Any) -> AnyValue:
        if isinstance(v, bool):
            return AnyValue(bool_value=v)
        if isinstance(v, int):
            return AnyValue(int_value=v)
        if isinstance(v, float):
            return AnyValue(double_value=v)
        return AnyValue(string_value=str(v))

    pb = ResourcePb(attributes=[KeyValue(key=k, value=value(v)) for k, v in resource.attributes.items()])
    scope = InstrumentationScope(name="ferryman", version=__version__)
    return _field(1, pb.SerializeToString()), _field(1, scope.SerializeToString())


def build_tracer(config: Any) -> Tracer:
    """The tracer of a ``[tracing]`` table (a :class:`~ferryman.config.model.TracingConfig`)."""
    exporter = OtlpExporter(
        config.endpoint, service_name=config.service_name, headers=config.headers, timeout=config.timeout,
        flush_interval=config.flush_interval, max_batch=config.max_batch, max_queue=config.max_queue,
        compression=config.compression,
    )
    return Tracer(exporter, config.sample_ratio, config.parent_based)


class ExportService:
    """Background service of a tracer: on stop, export what is queued (up to 5 s)."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        if self.tracer.exporter is not None:
            self.tracer.exporter.close(timeout=5.0)

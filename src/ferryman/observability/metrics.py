"""Prometheus metrics of one process: counted on the hot path with plain integer adds,
exported as a snapshot (a flat dict) that workers publish and any worker renders.

The data path never looks anything up by name. At config build time the gateway asks the
:class:`Registry` for one :class:`RequestMetrics` per (listener, route, upstream) and one
:class:`L4Metrics` per (listener, upstream); the ``logging`` hook then makes a single call,
``metrics.observe(session, error)``, which adds a few ints and bisects a precomputed tuple
for each histogram. Other counters (rate-limit refusals, TLS handshakes) are :class:`Cell`
objects bumped as ``cell.value += 1``. Gauges are not kept up to date at all: collectors
(callables) are asked for them when a snapshot is taken.

A snapshot maps ``(metric name, label values)`` to an int/float, or for a histogram to a
list ``[bucket 0, …, bucket n (+Inf), sum]`` of non-cumulative counts. Its shape is what
:mod:`ferryman.observability.board` copies between processes; :func:`merge` combines the
snapshots of several workers, and :func:`render` writes Prometheus text format 0.0.4.

:data:`METRICS` is the table of every metric (name, type, labels, meaning): the single
source for the exposition and for the docs (:func:`markdown_table`).
"""

from __future__ import annotations

import logging
import math
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "CONTENT_TYPE",
    "METRICS",
    "SPECS",
    "Cell",
    "L4Metrics",
    "MetricSpec",
    "Registry",
    "RequestMetrics",
    "Snapshot",
    "markdown_table",
    "merge",
    "render",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[str, ...]
Key = tuple[str, Labels]
Value = int | float | list
Snapshot = dict[Key, Value]
Collector = Callable[[], Iterable[tuple[str, Labels, float]]]

# buckets (seconds, upper bounds; +Inf is implicit) -------------------------------------------
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
L4_DURATION_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0)

_NAME = re.compile(r"ferryman_[a-zA-Z0-9_]+\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric family.

    ``merge`` says how the values of several workers combine: ``sum`` (counters, and gauges
    such as open connections) or ``worker`` (kept apart: the snapshot's labels lack the last
    label, ``worker``, which :func:`merge` adds) or ``max``.
    """

    name: str
    kind: str  # counter | gauge | histogram
    labels: Labels
    help: str
    buckets: tuple[float, ...] = ()
    merge: str = "sum"

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"metric name {self.name!r} must match ferryman_[a-zA-Z0-9_]+")
        if self.kind not in ("counter", "gauge", "histogram"):
            raise ValueError(f"{self.name}: unknown kind {self.kind!r}")
        if (self.kind == "counter") != self.name.endswith("_total"):
            raise ValueError(f"{self.name}: counters, and only counters, end in _total")
        for label in self.labels:
            if not _LABEL.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"{self.name}: bad label name {label!r}")
        if self.merge not in ("sum", "worker", "max"):
            raise ValueError(f"{self.name}: unknown merge {self.merge!r}")
        if self.merge == "worker" and self.labels[-1:] != ("worker",):
            raise ValueError(f"{self.name}: merge='worker' needs 'worker' as the last label")
        if (self.kind == "histogram") != bool(self.buckets) or list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"{self.name}: histograms, and only histograms, have increasing buckets")

    @property
    def own_labels(self) -> Labels:
        """The labels a process emits (without the ``worker`` label merge adds)."""
        return self.labels[:-1] if self.merge == "worker" else self.labels


_REQ = ("listener", "route", "upstream")
_L4 = ("listener", "upstream")

METRICS: tuple[MetricSpec, ...] = (
    # HTTP, per (listener, route, upstream) -- RequestMetrics.observe
    MetricSpec("ferryman_http_requests_total", "counter", (*_REQ, "status"),
               "HTTP requests finished, by status class (1xx..5xx; error: the request ended without a response status)."),
    MetricSpec("ferryman_http_request_errors_total", "counter", (*_REQ, "kind"),
               "HTTP requests that ended with an error, by error kind (connect_refused, read_timeout, ...)."),
    MetricSpec("ferryman_http_request_body_bytes_total", "counter", _REQ, "Request body bytes received from clients."),
    MetricSpec("ferryman_http_response_body_bytes_total", "counter", _REQ, "Response body bytes sent to clients."),
    MetricSpec("ferryman_http_request_duration_seconds", "histogram", _REQ,
               "Time from the request head to the end of the response (or the error).", DURATION_BUCKETS),
    MetricSpec("ferryman_http_upstream_connections_total", "counter", (*_REQ, "connection"),
               "Upstream connections requests were sent on: reused (a pool hit) or new."),
    MetricSpec("ferryman_http_upstream_connect_seconds", "histogram", _REQ,
               "Time from the request head until a new upstream connection was ready (new connections only; "
               "includes failed attempts before it).", CONNECT_BUCKETS),
    MetricSpec("ferryman_http_upstream_header_seconds", "histogram", _REQ,
               "Time from the request head to the upstream's response head (time to first byte).", DURATION_BUCKETS),
    MetricSpec("ferryman_http_upstream_response_seconds", "histogram", _REQ,
               "Time from the upstream connection being ready to the end of the response.", DURATION_BUCKETS),
    # L4, per (listener, upstream) -- L4Metrics.observe
    MetricSpec("ferryman_l4_connections_total", "counter", (*_L4, "result"),
               "TCP connections and UDP sessions finished, by result (ok or error)."),
    MetricSpec("ferryman_l4_errors_total", "counter", (*_L4, "kind"), "TCP connections and UDP sessions that ended with an error, by kind."),
    MetricSpec("ferryman_l4_bytes_total", "counter", (*_L4, "direction"),
               "Bytes relayed: up (client to upstream) and down (upstream to client)."),
    MetricSpec("ferryman_l4_connection_duration_seconds", "histogram", _L4,
               "Lifetime of TCP connections and UDP sessions.", L4_DURATION_BUCKETS),
    MetricSpec("ferryman_l4_upstream_connect_seconds", "histogram", _L4,
               "Time from accepting a connection until its upstream connection was ready.", CONNECT_BUCKETS),
    # counters others bump (Registry.counter)
    MetricSpec("ferryman_ratelimit_rejections_total", "counter", ("filter",), "Requests refused (429) by a ratelimit filter."),
    MetricSpec("ferryman_tls_handshakes_total", "counter", ("listener", "result"), "TLS handshakes with clients, by result (ok or error)."),
    MetricSpec("ferryman_tls_handshake_errors_total", "counter", ("listener", "reason"),
               "Failed TLS handshakes by OpenSSL's reason (http_request, unsupported_protocol, no_shared_cipher, eof, ...)."),
    MetricSpec("ferryman_log_lines_dropped_total", "counter", ("log", "listener"),
               "Log lines lost: the access log (per listener) or the error log (listener empty) could not take them "
               "(buffer full, syslog socket would block, write failed)."),
    MetricSpec("ferryman_trace_spans_total", "counter", ("result",),
               "Trace spans of sampled requests: exported (accepted by the OTLP endpoint) or dropped (queue full, export failed)."),
    # reloads (Registry.reloaded), per worker
    MetricSpec("ferryman_reloads_total", "counter", ("result", "worker"),
               "Config reloads by result (ok or error), per worker.", merge="worker"),
    MetricSpec("ferryman_reload_last_success", "gauge", ("worker",),
               "1 if the last reload of this worker applied, 0 if it was refused.", merge="worker"),
    MetricSpec("ferryman_reload_last_timestamp_seconds", "gauge", ("worker",),
               "Unix time of the last reload attempt of this worker.", merge="worker"),
    # gauges read at snapshot time (Registry.collect)
    MetricSpec("ferryman_connections_active", "gauge", ("listener",), "Open client connections (UDP: live sessions)."),
    MetricSpec("ferryman_http_requests_in_flight", "gauge", ("listener",), "HTTP requests being served."),
    MetricSpec("ferryman_upstream_pool_idle_connections", "gauge", ("listener",), "Idle upstream connections kept for reuse."),
    MetricSpec("ferryman_backend_healthy", "gauge", ("upstream", "backend", "worker"),
               "1 when the backend is in service as this worker sees it, 0 when it is out.", merge="worker"),
    MetricSpec("ferryman_backend_active_connections", "gauge", ("upstream", "backend"),
               "HTTP requests in flight to the backend; TCP: connections open (counted for least_conn and p2c upstreams)."),
    MetricSpec("ferryman_backend_requests_total", "counter", ("upstream", "backend"),
               "HTTP requests (TCP: connections) sent to the backend, retries included."),
    MetricSpec("ferryman_backend_failures_total", "counter", ("upstream", "backend"),
               "Of those, the ones that failed to connect or failed while proxying."),
    # the board's own facts (added by the reader, ferryman.observability.board)
    MetricSpec("ferryman_worker_starts_total", "counter", ("worker",), "Processes that have served as this worker (1 + restarts)."),
    MetricSpec("ferryman_metrics_age_seconds", "gauge", ("worker",), "Seconds since the worker last published its metrics."),
    MetricSpec("ferryman_metrics_snapshot_bytes", "gauge", ("worker",),
               "Size of the worker's last metrics snapshot (when truncated: the size it needed)."),
    MetricSpec("ferryman_metrics_truncated", "gauge", ("worker",),
               "0: complete; 1: the snapshot did not fit its slot and went without histograms; 2: it did not fit even "
               "then, and the last one that fitted is shown. Raise the metrics slot size."),
)

SPECS: dict[str, MetricSpec] = {spec.name: spec for spec in METRICS}

_STATUS_LABELS = ("error", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx")
_ALWAYS_STATUS = 6  # error and 1xx..5xx are always exported (a series that appears late loses its first rate)


def _histogram(bounds: tuple[float, ...]) -> list:
    return [0] * (len(bounds) + 1) + [0.0]  # buckets, +Inf, sum


class Cell:
    """A counter or set-gauge value: ``cell.value += 1`` (or ``cell.inc()``) on any path."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: int | float = 0

    def inc(self, amount: int | float = 1) -> None:
        self.value += amount


class RequestMetrics:
    """The counters of one (listener, route, upstream): one :meth:`observe` per request."""

    __slots__ = ("labels", "status", "errors", "bytes_in", "bytes_out", "reused", "new", "duration", "connect", "header", "response", "_keys")

    def __init__(self, listener: str, route: str, upstream: str) -> None:
        labels = self.labels = (listener, route, upstream)
        self._keys = (  # built once: a snapshot only fills them in
            tuple(("ferryman_http_requests_total", (*labels, status)) for status in _STATUS_LABELS),
            ("ferryman_http_request_body_bytes_total", labels), ("ferryman_http_response_body_bytes_total", labels),
            ("ferryman_http_upstream_connections_total", (*labels, "reused")), ("ferryman_http_upstream_connections_total", (*labels, "new")),
            ("ferryman_http_request_duration_seconds", labels), ("ferryman_http_upstream_connect_seconds", labels),
            ("ferryman_http_upstream_header_seconds", labels), ("ferryman_http_upstream_response_seconds", labels),
        )
        self.status = [0] * 10  # by status // 100; 0: no status
        self.errors: dict[str, int] = {}  # ErrorKind value → count (only touched on errors)
        self.bytes_in = 0
        self.bytes_out = 0
        self.reused = 0
        self.new = 0
        self.duration = _histogram(DURATION_BUCKETS)
        self.connect = _histogram(CONNECT_BUCKETS)
        self.header = _histogram(DURATION_BUCKETS)
        self.response = _histogram(DURATION_BUCKETS)

    def observe(self, session: Any, error: Any, _bisect: Any = bisect_left, _dur: tuple = DURATION_BUCKETS, _conn: tuple = CONNECT_BUCKETS) -> None:
        """Count one finished request. Reads ``response_status``, ``body_bytes_received``,
        ``bytes_sent`` and ``digest`` (start, upstream_connect, upstream_header, end, reused)
        of a :class:`~ferryman.http.session.Session`; ``error`` is its ProxyError or None.
        (The keyword defaults only bind module constants as locals: never pass them.)"""
        status = session.response_status
        self.status[status // 100 if 0 <= status < 1000 else 0] += 1
        self.bytes_in += session.body_bytes_received
        self.bytes_out += session.bytes_sent
        d = session.digest
        start = d.start
        end = d.end
        if end is not None:
            t = end - start
            h = self.duration
            h[_bisect(_dur, t)] += 1
            h[-1] += t
        connected = d.upstream_connect
        if connected is not None:
            if d.reused:
                self.reused += 1
            else:
                self.new += 1
                t = connected - start
                h = self.connect
                h[_bisect(_conn, t)] += 1
                h[-1] += t
            header = d.upstream_header
            if header is not None:
                t = header - start
                h = self.header
                h[_bisect(_dur, t)] += 1
                h[-1] += t
            if end is not None:
                t = end - connected
                h = self.response
                h[_bisect(_dur, t)] += 1
                h[-1] += t
        if error is not None:
            errors = self.errors
            kind = error.kind._value_  # an ErrorKind's string (Enum.value and Enum hashing are slow)
            errors[kind] = errors.get(kind, 0) + 1

    def dump(self, out: Snapshot) -> None:
        """Write this object's series into ``out`` (its keys are its own: plain assignment)."""
        status_keys, bytes_in, bytes_out, reused, new, duration, connect, header, response = self._keys
        for index, count in enumerate(self.status):
            if count or index < _ALWAYS_STATUS:
                out[status_keys[index]] = count
        labels = self.labels
        for kind, count in self.errors.items():
            out[("ferryman_http_request_errors_total", (*labels, kind))] = count
        out[bytes_in] = self.bytes_in
        out[bytes_out] = self.bytes_out
        out[reused] = self.reused
        out[new] = self.new
        out[duration] = self.duration[:]
        out[connect] = self.connect[:]
        out[header] = self.header[:]
        out[response] = self.response[:]


class L4Metrics:
    """The counters of one L4 (listener, upstream): one :meth:`observe` per connection or
    UDP session."""

    __slots__ = ("labels", "ok", "failed", "errors", "up", "down", "duration", "connect", "clock")

    def __init__(self, listener: str, upstream: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.labels: Labels = (listener, upstream)
        self.ok = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self.up = 0
        self.down = 0
        self.duration = _histogram(L4_DURATION_BUCKETS)
        self.connect = _histogram(CONNECT_BUCKETS)
        self.clock = clock  # the clock of L4Session.start

    def observe(self, session: Any, error: Any, _bisect: Any = bisect_left, _dur: tuple = L4_DURATION_BUCKETS, _conn: tuple = CONNECT_BUCKETS) -> None:
        """Count one finished :class:`~ferryman.l4.session.L4Session` (``start``,
        ``connected_at``, ``bytes_up``, ``bytes_down``). (Never pass the keyword defaults.)"""
        if error is None:
            self.ok += 1
        else:
            self.failed += 1
            errors = self.errors
            kind = error.kind._value_
            errors[kind] = errors.get(kind, 0) + 1
        self.up += session.bytes_up
        self.down += session.bytes_down
        start = session.start
        t = self.clock() - start
        h = self.duration
        h[_bisect(_dur, t)] += 1
        h[-1] += t
        connected = session.connected_at
        if connected is not None:
            t = connected - start
            if t < 0.0:  # loop.time() (uvloop: milliseconds, cached per iteration) against monotonic()
                t = 0.0
            h = self.connect
            h[_bisect(_conn, t)] += 1
            h[-1] += t

    def dump(self, out: Snapshot) -> None:
        labels = self.labels
        out[("ferryman_l4_connections_total", (*labels, "ok"))] = self.ok
        out[("ferryman_l4_connections_total", (*labels, "error"))] = self.failed
        for kind, count in self.errors.items():
            out[("ferryman_l4_errors_total", (*labels, kind))] = count
        out[("ferryman_l4_bytes_total", (*labels, "up"))] = self.up
        out[("ferryman_l4_bytes_total", (*labels, "down"))] = self.down
        out[("ferryman_l4_connection_duration_seconds", labels)] = self.duration[:]
        out[("ferryman_l4_upstream_connect_seconds", labels)] = self.connect[:]


def _add(out: Snapshot, key: Key, value: Value) -> None:
    """Put ``value`` at ``key``, adding to what is there (two sources of one series)."""
    old = out.get(key)
    if old is None:
        out[key] = value
    elif isinstance(old, list):
        if isinstance(value, list) and len(value) == len(old):
            out[key] = [a + b for a, b in zip(old, value)]
    elif not isinstance(value, list):
        out[key] = old + value


class Registry:
    """Every metric of one process. Objects are created once (config build time) and kept
    by their labels: a reload asking for the same labels gets the same object, so its counts
    go on instead of restarting from zero."""

    def __init__(self, specs: Mapping[str, MetricSpec] = SPECS) -> None:
        self.specs = specs
        self._cells: dict[Key, Cell] = {}
        self._requests: dict[Labels, RequestMetrics] = {}
        self._l4: dict[Labels, L4Metrics] = {}
        self._collectors: dict[str, Collector] = {}
        self._failing: set[str] = set()  # collectors whose last call raised (logged once until one works)
        self._bad: set[str] = set()  # collectors that yielded a sample the table does not allow (logged once)
        self._reload_ok = self.counter("ferryman_reloads_total", "ok")
        self._reload_error = self.counter("ferryman_reloads_total", "error")

    # build time ------------------------------------------------------------------------------
    def request(self, listener: str, route: str, upstream: str) -> RequestMetrics:
        """The counters of HTTP requests on ``listener`` matched by ``route`` to ``upstream``
        (empty strings where there is none, e.g. a 404 with no route)."""
        labels = (listener, route, upstream)
        found = self._requests.get(labels)
        if found is None:
            found = self._requests[labels] = RequestMetrics(*labels)
        return found

    def l4(self, listener: str, upstream: str) -> L4Metrics:
        labels = (listener, upstream)
        found = self._l4.get(labels)
        if found is None:
            found = self._l4[labels] = L4Metrics(*labels)
        return found

    def counter(self, name: str, *labels: str) -> Cell:
        """The cell of counter ``name`` with these label values (in the table's order)."""
        return self._cell(name, labels, "counter")

    def gauge(self, name: str, *labels: str) -> Cell:
        """A gauge set by assignment (``cell.value = x``)."""
        return self._cell(name, labels, "gauge")

    def _cell(self, name: str, labels: Labels, kind: str) -> Cell:
        spec = self.specs.get(name)
        if spec is None:
            raise ValueError(f"unknown metric {name!r}")
        if spec.kind != kind:
            raise ValueError(f"{name} is a {spec.kind}, not a {kind}")
        if len(labels) != len(spec.own_labels):
            raise ValueError(f"{name} takes labels {spec.own_labels}, got {labels!r}")
        key = (name, tuple(str(v) for v in labels))
        found = self._cells.get(key)
        if found is None:
            found = self._cells[key] = Cell()
        return found

    def collect(self, key: str, collector: Collector) -> None:
        """Ask ``collector()`` for ``(name, labels, value)`` samples at every snapshot
        (gauges: open connections, health...). Replaces an earlier collector of ``key``."""
        self._collectors[key] = collector
        self._failing.discard(key)
        self._bad.discard(key)

    def uncollect(self, key: str) -> None:
        self._collectors.pop(key, None)
        self._failing.discard(key)
        self._bad.discard(key)

    # control plane ---------------------------------------------------------------------------
    def reloaded(self, ok: bool, when: float | None = None) -> None:
        """Record a reload attempt of this process and its result."""
        (self._reload_ok if ok else self._reload_error).value += 1
        self.gauge("ferryman_reload_last_success").value = 1 if ok else 0
        self.gauge("ferryman_reload_last_timestamp_seconds").value = time.time() if when is None else when

    def snapshot(self) -> Snapshot:
        """Every value now (collectors are called here), as a flat dict."""
        out: Snapshot = {}
        for cell_key, cell in self._cells.items():
            out[cell_key] = cell.value
        for metrics in self._requests.values():
            metrics.dump(out)
        for l4 in self._l4.values():
            l4.dump(out)
        for key, collector in list(self._collectors.items()):
            try:
                samples = list(collector())
            except Exception:
                if key not in self._failing:
                    self._failing.add(key)
                    log.exception("metrics collector %r failed (logged once until it works again)", key)
                continue
            self._failing.discard(key)
            for name, labels, value in samples:
                spec = self.specs.get(name)
                labels = tuple(labels)
                if spec is None or spec.kind == "histogram" or len(labels) != len(spec.own_labels):
                    if key not in self._bad:
                        self._bad.add(key)
                        log.error("metrics collector %r yielded a bad sample %r%r (logged once)", key, name, labels)
                    continue
                _add(out, (name, labels), value)
        return out


# combining workers -----------------------------------------------------------------------------
def merge(snapshots: Sequence[Snapshot | None], specs: Mapping[str, MetricSpec] = SPECS, *, skip_gauges: Collection[int] = ()) -> Snapshot:
    """One snapshot from the snapshots of workers 0, 1, … (None: nothing from that one).

    Counters and histogram buckets are summed; gauges per their spec (summed, the maximum,
    or kept apart with a ``worker`` label); the gauges of workers in ``skip_gauges`` (dead
    ones: their last values are no longer true) are left out. Unknown names are dropped."""
    out: Snapshot = {}
    for worker, snap in enumerate(snapshots):
        if not snap:
            continue
        label = str(worker)
        skip = worker in skip_gauges
        for key, value in snap.items():
            name, labels = key
            spec = specs.get(name)
            if spec is None or (skip and spec.kind == "gauge"):
                continue
            if spec.merge == "worker":
                key = (name, (*labels, label))
            old = out.get(key)
            if old is None:
                out[key] = list(value) if isinstance(value, list) else value
            elif isinstance(old, list):
                if isinstance(value, list) and len(value) == len(old):
                    for i, v in enumerate(value):
                        old[i] += v
            elif isinstance(value, list):
                continue
            elif spec.merge == "max":
                out[key] = max(old, value)
            else:
                out[key] = old + value
    return out


# the text format ------------------------------------------------------------------------------
def render(snapshot: Mapping[Key, Value], specs: Iterable[MetricSpec] = METRICS) -> str:
    """Prometheus text exposition format 0.0.4 of a merged snapshot, families in table order.

    Samples whose labels do not match their family (a bad collector) are left out."""
    by_name: dict[str, list[tuple[Labels, Value]]] = {}
    for (name, labels), value in snapshot.items():
        by_name.setdefault(name, []).append((labels, value))
    lines: list[str] = []
    for spec in specs:
        samples = by_name.get(spec.name)
        if not samples:
            continue
        name = spec.name
        width = len(spec.labels)
        samples.sort(key=lambda item: item[0])
        out: list[str] = []
        if spec.kind != "histogram":
            for labels, value in samples:
                if len(labels) == width and not isinstance(value, list):
                    out.append(f"{name}{_labels(spec.labels, labels)} {_number(value)}")
        else:
            bounds = spec.buckets
            for labels, value in samples:
                if len(labels) == width and isinstance(value, list) and len(value) == len(bounds) + 2:
                    _histogram_lines(out, name, spec.labels, labels, bounds, value)
        if out:
            lines.append(f"# HELP {name} {_escape_help(spec.help)}")
            lines.append(f"# TYPE {name} {spec.kind}")
            lines.extend(out)
    return "\n".join(lines) + "\n" if lines else ""


_LE: dict[tuple[float, ...], tuple[str, ...]] = {}


def _histogram_lines(out: list[str], name: str, names: Labels, values: Labels, bounds: tuple[float, ...], value: list) -> None:
    inner = _label_pairs(names, values)
    sep = "," if inner else ""
    les = _LE.get(bounds)
    if les is None:
        les = _LE[bounds] = (*(_number(float(b)) for b in bounds), "+Inf")
    prefix = f"{name}_bucket{{{inner}{sep}le=\""
    total = 0
    for le, count in zip(les, value):
        total += count
        out.append(f'{prefix}{le}"}} {total}')
    braces = f"{{{inner}}}" if inner else ""
    out.append(f"{name}_sum{braces} {_number(float(value[-1]))}")
    out.append(f"{name}_count{braces} {total}")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_pairs(names: Labels, values: Labels) -> str:
    return ",".join(f'{n}="{_escape_value(v)}"' for n, v in zip(names, values))


def _labels(names: Labels, values: Labels) -> str:
    return f"{{{_label_pairs(names, values)}}}" if names else ""


def _number(value: int | float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def markdown_table(specs: Iterable[MetricSpec] = METRICS) -> str:
    """The metrics table for the docs: name, type, labels, meaning."""
    rows = ["| Metric | Type | Labels | Meaning |", "| --- | --- | --- | --- |"]
    for spec in specs:
        labels = ", ".join(spec.labels) or "-"
        rows.append(f"| `{spec.name}` | {spec.kind} | {labels} | {spec.help.replace('|', '/')} |")
    return "\n".join(rows) + "\n"

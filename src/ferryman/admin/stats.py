"""Live stats for the admin API (``GET /api/v1/stats``): request rate, error rate and
latency per route and per upstream, and what is open right now, computed from the metric
counters (merged across workers).

Rates are computed by the server from samples of the counters: each answer samples them
and compares with the oldest sample kept of the last ``window`` seconds (samples closer
together than ``min_spacing`` are not kept, so a busy poller cannot fill the list). The
span between the two samples is ``interval`` in the answer; rates are per second over it,
and latency quantiles come from the duration histogram's buckets counted in it (linear
interpolation inside a bucket, as Prometheus' ``histogram_quantile``). The list starts
with an all-zero sample at start-up, so the first answer gives averages since start.

Sans-IO: the caller passes the snapshot function and the clock.

An *error* is an HTTP request answered with a 5xx status or ended without any status, or a
TCP connection / UDP session that ended with an error.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from ..observability.metrics import DURATION_BUCKETS, Snapshot

__all__ = ["LiveStats", "quantile"]

WINDOW = 5.0  # seconds of samples rates are computed over (at most one poll interval more)
MIN_SPACING = 0.5  # seconds between kept samples
KEEP = 64  # samples kept at most
NO_ROUTE = "(no route)"  # the route label of requests no route matched
_ERROR_STATUS = frozenset(("5xx", "error"))
_HIST_LEN = len(DURATION_BUCKETS) + 2  # buckets, +Inf, sum


class _Counts:
    """The counters of one route or upstream at one instant."""

    __slots__ = ("requests", "errors", "connections", "conn_errors", "status", "hist")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.connections = 0  # L4
        self.conn_errors = 0
        self.status: dict[str, int] = {}
        self.hist = [0] * (_HIST_LEN - 1) + [0.0]

    def add_status(self, status: str, count: int) -> None:
        self.requests += count
        self.status[status] = self.status.get(status, 0) + count
        if status in _ERROR_STATUS:
            self.errors += count

    def add_hist(self, value: list) -> None:
        if len(value) == _HIST_LEN:
            hist = self.hist
            for i, v in enumerate(value):
                hist[i] += v


class _Sample:
    """Counters grouped per route, per upstream and in total; gauges as they are now."""

    __slots__ = ("routes", "upstreams", "total", "listeners", "backends")

    def __init__(self) -> None:
        self.routes: dict[str, _Counts] = {}
        self.upstreams: dict[str, _Counts] = {}
        self.total = _Counts()
        self.listeners: dict[str, dict[str, int]] = {}
        self.backends: dict[str, dict[str, int]] = {}


def _counts(table: dict[str, _Counts], name: str) -> _Counts:
    found = table.get(name)
    if found is None:
        found = table[name] = _Counts()
    return found


def _reduce(snapshot: Mapping[tuple[str, tuple[str, ...]], Any]) -> _Sample:
    out = _Sample()
    routes, upstreams = out.routes, out.upstreams
    for (name, labels), value in snapshot.items():
        if name == "ferryman_http_requests_total":
            _, route, upstream, status = labels
            targets = [out.total, _counts(routes, route or NO_ROUTE)]
            if upstream:
                targets.append(_counts(upstreams, upstream))
            for counts in targets:
                counts.add_status(status, value)
        elif name == "ferryman_http_request_duration_seconds":
            _, route, upstream = labels
            targets = [out.total, _counts(routes, route or NO_ROUTE)]
            if upstream:
                targets.append(_counts(upstreams, upstream))
            for counts in targets:
                counts.add_hist(value)
        elif name == "ferryman_l4_connections_total":
            _, upstream, result = labels
            for counts in (out.total, _counts(upstreams, upstream)):
                counts.connections += value
                if result == "error":
                    counts.conn_errors += value
        elif name == "ferryman_connections_active":
            out.listeners.setdefault(labels[0], {})["connections_active"] = value
        elif name == "ferryman_http_requests_in_flight":
            out.listeners.setdefault(labels[0], {})["requests_in_flight"] = value
        elif name == "ferryman_backend_active_connections":
            out.backends.setdefault(labels[0], {})[labels[1]] = value
    return out


def quantile(q: float, buckets: list[int | float], bounds: tuple[float, ...] = DURATION_BUCKETS) -> float | None:
    """The ``q`` quantile of a histogram (non-cumulative ``buckets``, the last one +Inf):
    interpolated inside its bucket; the highest finite bound when it falls in +Inf."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for index, count in enumerate(buckets):
        if count > 0 and seen + count >= rank:
            if index >= len(bounds):
                return bounds[-1]
            low = bounds[index - 1] if index > 0 else 0.0
            return low + (bounds[index] - low) * (rank - seen) / count
        seen += count
    return bounds[-1]


def _delta(now: int | float, then: int | float) -> int | float:
    """A counter's increase; a counter that went down restarted from zero."""
    return now - then if now >= then else now


def _series(now: _Counts, then: _Counts | None, span: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": now.requests, "errors": now.errors + now.conn_errors}
    if now.connections:
        out["connections"] = now.connections
    if then is None or span is None:
        out.update(requests_per_s=None, errors_per_s=None, error_ratio=None, latency_ms=None, status_per_s={})
        if now.connections:
            out["connections_per_s"] = None
        return out
    requests = _delta(now.requests, then.requests)
    connections = _delta(now.connections, then.connections)
    errors = _delta(now.errors, then.errors) + _delta(now.conn_errors, then.conn_errors)
    out["requests_per_s"] = requests / span
    if now.connections:
        out["connections_per_s"] = connections / span
    out["errors_per_s"] = errors / span
    out["error_ratio"] = errors / (requests + connections) if requests + connections else None
    out["status_per_s"] = {s: _delta(c, then.status.get(s, 0)) / span for s, c in sorted(now.status.items()) if _delta(c, then.status.get(s, 0))}
    hist = [_delta(a, b) for a, b in zip(now.hist, then.hist)]
    count = sum(hist[:-1])
    if count:
        out["latency_ms"] = {
            "mean": 1000.0 * hist[-1] / count,
            "p50": 1000.0 * (quantile(0.5, hist[:-1]) or 0.0),
            "p95": 1000.0 * (quantile(0.95, hist[:-1]) or 0.0),
            "p99": 1000.0 * (quantile(0.99, hist[:-1]) or 0.0),
        }
    else:
        out["latency_ms"] = None
    return out


class LiveStats:
    """Answers :meth:`report` from ``collect()`` (the merged metrics snapshot)."""

    def __init__(
        self,
        collect: Callable[[], Snapshot],
        *,
        window: float = WINDOW,
        min_spacing: float = MIN_SPACING,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if window <= 0 or min_spacing < 0:
            raise ValueError(f"window must be > 0 and min_spacing >= 0, got {window}, {min_spacing}")
        self.collect = collect
        self.window = window
        self.min_spacing = min_spacing
        self.clock = clock
        self.wall = wall
        self.samples: deque[tuple[float, _Sample]] = deque([(clock(), _Sample())], maxlen=KEEP)

    def report(self) -> dict[str, Any]:
        """The stats now (see the module's docstring for how rates are computed)."""
        now = self.clock()
        current = _reduce(self.collect())
        samples = self.samples
        while len(samples) >= 2 and samples[1][0] <= now - self.window:
            samples.popleft()  # keep one sample at or before the window's start
        base = samples[0] if samples and now - samples[0][0] > 0 else None
        if not samples or now - samples[-1][0] >= self.min_spacing:
            samples.append((now, current))
        span = now - base[0] if base is not None else None
        then = base[1] if base is not None else None
        routes = {
            name: _series(counts, then.routes.get(name, _Counts()) if then else None, span)
            for name, counts in sorted(current.routes.items())
        }
        upstreams = {
            name: _series(counts, then.upstreams.get(name, _Counts()) if then else None, span)
            for name, counts in sorted(current.upstreams.items())
        }
        for name, backends in current.backends.items():
            upstreams.setdefault(name, _series(_Counts(), _Counts() if then else None, span))["backends_active"] = backends
        listeners = current.listeners
        return {
            "time": self.wall(),
            "interval": span,
            "window": self.window,
            "total": {
                **_series(current.total, then.total if then else None, span),
                "connections_active": sum(v.get("connections_active", 0) for v in listeners.values()),
                "requests_in_flight": sum(v.get("requests_in_flight", 0) for v in listeners.values()),
            },
            "routes": routes,
            "upstreams": upstreams,
            "listeners": {name: listeners[name] for name in sorted(listeners)},
        }

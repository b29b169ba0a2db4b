"""Metrics of one process: the table, counting per request, snapshots, merging, and the
Prometheus text format (checked with prometheus_client's parser and a strict line check)."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import re
import socket

import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families
from support.http_proxy import App, Client, get, origin, start_proxy, stop

from ferryman.errors import ErrorKind, ProxyError
from ferryman.http.session import Digest
from ferryman.l4.session import L4Session
from ferryman.net.addr import parse_address
from ferryman.net.connect import Peer
from ferryman.observability.metrics import (
    CONNECT_BUCKETS,
    DURATION_BUCKETS,
    METRICS,
    SPECS,
    MetricSpec,
    Registry,
    markdown_table,
    merge,
    render,
)

TEST_TIMEOUT = 30.0


class Finished:
    """The facts of a finished request that ``observe`` reads (what a Session carries)."""

    __slots__ = ("response_status", "bytes_sent", "body_bytes_received", "digest")

    def __init__(self, status: int, *, start: float = 0.0, connect: float | None = None, header: float | None = None,
                 end: float | None = None, reused: bool = False, sent: int = 0, received: int = 0) -> None:
        self.response_status = status
        self.bytes_sent = sent
        self.body_bytes_received = received
        self.digest = Digest(start)
        self.digest.upstream_connect = connect
        self.digest.upstream_header = header
        self.digest.end = end
        self.digest.reused = reused


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """name → {sorted label pairs: value} for every sample, via prometheus_client."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


_LINE = re.compile(
    r'(# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*'
    r'|# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram)'
    r'|[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})?'
    r' (-?[0-9]+(\.[0-9]+)?(e[-+]?[0-9]+)?|\+Inf|-Inf|NaN))\Z'
)


def strict_check(text: str) -> None:
    """Every line is a HELP, TYPE or sample line of format 0.0.4; TYPE precedes its samples."""
    assert text.endswith("\n")
    typed: set[str] = set()
    for line in text[:-1].split("\n"):
        assert _LINE.match(line), f"bad exposition line: {line!r}"
        if line.startswith("# TYPE "):
            name = line.split()[2]
            assert name not in typed, f"{name} typed twice"
            typed.add(name)
        elif not line.startswith("#"):
            name = re.match(r"[a-zA-Z0-9_:]+", line).group(0)  # type: ignore[union-attr]
            assert name in typed or re.sub(r"_(bucket|sum|count)\Z", "", name) in typed, f"{name} sampled before its TYPE"


# the table -----------------------------------------------------------------------------------------
def test_table_names_are_unique_prefixed_and_documented() -> None:
    names = [spec.name for spec in METRICS]
    assert len(names) == len(set(names))
    assert all(name.startswith("ferryman_") for name in names)
    table = markdown_table()
    for spec in METRICS:
        assert f"`{spec.name}` | {spec.kind} |" in table
    # a histogram's series names must not clash with another family's
    series = {n for spec in METRICS if spec.kind == "histogram" for n in (spec.name + "_bucket", spec.name + "_sum", spec.name + "_count")}
    assert not series & set(names)


@pytest.mark.parametrize(("args", "message"), [
    (("http_requests_total", "counter", (), "x"), "must match"),
    (("ferryman_requests", "counter", (), "x"), "end in _total"),
    (("ferryman_open_total", "gauge", (), "x"), "end in _total"),
    (("ferryman_x_total", "counter", ("le",), "x"), "bad label name"),
    (("ferryman_x_total", "counter", ("a-b",), "x"), "bad label name"),
    (("ferryman_x_total", "counter", ("result",), "x", (), "worker"), "needs 'worker'"),
    (("ferryman_x_seconds", "histogram", (), "x"), "increasing buckets"),
    (("ferryman_x_seconds", "histogram", (), "x", (1.0, 0.5)), "increasing buckets"),
    (("ferryman_x", "gauge", (), "x", (), "avg"), "unknown merge"),
])
def test_bad_specs_are_refused(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MetricSpec(*args)


# counting requests ---------------------------------------------------------------------------------
def test_observe_counts_status_classes_bytes_connections_and_timings() -> None:
    registry = Registry()
    metrics = registry.request("web", "api", "pool")
    assert registry.request("web", "api", "pool") is metrics  # a reload gets the same counters
    metrics.observe(Finished(200, connect=0.002, header=0.004, end=0.03, sent=1000, received=10), None)
    metrics.observe(Finished(204, connect=0.0001, header=0.02, end=0.02, reused=True), None)
    metrics.observe(Finished(404, end=0.0005, sent=10), None)  # answered by a filter: no upstream
    metrics.observe(Finished(502, connect=None, end=0.003), ProxyError(ErrorKind.CONNECT_REFUSED))
    metrics.observe(Finished(0, connect=0.001, end=0.5, received=5), ProxyError(ErrorKind.CONNECTION_RESET))
    metrics.observe(Finished(101, connect=0.001, header=0.002, end=100.0, reused=True), None)  # a long tunnel
    snap = registry.snapshot()
    labels = ("web", "api", "pool")
    status = {k[1][3]: v for k, v in snap.items() if k[0] == "ferryman_http_requests_total"}
    assert status == {"error": 1, "1xx": 1, "2xx": 2, "3xx": 0, "4xx": 1, "5xx": 1}
    errors = {k[1][3]: v for k, v in snap.items() if k[0] == "ferryman_http_request_errors_total"}
    assert errors == {"connect_refused": 1, "connection_reset": 1}
    assert snap[("ferryman_http_request_body_bytes_total", labels)] == 15
    assert snap[("ferryman_http_response_body_bytes_total", labels)] == 1010
    assert snap[("ferryman_http_upstream_connections_total", (*labels, "reused"))] == 2
    assert snap[("ferryman_http_upstream_connections_total", (*labels, "new"))] == 2
    duration = snap[("ferryman_http_request_duration_seconds", labels)]
    assert sum(duration[:-1]) == 6
    assert duration[DURATION_BUCKETS.index(0.001)] == 1  # 0.5 ms
    assert duration[DURATION_BUCKETS.index(0.005)] == 1  # 3 ms
    assert duration[DURATION_BUCKETS.index(0.025)] == 1  # 20 ms
    assert duration[len(DURATION_BUCKETS)] == 1  # 100 s: above the last bound (+Inf)
    assert duration[-1] == pytest.approx(0.03 + 0.02 + 0.0005 + 0.003 + 0.5 + 100.0)
    connect = snap[("ferryman_http_upstream_connect_seconds", labels)]
    assert sum(connect[:-1]) == 2  # new connections only
    assert connect[CONNECT_BUCKETS.index(0.001)] == 1 and connect[CONNECT_BUCKETS.index(0.0025)] == 1  # bounds are inclusive
    header = snap[("ferryman_http_upstream_header_seconds", labels)]
    assert sum(header[:-1]) == 3 and header[-1] == pytest.approx(0.004 + 0.02 + 0.002)
    response = snap[("ferryman_http_upstream_response_seconds", labels)]
    assert sum(response[:-1]) == 4 and response[-1] == pytest.approx(0.028 + 0.0199 + 0.499 + 99.999)
    assert response[DURATION_BUCKETS.index(0.5)] == 1 and response[len(DURATION_BUCKETS)] == 1


def test_bucket_bounds_are_inclusive() -> None:
    registry = Registry()
    metrics = registry.request("l", "r", "u")
    for bound in DURATION_BUCKETS:
        metrics.observe(Finished(200, end=bound), None)
    text = render(merge([registry.snapshot()]))
    buckets = parse(text)["ferryman_http_request_duration_seconds_bucket"]
    le = {dict(k)["le"]: v for k, v in buckets.items()}
    for i, bound in enumerate(DURATION_BUCKETS):
        assert le[repr(bound)] == i + 1  # a value equal to a bound is in that bound's bucket
    assert le["+Inf"] == len(DURATION_BUCKETS)


def test_l4_observe_counts_results_bytes_and_timings() -> None:
    now = [1000.0]
    registry = Registry()
    metrics = registry.l4("db", "pg")
    metrics.clock = lambda: now[0]
    ok = L4Session("db", "tcp", ("127.0.0.1", 5000), ("127.0.0.1", 5432))
    ok.start, ok.connected_at, ok.bytes_up, ok.bytes_down = 990.0, 990.002, 100, 5000
    refused = L4Session("db", "tcp", ("127.0.0.1", 5001), ("127.0.0.1", 5432))
    refused.start = 999.5
    metrics.observe(ok, None)
    metrics.observe(refused, ProxyError(ErrorKind.CONNECT_REFUSED))
    snap = registry.snapshot()
    assert snap[("ferryman_l4_connections_total", ("db", "pg", "ok"))] == 1
    assert snap[("ferryman_l4_connections_total", ("db", "pg", "error"))] == 1
    assert snap[("ferryman_l4_errors_total", ("db", "pg", "connect_refused"))] == 1
    assert snap[("ferryman_l4_bytes_total", ("db", "pg", "up"))] == 100
    assert snap[("ferryman_l4_bytes_total", ("db", "pg", "down"))] == 5000
    duration = snap[("ferryman_l4_connection_duration_seconds", ("db", "pg"))]
    assert sum(duration[:-1]) == 2 and duration[-1] == pytest.approx(10.5)
    connect = snap[("ferryman_l4_upstream_connect_seconds", ("db", "pg"))]
    assert sum(connect[:-1]) == 1 and connect[CONNECT_BUCKETS.index(0.0025)] == 1


def test_cells_collectors_and_reloads() -> None:
    registry = Registry()
    refused = registry.counter("ferryman_ratelimit_rejections_total", "rl")
    assert registry.counter("ferryman_ratelimit_rejections_total", "rl") is refused
    refused.value += 2
    refused.inc()
    registry.counter("ferryman_tls_handshakes_total", "web", "ok").inc(5)
    with pytest.raises(ValueError, match="unknown metric"):
        registry.counter("ferryman_nope_total")
    with pytest.raises(ValueError, match="is a gauge, not a counter"):
        registry.counter("ferryman_connections_active", "web")
    with pytest.raises(ValueError, match="takes labels"):
        registry.counter("ferryman_tls_handshakes_total", "web")
    open_now = {"web": 3}
    registry.collect("listeners", lambda: [("ferryman_connections_active", (name,), n) for name, n in open_now.items()])
    # two sources of one series (an old service draining beside its successor) add up
    registry.collect("draining", lambda: [("ferryman_connections_active", ("web",), 2)])
    registry.reloaded(True, when=1234.5)
    registry.reloaded(False, when=1300.0)
    snap = registry.snapshot()
    assert snap[("ferryman_ratelimit_rejections_total", ("rl",))] == 3
    assert snap[("ferryman_tls_handshakes_total", ("web", "ok"))] == 5
    assert snap[("ferryman_connections_active", ("web",))] == 5
    assert snap[("ferryman_reloads_total", ("ok",))] == 1
    assert snap[("ferryman_reloads_total", ("error",))] == 1
    assert snap[("ferryman_reload_last_success", ())] == 0
    assert snap[("ferryman_reload_last_timestamp_seconds", ())] == 1300.0
    open_now["web"] = 1
    registry.uncollect("draining")
    assert registry.snapshot()[("ferryman_connections_active", ("web",))] == 1


def test_a_failing_or_bad_collector_is_logged_once_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry()
    registry.counter("ferryman_ratelimit_rejections_total", "rl").inc()

    def broken() -> list:
        raise RuntimeError("boom")

    registry.collect("broken", broken)
    registry.collect("bad", lambda: [("ferryman_connections_active", ("a", "b"), 1), ("ferryman_backend_healthy", ("u", "b"), 1)])
    with caplog.at_level(logging.ERROR, logger="ferryman.observability.metrics"):
        for _ in range(3):
            snap = registry.snapshot()
    assert snap[("ferryman_ratelimit_rejections_total", ("rl",))] == 1
    assert snap[("ferryman_backend_healthy", ("u", "b"))] == 1  # the good sample of the bad collector
    assert ("ferryman_connections_active", ("a", "b")) not in snap
    messages = [r.getMessage() for r in caplog.records]
    assert sum("'broken' failed" in m for m in messages) == 1
    assert sum("'bad' yielded a bad sample" in m for m in messages) == 1


# merging -------------------------------------------------------------------------------------------
def test_merge_sums_counters_and_histograms_and_keeps_worker_gauges_apart() -> None:
    a = {
        ("ferryman_ratelimit_rejections_total", ("rl",)): 2,
        ("ferryman_http_request_duration_seconds", ("l", "r", "u")): [1, 0, 2, 0.5],
        ("ferryman_connections_active", ("web",)): 4,
        ("ferryman_backend_healthy", ("u", "10.0.0.1:80")): 1,
        ("ferryman_reloads_total", ("ok",)): 1,
        ("ferryman_unknown", ()): 9,
    }
    b = {
        ("ferryman_ratelimit_rejections_total", ("rl",)): 3,
        ("ferryman_http_request_duration_seconds", ("l", "r", "u")): [0, 1, 1, 0.25],
        ("ferryman_connections_active", ("web",)): 6,
        ("ferryman_backend_healthy", ("u", "10.0.0.1:80")): 0,
        ("ferryman_reloads_total", ("ok",)): 1,
    }
    merged = merge([a, None, b])
    assert merged[("ferryman_ratelimit_rejections_total", ("rl",))] == 5
    assert merged[("ferryman_http_request_duration_seconds", ("l", "r", "u"))] == [1, 1, 3, 0.75]
    assert merged[("ferryman_connections_active", ("web",))] == 10
    assert merged[("ferryman_backend_healthy", ("u", "10.0.0.1:80", "0"))] == 1
    assert merged[("ferryman_backend_healthy", ("u", "10.0.0.1:80", "2"))] == 0
    assert merged[("ferryman_reloads_total", ("ok", "0"))] == 1
    assert ("ferryman_unknown", ()) not in merged
    assert a[("ferryman_http_request_duration_seconds", ("l", "r", "u"))] == [1, 0, 2, 0.5]  # inputs untouched
    dead = merge([a, None, b], skip_gauges={2})
    assert dead[("ferryman_connections_active", ("web",))] == 4
    assert ("ferryman_backend_healthy", ("u", "10.0.0.1:80", "2")) not in dead
    assert dead[("ferryman_ratelimit_rejections_total", ("rl",))] == 5  # counters of dead workers still count


def test_merge_max() -> None:
    specs = {**SPECS, "ferryman_peak": MetricSpec("ferryman_peak", "gauge", (), "x", merge="max")}
    assert merge([{("ferryman_peak", ()): 3}, {("ferryman_peak", ()): 7}, {("ferryman_peak", ()): 5}], specs)[("ferryman_peak", ())] == 7


# the text format -----------------------------------------------------------------------------------
def test_render_escapes_labels_and_parses_back() -> None:
    registry = Registry()
    nasty = 'a\\b"c\nd'
    registry.counter("ferryman_ratelimit_rejections_total", nasty).inc(7)
    registry.counter("ferryman_tls_handshakes_total", "ünï", "ok").inc()
    text = render(merge([registry.snapshot()]))
    strict_check(text)
    assert 'filter="a\\\\b\\"c\\nd"' in text
    samples = parse(text)
    assert samples["ferryman_ratelimit_rejections_total"] == {(("filter", nasty),): 7.0}
    assert samples["ferryman_tls_handshakes_total"] == {(("listener", "ünï"), ("result", "ok")): 1.0}
    assert samples["ferryman_reloads_total"] == {(("result", "error"), ("worker", "0")): 0.0, (("result", "ok"), ("worker", "0")): 0.0}


def test_render_histograms_are_cumulative_with_sum_count_and_inf() -> None:
    registry = Registry()
    metrics = registry.request("web", "", "")
    for end in (0.0004, 0.0004, 0.003, 0.2, 150.0):
        metrics.observe(Finished(200, end=end), None)
    text = render(merge([registry.snapshot()]))
    strict_check(text)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    family = families["ferryman_http_request_duration_seconds"]
    assert family.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in family.samples if s.name.endswith("_bucket")]
    assert [le for le, _ in buckets] == [repr(b) for b in DURATION_BUCKETS] + ["+Inf"]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)  # cumulative
    assert dict(buckets)["0.001"] == 2 and dict(buckets)["0.005"] == 3 and dict(buckets)["0.25"] == 4 and dict(buckets)["60.0"] == 4
    assert dict(buckets)["+Inf"] == 5
    by_name = {s.name: s.value for s in family.samples if not s.name.endswith("_bucket")}
    assert by_name["ferryman_http_request_duration_seconds_count"] == 5
    assert math.isclose(by_name["ferryman_http_request_duration_seconds_sum"], 0.0008 + 0.003 + 0.2 + 150.0, rel_tol=1e-9)
    assert text.count("# TYPE ferryman_http_request_duration_seconds histogram") == 1


def test_render_skips_malformed_samples_and_special_values() -> None:
    snap = {
        ("ferryman_connections_active", ("a",)): float("inf"),
        ("ferryman_connections_active", ("a", "extra")): 1,  # wrong label count
        ("ferryman_http_request_duration_seconds", ("l", "r", "u")): [1, 2],  # wrong length
        ("ferryman_metrics_age_seconds", ("0",)): float("nan"),
    }
    text = render(snap)
    strict_check(text)
    assert 'ferryman_connections_active{listener="a"} +Inf' in text
    assert "extra" not in text and "request_duration" not in text
    assert 'ferryman_metrics_age_seconds{worker="0"} NaN' in text
    assert render({}) == ""


# through a real proxy ------------------------------------------------------------------------------
def on_loop(coro_fn):  # type: ignore[no-untyped-def]
    def run() -> None:
        async def bounded() -> None:
            async with asyncio.timeout(TEST_TIMEOUT):
                await coro_fn()

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(bounded())
        gc.collect()

    run.__name__ = coro_fn.__name__
    return run


class CountingApp(App):
    """The framework test app, with the metrics call the gateway's logging hook makes."""

    def __init__(self, peer: Peer, dead: Peer, metrics) -> None:  # type: ignore[no-untyped-def]
        super().__init__(peer)
        self.dead = dead
        self.metrics = metrics
        self.max_tries = 1

    async def upstream_peer(self, session):  # type: ignore[no-untyped-def]
        return self.dead if session.target_str == "/dead" else self.peer

    async def logging(self, session, error):  # type: ignore[no-untyped-def]
        self.metrics.observe(session, error)
        self.errors.append(error)


@on_loop
async def test_requests_through_the_proxy_are_counted() -> None:
    server, peer = await origin()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = Peer(parse_address(f"127.0.0.1:{closed.getsockname()[1]}"), connect_timeout=2.0)
    closed.close()  # nothing listens there: connection refused
    registry = Registry()
    app = CountingApp(peer, dead, registry.request("test", "all", "origin"))
    service = await start_proxy(app)
    client = await Client.open(service)
    try:
        sizes = []
        for path in ("/bytes/100", "/bytes/2000", "/bytes/0"):
            client.send(get(path))
            status, _, body = await client.response()
            assert status == 200
            sizes.append(len(body))
        client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world")
        status, _, body = await client.response()
        assert status == 200 and body.endswith(b"hello world")
        sizes.append(len(body))
        client.send(get("/dead"))
        status, _, body = await client.response()
        assert status == 502
        sizes.append(len(body))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while len(app.errors) < 5:  # logging runs after the response went out
            assert loop.time() < deadline, "the logging hook was not called for every request"
            await asyncio.sleep(0.01)
    finally:
        await client.close()
        await stop(service, server)
    text = render(merge([registry.snapshot()]))
    strict_check(text)
    samples = parse(text)
    base = (("listener", "test"), ("route", "all"), ("upstream", "origin"))
    requests = {dict(k)["status"]: v for k, v in samples["ferryman_http_requests_total"].items()}
    assert requests["2xx"] == 4 and requests["5xx"] == 1 and requests["error"] == 0
    assert samples["ferryman_http_request_errors_total"] == {tuple(sorted((*base, ("kind", "connect_refused")))): 1.0}
    assert samples["ferryman_http_request_body_bytes_total"][base] == 11
    assert samples["ferryman_http_response_body_bytes_total"][base] == sum(sizes)  # the 502 page included
    connections = {dict(k)["connection"]: v for k, v in samples["ferryman_http_upstream_connections_total"].items()}
    assert connections == {"new": 1, "reused": 3}  # one keep-alive upstream connection, then the pool
    assert samples["ferryman_http_request_duration_seconds_count"][base] == 5
    assert samples["ferryman_http_upstream_header_seconds_count"][base] == 4
    assert samples["ferryman_http_upstream_connect_seconds_count"][base] == 1
    assert samples["ferryman_http_upstream_response_seconds_count"][base] == 4


def test_the_grafana_dashboard_queries_only_metrics_that_exist() -> None:
    """examples/grafana-dashboard.json: every metric a panel queries is one ferryman exports
    (histogram series by their _bucket name), so a renamed metric breaks this test."""
    import json
    import re
    from pathlib import Path

    from ferryman.observability.metrics import METRICS

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "examples" / "grafana-dashboard.json").read_text())
    known = set()
    for spec in METRICS:
        name = spec.name if spec.name.startswith("ferryman_") else "ferryman_" + spec.name
        known.add(name)
        if spec.kind == "histogram":
            known.update({name + "_bucket", name + "_sum", name + "_count"})
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used.update(re.findall(r"ferryman_[a-z0-9_]+", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        used.update(re.findall(r"ferryman_[a-z0-9_]+", variable.get("query", "")))
    assert used and used <= known, sorted(used - known)

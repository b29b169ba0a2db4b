"""The admin API on a running gateway (in-process, real sockets): auth, reading the config,
validating, applying and rolling back a config file, listing upstreams, the web UI's files,
live stats and the reload history."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import os
import signal
import socket
from pathlib import Path

import pytest

from ferryman.admin.history import ReloadHistory
from ferryman.admin.stats import LiveStats, quantile
from ferryman.config.load import load_file
from ferryman.errors import ConfigError
from ferryman.demo.origin import start_origin
from ferryman.gateway.app import Gateway
from ferryman.observability.metrics import DURATION_BUCKETS
from support.process import LOCAL, free_port, http_get, running, wait_until

TOKEN = "s3cret-token"


def site(body: str, origin_port: int) -> str:
    return f"""
[admin]
addr = "127.0.0.1:0"
token = "{TOKEN}"

[listeners.web]
addr = "127.0.0.1:0"
protocol = "http"
routes = ["ping", "app"]

[routes.ping]
path = "=/ping"
filters = ["pong"]

[routes.app]
upstream = "app"

[filters.pong]
kind = "mock"
body = "{body}"

[upstreams.app]
backends = ["127.0.0.1:{origin_port}"]
"""


async def call(port: int, method: str, path: str, body: bytes = b"", token: str | None = TOKEN) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), payload


async def test_the_admin_api_reads_validates_applies_and_rolls_back(tmp_path: Path) -> None:
    origin = await start_origin("127.0.0.1", 0, "o")
    origin_port = origin.sockets[0].getsockname()[1]
    path = tmp_path / "ferryman.toml"
    path.write_text(site("one", origin_port))
    gw = Gateway(load_file(path), path)
    gw.bind()
    server = gw.make_server()
    for service in server.services:
        await service.start()
    web = server.services[0].sock.getsockname()[1]
    admin = gw.admin_sock.getsockname()[1]
    try:
        assert (await call(admin, "GET", "/api/v1/config", token=None))[0] == 401
        assert (await call(admin, "GET", "/api/v1/config", token="wrong"))[0] == 401
        status, body = await call(admin, "GET", "/api/v1/config")
        config = json.loads(body)
        assert status == 200 and config["generation"] == 1 and config["config"]["filters"]["pong"]["body"] == "one"

        bad = site("x", origin_port).replace('kind = "mock"', 'kind = "mock"\ncolour = "red"').encode()
        status, body = await call(admin, "POST", "/api/v1/config/validate", bad)
        assert status == 200 and json.loads(body) == {"valid": False, "errors": [{"path": "filters.pong.colour", "message": "unknown key"}]}
        status, body = await call(admin, "POST", "/api/v1/config/apply", bad)
        assert status == 422 and path.read_text() == site("one", origin_port)  # refused: nothing written

        assert (await call(web, "GET", "/ping"))[1] == b"one"
        status, body = await call(admin, "POST", "/api/v1/config/apply", site("two", origin_port).encode())
        assert status == 200 and json.loads(body) == {"applied": True, "generation": 2}
        assert (await call(web, "GET", "/ping"))[1] == b"two"
        assert 'body = "two"' in path.read_text()

        status, body = await call(admin, "POST", "/api/v1/config/rollback")
        assert status == 200 and json.loads(body)["generation"] == 3
        assert (await call(web, "GET", "/ping"))[1] == b"one"

        status, body = await call(admin, "GET", "/api/v1/upstreams")
        backends = json.loads(body)["upstreams"]["app"]["backends"]
        assert backends == [{"address": f"127.0.0.1:{origin_port}", "weight": 1, "healthy": True, "disabled": False, "active": 0, "requests": 0, "failures": 0}]

        assert (await call(admin, "GET", "/api/v1/nope"))[0] == 404
        assert (await call(admin, "DELETE", "/api/v1/config"))[0] == 405
    finally:
        for service in server.services:
            service.stop_accepting()
            await service.drain(1.0)
        gw.close()
        origin.close()
        await origin.wait_closed()


async def test_backends_are_disabled_and_enabled_through_the_admin_api(tmp_path: Path) -> None:
    a, b = await start_origin("127.0.0.1", 0, "a"), await start_origin("127.0.0.1", 0, "b")
    ports = [o.sockets[0].getsockname()[1] for o in (a, b)]
    path = tmp_path / "ferryman.toml"
    path.write_text(site("x", ports[0]).replace(f'backends = ["127.0.0.1:{ports[0]}"]', f'backends = ["127.0.0.1:{ports[0]}", "127.0.0.1:{ports[1]}"]'))
    gw = Gateway(load_file(path), path)
    gw.bind()
    server = gw.make_server()
    for service in server.services:
        await service.start()
    web = server.services[0].sock.getsockname()[1]
    admin = gw.admin_sock.getsockname()[1]

    async def origins(count: int) -> set[bytes]:
        seen = set()
        for _ in range(count):
            body = (await call(web, "GET", "/"))[1]
            seen.add(body.split(b"'")[1])  # "Hello from the ferryman demo origin 'a' (...)"
        return seen

    try:
        assert await origins(6) == {b"a", b"b"}
        status, body = await call(admin, "POST", f"/api/v1/upstreams/app/backends/127.0.0.1:{ports[1]}/disable")
        assert status == 200 and json.loads(body)["disabled"] is True
        assert await origins(6) == {b"a"}
        status, body = await call(admin, "GET", "/api/v1/upstreams")
        assert [x["disabled"] for x in json.loads(body)["upstreams"]["app"]["backends"]] == [False, True]
        assert (await call(admin, "POST", f"/api/v1/upstreams/app/backends/127.0.0.1:{ports[1]}/enable"))[0] == 200
        assert await origins(6) == {b"a", b"b"}
        assert (await call(admin, "POST", f"/api/v1/upstreams/app/backends/127.0.0.1:{ports[0]}/drain"))[0] == 200
        assert await origins(4) == {b"b"}
        status, body = await call(admin, "POST", "/api/v1/upstreams/app/backends/10.9.9.9:1/disable")
        assert status == 404 and b"has no backend" in body
        assert (await call(admin, "POST", "/api/v1/upstreams/nope/backends/x/disable"))[0] == 404
        assert (await call(admin, "POST", f"/api/v1/upstreams/app/backends/127.0.0.1:{ports[0]}/disable", token=None))[0] == 401
        backends = json.loads((await call(admin, "GET", "/api/v1/upstreams"))[1])["upstreams"]["app"]["backends"]
        assert sum(x["requests"] for x in backends) == 22 and all(x["requests"] >= 4 for x in backends)
        assert [(x["active"], x["failures"]) for x in backends] == [(0, 0), (0, 0)]
    finally:
        for service in server.services:
            service.stop_accepting()
            await service.drain(1.0)
        gw.close()
        for o in (a, b):
            o.close()
            await o.wait_closed()


# the web UI's files, live stats and the reload history -------------------------------------------
async def raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request (Connection: close); status, headers (lowercase names) and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


async def started(path: Path) -> tuple[Gateway, object, int, int]:
    gw = Gateway(load_file(path), path)
    gw.bind()
    server = gw.make_server()
    for service in server.services:
        await service.start()
    return gw, server, server.services[0].sock.getsockname()[1], gw.admin_sock.getsockname()[1]


async def stopped(gw: Gateway, server: object) -> None:
    for service in server.services:  # type: ignore[attr-defined]
        service.stop_accepting()
        await service.drain(1.0)
    gw.close()


async def test_the_ui_files_are_served_without_the_token_with_types_and_validators(tmp_path: Path) -> None:
    path = tmp_path / "ferryman.toml"
    path.write_text(site("one", 9))
    gw, server, _, admin = await started(path)
    try:
        status, headers, page = await raw(admin, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert status == 200 and headers["content-type"] == "text/html; charset=utf-8" and b'src="/ui/app.js"' in page
        assert headers["cache-control"] == "no-cache" and headers["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in headers["content-security-policy"] and "script-src 'self'" in headers["content-security-policy"]
        for name, kind in (("app.js", "text/javascript; charset=utf-8"), ("style.css", "text/css; charset=utf-8"), ("favicon.svg", "image/svg+xml")):
            status, headers, body = await raw(admin, f"GET /ui/{name} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
            assert (status, headers["content-type"]) == (200, kind) and body and int(headers["content-length"]) == len(body)
            etag = headers["etag"]
            status, headers, body = await raw(admin, f"GET /ui/{name} HTTP/1.1\r\nHost: a\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n".encode())
            assert (status, body, headers["etag"]) == (304, b"", etag)
        status, headers, body = await raw(admin, b'GET /ui/app.js HTTP/1.1\r\nHost: a\r\nIf-None-Match: "other"\r\nConnection: close\r\n\r\n')
        assert status == 200 and body
        status, headers, body = await raw(admin, b"HEAD /ui/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        assert (await call(admin, "GET", "/ui/nope.js", token=None))[0] == 401  # not a UI file: the API's rules
        assert (await call(admin, "GET", "/ui/nope.js"))[0] == 404
        for endpoint in ("/api/v1/stats", "/api/v1/history", "/api/v1/status", "/api/v1/config/source"):
            assert (await call(admin, "GET", endpoint, token=None))[0] == 401, endpoint
    finally:
        await stopped(gw, server)


async def test_live_stats_count_requests_errors_and_latency_per_route_and_upstream(tmp_path: Path) -> None:
    origin = await start_origin("127.0.0.1", 0, "o")
    origin_port = origin.sockets[0].getsockname()[1]
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, not listening: connecting is refused
    path = tmp_path / "ferryman.toml"
    path.write_text(site("one", origin_port).replace('routes = ["ping", "app"]', 'routes = ["ping", "broken", "app"]') + f"""
[routes.broken]
path = "/broken"
upstream = "gone"

[upstreams.gone]
backends = ["127.0.0.1:{refused.getsockname()[1]}"]
""")
    gw, server, web, admin = await started(path)
    try:
        for _ in range(5):
            assert (await call(web, "GET", "/"))[0] == 200
        for _ in range(3):
            assert (await call(web, "GET", "/broken"))[0] == 502
        assert (await call(web, "GET", "/ping"))[0] == 200
        status, body = await call(admin, "GET", "/api/v1/stats")
        stats = json.loads(body)
        assert status == 200 and stats["interval"] > 0  # against the sample taken at start
        app, broken = stats["routes"]["app"], stats["routes"]["broken"]
        assert (app["requests"], app["errors"], broken["requests"], broken["errors"]) == (5, 0, 3, 3)
        assert app["requests_per_s"] > 0 and app["error_ratio"] == 0 and app["latency_ms"]["p50"] > 0
        assert broken["error_ratio"] == 1 and broken["errors_per_s"] == broken["requests_per_s"] > 0
        assert set(broken["status_per_s"]) == {"5xx"}
        assert stats["upstreams"]["app"]["requests"] == 5 and stats["upstreams"]["gone"]["errors"] == 3
        assert stats["routes"]["ping"]["requests"] == 1 and "ping" not in stats["upstreams"]  # a mock has no upstream
        assert stats["total"]["requests"] == 9 and stats["total"]["errors"] == 3
        assert stats["total"]["connections_active"] >= 0 and set(stats["listeners"]) == {"web"}
        assert stats["upstreams"]["app"]["backends_active"] == {f"127.0.0.1:{origin_port}": 0}
    finally:
        await stopped(gw, server)
        refused.close()
        origin.close()
        await origin.wait_closed()


async def test_the_history_records_start_applies_refusals_rollbacks_and_reloads(tmp_path: Path) -> None:
    origin = await start_origin("127.0.0.1", 0, "o")
    origin_port = origin.sockets[0].getsockname()[1]
    path = tmp_path / "ferryman.toml"
    path.write_text(site("one", origin_port))
    gw, server, web, admin = await started(path)

    async def history(query: str = "") -> list[dict]:
        status, body = await call(admin, "GET", "/api/v1/history" + query)
        assert status == 200, body
        return json.loads(body)["entries"]

    try:
        status, body = await call(admin, "GET", "/api/v1/config/source")
        assert status == 200 and json.loads(body) == {"path": str(path), "generation": 1, "text": site("one", origin_port)}
        [start] = await history()
        assert (start["action"], start["ok"], start["generation"], start["who"]) == ("start", True, 1, "")

        bad = site("x", origin_port).replace('kind = "mock"', 'kind = "mock"\ncolour = "red"').encode()
        assert (await call(admin, "POST", "/api/v1/config/apply", bad))[0] == 422
        assert (await call(admin, "POST", "/api/v1/config/apply", site("two", origin_port).encode()))[0] == 200
        assert (await call(admin, "POST", "/api/v1/config/rollback"))[0] == 200
        path.write_text(site("three", origin_port).replace('body = "three"', 'body = "three"\nshade = 1'))
        runtime = server.on_reload[0].__self__  # what SIGHUP calls
        assert await runtime.reload() is False
        path.write_text(site("four", origin_port))
        assert await runtime.reload() is True
        assert (await call(web, "GET", "/ping"))[1] == b"four"

        entries = await history()
        assert [(e["action"], e["ok"], e["generation"]) for e in entries] == [
            ("signal", True, 4), ("signal", False, 3), ("rollback", True, 3), ("apply", True, 2), ("apply", False, 1), ("start", True, 1),
        ]
        assert "filters.pong.colour: unknown key" in entries[4]["message"] and entries[4]["who"] == "127.0.0.1 (token)"
        assert "filters.pong.shade: unknown key" in entries[1]["message"] and entries[1]["who"] == ""
        assert entries[3]["who"] == entries[2]["who"] == "127.0.0.1 (token)"
        assert entries[0]["message"].startswith(f"{path}: generation 4 applied")
        assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
        assert [e["action"] for e in await history(f"?since={entries[2]['id']}")] == ["signal", "signal"]
        assert (await call(admin, "GET", "/api/v1/history?since=x"))[0] == 400

        status, body = await call(admin, "GET", "/api/v1/status")
        assert status == 200 and json.loads(body)["generation"] == 4 and json.loads(body)["workers"] == gw.config.server.workers
    finally:
        await stopped(gw, server)
        origin.close()
        await origin.wait_closed()


def test_live_stats_rates_come_from_samples_of_the_counters() -> None:
    now = [100.0]
    snapshot: dict = {}
    stats = LiveStats(lambda: snapshot, window=5.0, min_spacing=0.5, clock=lambda: now[0], wall=lambda: 0.0)

    def count(route: str, status: str, n: int, seconds: float) -> None:
        key = ("ferryman_http_requests_total", ("web", route, "app", status))
        snapshot[key] = snapshot.get(key, 0) + n
        hist = snapshot.setdefault(("ferryman_http_request_duration_seconds", ("web", route, "app")), [0] * (len(DURATION_BUCKETS) + 1) + [0.0])
        hist[DURATION_BUCKETS.index(seconds)] += n
        hist[-1] += n * seconds

    count("r", "2xx", 10, 0.01)
    now[0] = 102.0
    first = stats.report()  # since start: 10 requests in 2 s
    assert first["interval"] == 2.0 and first["routes"]["r"]["requests_per_s"] == 5.0
    count("r", "2xx", 90, 0.01)
    count("r", "5xx", 100, 0.1)
    now[0] = 104.0
    second = stats.report()  # the start sample is still in the window
    route = second["routes"]["r"]
    assert second["interval"] == 4.0 and route["requests_per_s"] == 50.0 and route["errors_per_s"] == 25.0 and route["error_ratio"] == 0.5
    assert route["status_per_s"] == {"2xx": 25.0, "5xx": 25.0}
    assert route["latency_ms"]["p50"] == 10.0 and route["latency_ms"]["p99"] > 50.0 and route["latency_ms"]["mean"] == (1000 * (100 * 0.01 + 100 * 0.1) / 200)
    now[0] = 110.0
    third = stats.report()  # nothing new: the rates fall to zero, the totals stay
    assert third["interval"] == 6.0 and third["routes"]["r"]["requests_per_s"] == 0.0 and third["routes"]["r"]["latency_ms"] is None
    assert third["routes"]["r"]["requests"] == 200 and third["total"]["errors"] == 100
    snapshot.clear()  # counters that restarted (a new process) count from zero, never negative
    count("r", "2xx", 3, 0.01)
    now[0] = 112.0
    fourth = stats.report()  # against the newest sample at or before the window's start (104)
    assert (fourth["interval"], fourth["routes"]["r"]["requests_per_s"]) == (8.0, 3 / 8)


def test_histogram_quantiles_interpolate_inside_a_bucket() -> None:
    bounds = (1.0, 2.0, 4.0)
    assert quantile(0.5, [0, 0, 0, 0], bounds) is None
    assert quantile(0.5, [0, 10, 0, 0], bounds) == 1.5
    assert quantile(0.25, [10, 10, 0, 0], bounds) == 0.5
    assert quantile(0.99, [0, 0, 0, 5], bounds) == 4.0  # in +Inf: the highest finite bound


def test_the_history_keeps_the_last_entries_and_names_who_asked() -> None:
    history = ReloadHistory(size=3, clock=lambda: 7.0)
    history.add("start", True, 1)
    history.expect("apply", "10.0.0.1 (token)")
    history.reloaded(True, 2, "ok")
    history.reloaded(False, 2, "bad")  # nobody announced it: a signal
    history.reloaded(True, 3)
    assert [(e["id"], e["action"], e["who"]) for e in history.to_json()] == [(4, "signal", ""), (3, "signal", ""), (2, "apply", "10.0.0.1 (token)")]
    assert history.to_json(since=3) == [{"id": 4, "time": 7.0, "action": "signal", "generation": 3, "ok": True, "message": "", "who": ""}]


def test_with_workers_stats_add_up_every_worker_and_the_history_sees_every_reload(tmp_path: Path) -> None:
    """A real master with two workers: worker 0 answers the admin API for all of them."""
    web, admin = free_port(), free_port()
    path = tmp_path / "ferryman.toml"

    def text(body: str) -> str:
        return f"""[server]
workers = 2
grace_period = "1s"

[admin]
addr = "{LOCAL}:{admin}"
token = "{TOKEN}"

[listeners.web]
addr = "{LOCAL}:{web}"
protocol = "http"
routes = ["all"]

[routes.all]
filters = ["answer"]

[filters.answer]
kind = "mock"
body = "{body}"
"""

    def api(method: str, target: str, body: bytes | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(LOCAL, admin, timeout=10)
        try:
            conn.request(method, target, body=body, headers={"Authorization": f"Bearer {TOKEN}"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    path.write_text(text("one"))
    with running(path) as proc:
        proc.wait_ready()
        for _ in range(40):  # new connections: the kernel spreads them over both workers
            assert http_get(web, "/") == (200, b"one")
        wait_until(lambda: api("GET", "/api/v1/stats")[1]["routes"].get("all", {}).get("requests") == 40, 10, "both workers' counts")

        path.write_text(text("two").replace('kind = "mock"', 'kind = "mock"\ncolour = "red"'))
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: len(api("GET", "/api/v1/history")[1]["entries"]) == 2, 10, "the refused reload in the history")
        refused = api("GET", "/api/v1/history")[1]["entries"][0]
        assert (refused["action"], refused["ok"]) == ("signal", False) and "filters.answer.colour: unknown key" in refused["message"]

        status, body = api("POST", "/api/v1/config/apply", text("three").encode())
        assert status == 200 and body["applied"] is True  # the master was told: the reload follows
        wait_until(lambda: len(api("GET", "/api/v1/history")[1]["entries"]) == 3, 10, "the apply in the history")
        applied = api("GET", "/api/v1/history")[1]["entries"][0]
        assert (applied["action"], applied["ok"], applied["generation"], applied["who"]) == ("apply", True, 2, "127.0.0.1 (token)")
        wait_until(lambda: all(http_get(web, "/")[1] == b"three" for _ in range(6)), 10, "both workers to serve the applied config")
        assert proc.stop(10) == 0


# HTTP Basic credentials of [admin] users, beside the token ----------------------------------------
ADMIN_USER = "ops:$pbkdf2-sha256$1000$MDEyMzQ1Njc4OWFiY2RlZg$..sSXOQvlvzODycSc6GAGIcbeKpiQNbp5fLZMu.m23U"  # password ops-secret


def basic(credentials: str) -> bytes:
    return b"Authorization: Basic " + base64.b64encode(credentials.encode()) + b"\r\n"


async def test_admin_users_sign_in_with_http_basic_and_are_named_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ferryman.toml"
    path.write_text(site("pong", free_port()).replace(f'token = "{TOKEN}"', f'token = "{TOKEN}"\nusers = ["{ADMIN_USER}"]'))
    gw, server, _web, admin = await started(path)
    try:
        request = b"GET /api/v1/upstreams HTTP/1.1\r\nHost: a\r\n%sConnection: close\r\n\r\n"
        status, _, body = await raw(admin, request % basic("ops:ops-secret"))
        assert status == 200 and b'"app"' in body
        for wrong in ("ops:nope", "nobody:ops-secret", "ops"):
            assert (await raw(admin, request % basic(wrong)))[0] == 401, wrong
        assert (await call(admin, "GET", "/api/v1/upstreams"))[0] == 200  # the token still works
        # a refusal names both ways in; a browser page (x-ferryman-ui) gets no Basic challenge,
        # which would open the browser's own password dialog
        for extra, challenges in ((b"", [b'Bearer realm="ferryman admin"', b'Basic realm="ferryman admin", charset="UTF-8"']),
                                  (b"X-Ferryman-UI: 1\r\n", [b'Bearer realm="ferryman admin"'])):
            reader, writer = await asyncio.open_connection(LOCAL, admin)
            writer.write(request % extra)
            data = await reader.read()
            writer.close()
            await writer.wait_closed()
            head = data.partition(b"\r\n\r\n")[0].split(b"\r\n")
            assert head[0].startswith(b"HTTP/1.1 401")
            assert [line.split(b":", 1)[1].strip() for line in head if line.lower().startswith(b"www-authenticate:")] == challenges
        with caplog.at_level(logging.WARNING, logger="ferryman.admin.api"):
            origin = (await raw(admin, request % basic("ops:ops-secret")))[2]
            address = json.loads(origin)["upstreams"]["app"]["backends"][0]["address"]
            action = f"POST /api/v1/upstreams/app/backends/{address}/disable HTTP/1.1\r\nHost: a\r\n".encode()
            rest = b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            # a browser would send remembered Basic credentials with a post from any page: a
            # change needs the UI's own header too (pages of other sites cannot add it)
            status, _, body = await raw(admin, action + basic("ops:ops-secret") + rest)
            assert status == 403 and b"X-Ferryman-UI" in body
            assert (await raw(admin, action + basic("ops:ops-secret") + b"X-Ferryman-UI: 1\r\n" + rest))[0] == 200
        assert f"admin: 127.0.0.1 (user ops): disable backend {address} of upstream app" in caplog.text
    finally:
        await stopped(gw, server)


def test_admin_users_are_checked_with_their_toml_path(tmp_path: Path) -> None:
    from ferryman.config.load import load_text

    with pytest.raises(ConfigError) as info:
        load_text('[admin]\nusers = ["ops:plaintext-password"]\n')
    assert "admin.users[0]" in str(info.value) and "not a supported password hash" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_text(f'[admin]\nusers = ["{ADMIN_USER}", "{ADMIN_USER}"]\n')
    assert "listed twice" in str(info.value)
    # beyond localhost, users are credentials enough; with neither, the token is asked for
    load_text(f'[admin]\naddr = "0.0.0.0:9180"\nusers = ["{ADMIN_USER}"]\n')
    with pytest.raises(ConfigError) as info:
        load_text('[admin]\naddr = "0.0.0.0:9180"\n')
    assert "admin.token: required (or admin.users)" in str(info.value)


async def test_backend_counters_count_requests_failures_and_requests_in_flight(tmp_path: Path) -> None:
    origin = await start_origin("127.0.0.1", 0, "a")
    good, refused = origin.sockets[0].getsockname()[1], free_port()  # nothing listens on `refused`
    path = tmp_path / "ferryman.toml"
    path.write_text(site("x", good).replace(f'backends = ["127.0.0.1:{good}"]', f'backends = ["127.0.0.1:{refused}", "127.0.0.1:{good}"]'))
    gw, server, web, admin = await started(path)
    try:
        for _ in range(6):  # a refused connect fails over to the good backend
            assert (await call(web, "GET", "/"))[0] == 200
        backends = {x["address"]: x for x in json.loads((await call(admin, "GET", "/api/v1/upstreams"))[1])["upstreams"]["app"]["backends"]}
        bad, ok = backends[f"127.0.0.1:{refused}"], backends[f"127.0.0.1:{good}"]
        assert bad["requests"] == bad["failures"] >= 3 and ok["failures"] == 0
        assert ok["requests"] == 6 and bad["active"] == ok["active"] == 0
        # in flight: a request held open by its own body counts while it lasts
        reader, writer = await asyncio.open_connection(LOCAL, web)
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhalf")
        await writer.drain()
        async def in_flight() -> int:
            backends = json.loads((await call(admin, "GET", "/api/v1/upstreams"))[1])["upstreams"]["app"]["backends"]
            return sum(x["active"] for x in backends)
        for _ in range(200):
            if await in_flight() == 1:
                break
            await asyncio.sleep(0.01)
        assert await in_flight() == 1
        writer.write(b"-the-rest")
        await writer.drain()
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()
        metrics = (await call(admin, "GET", "/metrics"))[1].decode()
        now = {x["address"]: x for x in json.loads((await call(admin, "GET", "/api/v1/upstreams"))[1])["upstreams"]["app"]["backends"]}
        for address, backend in now.items():  # the same counts in the Prometheus series
            assert f'ferryman_backend_requests_total{{upstream="app",backend="{address}"}} {backend["requests"]}' in metrics
            assert f'ferryman_backend_failures_total{{upstream="app",backend="{address}"}} {backend["failures"]}' in metrics
        assert now[f"127.0.0.1:{good}"]["requests"] == 7
    finally:
        await stopped(gw, server)
        origin.close()
        await origin.wait_closed()


async def test_password_checks_run_in_threads_and_a_flood_is_refused_unchecked() -> None:
    from ferryman.admin.api import MAX_HASHING, AdminApi

    async def reload() -> bool:
        return True

    api = AdminApi(None, None, users=[ADMIN_USER], reload=reload)
    good = b"Basic " + base64.b64encode(b"ops:ops-secret")
    checked: list[bytes] = []
    verify = api.users.verify
    api.users.verify = lambda given: checked.append(given) or verify(given)  # type: ignore[method-assign]
    assert await api._basic_user(good) == "ops" and checked == [good]
    assert await api._basic_user(good) == "ops" and checked == [good]  # cached: no second hash
    api._hashing = MAX_HASHING  # every slot busy: new credentials are refused without a hash
    wrong = b"Basic " + base64.b64encode(b"ops:guess")
    assert await api._basic_user(wrong) is None and checked == [good]
    assert await api._basic_user(good) == "ops"  # known ones still pass
    api._hashing = 0
    assert await api._basic_user(wrong) is None and checked == [good, wrong]

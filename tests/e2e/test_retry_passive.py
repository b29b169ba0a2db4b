"""Retry policy (``retry_on``), passive health and least-connection counting on HTTP, end to
end: a gateway from TOML in-process, scripted origins on loopback whose behaviour each test
sets (answer, answer 503, close before answering, never answer)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from ferryman.config.load import load_text
from ferryman.gateway.app import Gateway
from support.http_proxy import Client


class ScriptedOrigin(asyncio.Protocol):
    """Reads a request head, then acts as ``mode`` says: ok | 503 | close | hang."""

    def __init__(self, server: "Origin") -> None:
        self.server = server
        self.buf = b""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.conns.add(transport)

    def connection_lost(self, exc) -> None:
        self.server.conns.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            self.buf = self.buf[length:]
            self.server.requests.append(head.split(b"\r\n")[0])
            mode = self.server.mode
            if mode == "close":
                self.transport.close()
                return
            if mode == "hang":
                return
            status = b"503 Service Unavailable" if mode == "503" else b"200 OK"
            body = self.server.name.encode()
            self.transport.write(b"HTTP/1.1 %s\r\ncontent-length: %d\r\nx-origin: %s\r\n\r\n%s" % (status, len(body), body, body))


class Origin:
    def __init__(self, name: str, mode: str = "ok") -> None:
        self.name, self.mode = name, mode
        self.requests: list[bytes] = []
        self.conns: set = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> "Origin":
        self.server = await asyncio.get_running_loop().create_server(lambda: ScriptedOrigin(self), "127.0.0.1", 0)
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        self.server.close()
        for t in list(self.conns):
            t.abort()
        await self.server.wait_closed()


@asynccontextmanager
async def gateway(upstream_extra: str, *origins: Origin):
    backends = ", ".join(f'"{o.addr}"' for o in origins)
    config = load_text(f"""
[listeners.web]
addr = "127.0.0.1:0"
protocol = "http"
upstream = "pool"

[upstreams.pool]
backends = [{backends}]
{upstream_extra}
""")
    gw = Gateway(config)
    gw.bind()
    server = gw.make_server()
    web = server.services[0]
    background = [s for s in server.services[1:]] + list(getattr(server, "background", []))
    await web.start()
    for thing in background:
        start = getattr(thing, "start", None)
        if start is not None:
            result = start()
            if asyncio.iscoroutine(result):
                await result
    try:
        yield web
    finally:
        web.stop_accepting()
        await web.drain(1.0)
        for thing in background:
            stop = getattr(thing, "stop", None)
            if stop is not None:
                result = stop()
                if asyncio.iscoroutine(result):
                    await result
        gw.close()
        for o in origins:
            await o.close()


async def fetch(web, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    client = await Client.open(web)
    try:
        head = f"{method} / HTTP/1.1\r\nHost: example.test\r\n".encode()
        if body is not None:
            head += b"content-length: %d\r\n" % len(body)
        client.send(head + b"\r\n" + (body or b""))
        status, headers, _ = await client.response()
        return status, headers.get(b"x-origin", b"")
    finally:
        await client.close()


async def test_a_503_goes_to_the_next_backend_when_the_policy_names_it() -> None:
    bad, good = await (Origin("bad", "503")).start(), await (Origin("good")).start()
    async with gateway('retry_on = ["error", "timeout", "http_503"]', bad, good) as web:
        results = [await fetch(web) for _ in range(6)]
    assert results == [(200, b"good")] * 6
    assert len(bad.requests) >= 3  # round robin did pick it; each time the answer was dropped


async def test_without_http_503_in_the_policy_the_503_passes_through() -> None:
    bad, good = await (Origin("bad", "503")).start(), await (Origin("good")).start()
    async with gateway("", bad, good) as web:
        statuses = [(await fetch(web))[0] for _ in range(6)]
    assert statuses.count(503) == 3 and statuses.count(200) == 3


async def test_a_request_with_a_body_is_not_resent_on_a_status() -> None:
    bad, good = await (Origin("bad", "503")).start(), await (Origin("good")).start()
    async with gateway('retry_on = ["http_503"]', bad, good) as web:
        statuses = [(await fetch(web, "PUT", b"payload"))[0] for _ in range(4)]
    assert statuses.count(503) == 2  # the body went to the 503 backend: that answer stands


async def test_the_last_backend_answer_is_sent_when_every_try_got_a_retry_status() -> None:
    a, b = await (Origin("a", "503")).start(), await (Origin("b", "503")).start()
    async with gateway('retry_on = ["http_503"]', a, b) as web:
        status, _ = await fetch(web)
    assert status == 503
    assert len(a.requests) + len(b.requests) == 2  # each backend once (max_tries 3, 2 backends)


async def test_a_closed_connection_retries_idempotent_requests_only() -> None:
    bad, good = await (Origin("bad", "close")).start(), await (Origin("good")).start()
    async with gateway("", bad, good) as web:
        gets = [await fetch(web) for _ in range(4)]
        posts = [(await fetch(web, "POST"))[0] for _ in range(4)]
    assert gets == [(200, b"good")] * 4
    assert posts.count(502) == 2 and posts.count(200) == 2


async def test_retry_non_idempotent_resends_posts_too() -> None:
    bad, good = await (Origin("bad", "close")).start(), await (Origin("good")).start()
    async with gateway("retry_non_idempotent = true", bad, good) as web:
        posts = [await fetch(web, "POST") for _ in range(4)]
    assert posts == [(200, b"good")] * 4


async def test_a_read_timeout_goes_to_the_next_backend_unless_the_policy_leaves_timeout_out() -> None:
    slow, good = await (Origin("slow", "hang")).start(), await (Origin("good")).start()
    async with gateway('read_timeout = "0.3s"', slow, good) as web:
        retried = [await fetch(web) for _ in range(2)]
    slow2, good2 = await (Origin("slow", "hang")).start(), await (Origin("good")).start()
    async with gateway('read_timeout = "0.3s"\nretry_on = ["error"]', slow2, good2) as web:
        statuses = sorted([(await fetch(web))[0] for _ in range(2)])
    assert retried == [(200, b"good")] * 2
    assert statuses == [200, 504]


async def test_retry_timeout_stops_new_tries() -> None:
    slow, good = await (Origin("slow", "hang")).start(), await (Origin("good")).start()
    async with gateway('read_timeout = "0.3s"\nretry_timeout = "0.1s"', slow, good) as web:
        statuses = sorted([(await fetch(web))[0] for _ in range(2)])
    assert statuses == [200, 504]


async def test_least_conn_counts_http_requests_in_flight() -> None:
    slow, fast = await (Origin("slow", "hang")).start(), await (Origin("fast")).start()
    async with gateway('lb = "least_conn"\nread_timeout = "2s"\nretry_on = []', slow, fast) as web:
        loop = asyncio.get_running_loop()
        stuck = None
        for _ in range(4):  # until one request sits on the slow backend
            stuck = asyncio.ensure_future(fetch(web))
            deadline = loop.time() + 2
            while not slow.requests and not stuck.done() and loop.time() < deadline:
                await asyncio.sleep(0.01)
            if slow.requests:
                break
            await stuck
        assert slow.requests, "no request reached the slow backend"
        backends = web.app.router.single.upstream.balancer.backends
        assert sorted(b.active for b in backends) == [0, 1]
        others = [await fetch(web) for _ in range(4)]
        assert others == [(200, b"fast")] * 4  # the busy backend was avoided every time
        status, _ = await stuck
        assert status == 504
        assert [b.active for b in backends] == [0, 0]  # every count went back down


async def test_passive_health_ejects_a_backend_answering_5xx_and_a_probe_lets_it_back() -> None:
    bad, good = await (Origin("bad", "503")).start(), await (Origin("good")).start()
    extra = 'retry_on = []\npassive_health = { max_fails = 2, fail_window = "10s", cool_down = "0.3s" }'
    async with gateway(extra, bad, good) as web:
        statuses = [(await fetch(web))[0] for _ in range(4)]
        assert statuses.count(503) == 2  # round robin gave "bad" two requests: then it was out
        assert len(bad.requests) == 2
        assert [await fetch(web) for _ in range(4)] == [(200, b"good")] * 4
        assert len(bad.requests) == 2  # nothing went to the ejected backend
        bad.mode = "ok"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(bad.requests) == 2 and loop.time() < deadline:  # the probe (a connect) readmits it
            await fetch(web)
            await asyncio.sleep(0.05)
        assert len(bad.requests) > 2
        assert (await fetch(web))[0] == 200


async def test_with_an_active_http_check_the_checker_readmits_a_passively_ejected_backend() -> None:
    bad, good = await (Origin("bad", "503")).start(), await (Origin("good")).start()
    extra = (
        'retry_on = []\npassive_health = { max_fails = 1, cool_down = "0.2s" }\n'
        'health_check = { kind = "http", path = "/health", interval = "0.1s", timeout = "1s", rise = 2, fall = 100 }'
    )
    async with gateway(extra, bad, good) as web:
        statuses = [(await fetch(web))[0] for _ in range(6)]
        assert statuses.count(503) == 1  # one 503 ejected it; the checker's 503s keep it out
        bad.mode = "ok"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not any(b"GET / " in r for r in bad.requests[1:]) and loop.time() < deadline:
            await fetch(web)
            await asyncio.sleep(0.05)
        assert any(r.startswith(b"GET /health ") for r in bad.requests)
        assert any(r.startswith(b"GET / ") for r in bad.requests[1:])  # traffic is back

"""Hot reload end to end: a client keeps sending keep-alive requests while the config file
is rewritten and reloaded 50 times (plus bad configs, and listeners added and removed)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from ferryman.config.load import load_file
from ferryman.demo.origin import start_origin
from ferryman.gateway.app import Gateway
from support.http_proxy import Client


def config_text(generation: int, a: int, b: int, extra_port: int | None = None) -> str:
    text = f"""
[listeners.web]
addr = "127.0.0.1:0"
protocol = "http"
routes = ["main"]

[routes.main]
upstream = "{'a' if generation % 2 else 'b'}"
response_headers = {{ set = {{ "x-generation" = "{generation}" }} }}

[upstreams.a]
backends = ["127.0.0.1:{a}"]

[upstreams.b]
backends = ["127.0.0.1:{b}"]
"""
    if extra_port is not None:
        text += f"""
[listeners.extra]
addr = "127.0.0.1:{extra_port}"
protocol = "http"
upstream = "a"
"""
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_fifty_reloads_under_keepalive_traffic_lose_no_request(tmp_path: Path) -> None:
    origins = [await start_origin("127.0.0.1", 0, name) for name in ("a", "b")]
    a, b = (o.sockets[0].getsockname()[1] for o in origins)
    path = tmp_path / "ferryman.toml"
    path.write_text(config_text(0, a, b))
    gateway = Gateway(load_file(path), path)
    gateway.bind()
    server = gateway.make_server()
    runtime = server.on_reload[0].__self__
    web = server.services[0]
    await web.start()
    failures: list[str] = []
    done = 0
    stop = asyncio.Event()

    async def traffic() -> None:
        nonlocal done
        client = await Client.open(web)
        try:
            while not stop.is_set():
                client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                status, headers, _ = await client.response()
                if status != 200 or b"x-generation" not in headers:
                    failures.append(f"{status} {headers}")
                done += 1
        finally:
            await client.close()

    clients = [asyncio.create_task(traffic()) for _ in range(4)]
    try:
        extra_port = free_port()
        for generation in range(1, 51):
            port = extra_port if generation in range(20, 30) else None
            if generation % 10 == 5:  # a bad config is refused; the old one keeps serving
                path.write_text(config_text(generation, a, b) + "\n[routes.main]\nbogus = 1\n")
                assert await runtime.reload() is False
            path.write_text(config_text(generation, a, b, port))
            assert await runtime.reload() is True
            await asyncio.sleep(0.01)  # let requests run on this generation
            probe = await Client.open(web)
            probe.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = await probe.response()
            await probe.close()
            assert status == 200 and headers[b"x-generation"] == str(generation).encode()
            assert headers[b"x-origin"] == (b"a" if generation % 2 else b"b")
            if generation == 25:  # the listener added at generation 20 serves
                r, w = await asyncio.open_connection("127.0.0.1", extra_port)
                w.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert (await r.read()).startswith(b"HTTP/1.1 200")
                w.close()
                await w.wait_closed()
        # removed at generation 30: its port refuses connections once it drained
        for _ in range(200):
            try:
                r, w = await asyncio.open_connection("127.0.0.1", extra_port)
            except OSError:
                break
            w.close()
            await w.wait_closed()
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the removed listener still accepts")
        assert runtime.generation == 51
    finally:
        stop.set()
        await asyncio.gather(*clients)
        for service in list(server.services):
            service.stop_accepting()
            await service.drain(1.0)
        gateway.close()
        for o in origins:
            o.close()
            await o.wait_closed()
    assert failures == []
    assert done > 50


async def test_a_rebuilt_listener_closes_its_old_access_log(tmp_path: Path) -> None:
    """A reload that changes a listener builds it again: the old one's access log (its writer
    thread and file) is closed once the old listener drained, and the new one writes on."""
    origin = await start_origin("127.0.0.1", 0, "a")
    a = origin.sockets[0].getsockname()[1]
    log_path = tmp_path / "access.log"
    path = tmp_path / "ferryman.toml"

    def text(timeout: str) -> str:
        return config_text(1, a, a).replace('protocol = "http"\n', f'protocol = "http"\naccess_log = "{log_path}"\nheader_timeout = "{timeout}"\n', 1)

    path.write_text(text("10s"))
    gateway = Gateway(load_file(path), path)
    gateway.bind()
    server = gateway.make_server()
    runtime = server.on_reload[0].__self__
    await server.services[0].start()
    try:
        old = runtime.listeners["web"].access_log
        path.write_text(text("11s"))  # a listener key changed: the listener is built again
        assert await runtime.reload() is True
        new = runtime.listeners["web"].access_log
        assert new is not old
        for _ in range(200):
            if old.closed:
                break
            await asyncio.sleep(0.01)
        assert old.closed and not new.closed
        assert sum(getattr(b, "log", None) is old for b in server.background) == 0
        client = await Client.open(runtime.listeners["web"].service)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await client.response())[0] == 200
        await client.close()
    finally:
        for service in list(server.services):
            service.stop_accepting()
            await service.drain(1.0)
        for background in server.background:
            if hasattr(background, "log"):
                await background.stop()
        gateway.close()
        origin.close()

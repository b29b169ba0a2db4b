"""The admin API on a running gateway (in-process, real sockets): auth, reading the config,
validating, applying and rolling back a config file, and listing upstreams."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from ferryman.config.load import load_file
from ferryman.demo.origin import start_origin
from ferryman.gateway.app import Gateway

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
        assert backends == [{"address": f"127.0.0.1:{origin_port}", "weight": 1, "healthy": True, "disabled": False, "active": 0}]

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
    finally:
        for service in server.services:
            service.stop_accepting()
            await service.drain(1.0)
        gw.close()
        for o in (a, b):
            o.close()
            await o.wait_closed()

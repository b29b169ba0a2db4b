"""HTTP/2 from the TOML config: listener ``http2`` and upstream ``protocol``, end to end
through the config-driven gateway, the access log saying HTTP/2.0, and config errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support.h2_origin import H2Client, H2Origin

from ferryman.config.load import load_file, load_text
from ferryman.errors import ConfigError
from ferryman.gateway.app import Gateway


async def serve(gw: Gateway):
    server = gw.make_server()
    for service in server.background:
        service.start()
    for service in server.services:
        started = service.start()
        if started is not None:
            await started
    return server


async def stop(gw: Gateway, server) -> None:
    for service in server.services:
        service.stop_accepting()
        await service.drain(1.0)
    for service in server.background:  # the access log's writer thread among them
        await service.stop()
    gw.close()


async def _wait_for_lines(path: Path, count: int) -> list[str]:
    for _ in range(200):  # the access log is written by a background service: poll, bounded
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} has fewer than {count} lines")


async def test_a_config_listener_serves_h2c_to_an_h2c_upstream_and_logs_http2(tmp_path: Path) -> None:
    origin = await H2Origin("cfg-origin").start()
    log = tmp_path / "access.log"
    path = tmp_path / "ferryman.toml"
    path.write_text(f"""
[listeners.web]
addr = "127.0.0.1:0"
protocol = "http"
upstream = "grpc"
access_log = "{log}"
access_log_format = "$server_protocol $status $request_method $request_uri"

[listeners.old]
addr = "127.0.0.1:0"
protocol = "http"
upstream = "grpc"
http2 = false

[upstreams.grpc]
backends = ["127.0.0.1:{origin.port}"]
protocol = "h2c"
""")
    gw = Gateway(load_file(path), path)
    gw.bind()
    server = await serve(gw)
    ports = {s.name: s.sock.getsockname()[1] for s in server.services if hasattr(s, "sock") and s.name in ("web", "old")}
    client = await H2Client.open(ports["web"])
    try:
        response = await client.response(client.request([(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/echo"),
                                                          (b":authority", b"api.test"), (b"te", b"trailers")], b"body"))
        assert response["status"] == 200 and response["headers"][b"x-origin"] == b"cfg-origin"
        echo = json.loads(response["body"])
        sent = dict(echo["headers"])
        assert sent[":authority"] == "api.test" and sent["te"] == "trailers" and echo["body"] == "body"
        response = await client.response(client.get("/trailers"))
        assert response["trailers"] == {b"x-sum": b"42", b"grpc-status": b"0"}
        assert (await _wait_for_lines(log, 2))[:2] == ["HTTP/2.0 200 POST /echo", "HTTP/2.0 200 GET /trailers"]
        assert origin.connections == 1
        # http2 = false: the preface is not HTTP/1.1, and not taken as HTTP/2 either
        reader, writer = await asyncio.open_connection("127.0.0.1", ports["old"])
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.1 ")
    finally:
        await client.close()
        await stop(gw, server)
        await origin.close()


@pytest.mark.parametrize("body, path, message", [
    ('protocol = "h3"', "upstreams.u.protocol", "http1"),
    ('protocol = "h2c"\ntls = true', "upstreams.u", "h2c"),
])
def test_upstream_protocol_errors_name_their_path(body: str, path: str, message: str) -> None:
    text = f"""
[listeners.web]
addr = "127.0.0.1:0"
protocol = "http"
upstream = "u"
http2 = "sometimes"

[upstreams.u]
backends = ["127.0.0.1:1"]
{body}
"""
    with pytest.raises(ConfigError) as failed:
        load_text(text)
    rendered = str(failed.value)
    assert path in rendered and message in rendered
    assert "listeners.web.http2" in rendered

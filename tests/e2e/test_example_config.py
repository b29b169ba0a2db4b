"""The example config (examples/ferryman.toml) as a user runs it: ``ferryman check`` accepts it
and ``ferryman run`` serves every route its header comment lists. Its fixed ports are moved to
free ones; everything else is the file as shipped."""

from __future__ import annotations

import base64
import gzip
import http.client
import re
import socket
from pathlib import Path

from support.process import LOCAL, REPO, ferryman_cli, free_port, running

EXAMPLE = REPO / "examples" / "ferryman.toml"


def request(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(LOCAL, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_the_example_config_serves_every_route_it_documents(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    ports = {old: free_port() for old in sorted(set(re.findall(r"127\.0\.0\.1:(808\d|9180)", text)))}
    for old, new in ports.items():
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    config = tmp_path / "ferryman.toml"
    config.write_text(text)
    assert ferryman_cli("check", "-c", str(config)).returncode == 0
    tcp, http_port = ports["8080"], ports["8082"]
    auth = {"Authorization": "Basic " + base64.b64encode(b"demo:demo").decode()}
    with running(config) as proc:
        proc.wait_ready("http")
        with socket.create_connection((LOCAL, tcp), timeout=10) as sock:  # the L4 listener
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")

        status, headers, body = request(http_port, "/echo")
        assert status == 200 and headers["x-served-by"] == "ferryman"
        assert b"x-forwarded-for: 127.0.0.1" in body.lower()

        assert request(http_port, "/api/echo")[0] == 401
        status, headers, body = request(http_port, "/api/echo", auth)
        assert status == 200 and "x-request-id" in headers
        assert b"GET /echo " in body  # the rewrite reached the origin

        assert request(http_port, "/admin/healthz")[0] == 401
        assert request(http_port, "/admin/healthz", auth)[0] == 200

        assert request(http_port, "/", {"x-canary": "1"})[1]["x-route"] == "canary"
        assert request(http_port, "/ping")[2] == b"pong\n"

        status, headers, body = request(http_port, "/", {"Host": "docs.localhost"})
        assert status == 200 and b"static filter" in body and "etag" in headers

        pad = "a" * 4000  # /echo returns the request head: long enough to be worth compressing
        status, headers, body = request(http_port, "/echo", {"Accept-Encoding": "gzip", "x-pad": pad})
        assert status == 200 and headers.get("content-encoding") == "gzip"
        assert pad.encode() in gzip.decompress(body)

        admin = {"Authorization": "Bearer demo-token"}
        assert request(ports["9180"], "/metrics")[0] == 401
        status, headers, body = request(ports["9180"], "/metrics", admin)
        assert status == 200 and b'ferryman_http_requests_total{listener="http",route="ping",upstream="",status="2xx"} 1' in body
        status, _, body = request(ports["9180"], "/api/v1/upstreams", admin)
        assert status == 200 and b'"demo"' in body
        assert proc.stop(10) == 0

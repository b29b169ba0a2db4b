"""``ferryman_tls_handshakes_total`` of a real ``ferryman run``: every completed handshake of
a TLS listener is counted once, across workers, and a failed one is counted with its reason."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.certs import Authority

from support.process import LOCAL, free_port, http_get, running, wait_until

CONNECTIONS = 6


def config(tmp_path: Path, port: int, admin: int, demo: int, workers: int) -> Path:
    ca = Authority(tmp_path)
    site = ca.issue("site.test", dns=("site.test",), file="site")
    path = tmp_path / "ferryman.toml"
    path.write_text(f"""
[server]
workers = {workers}
grace_period = "2s"

[demo]
addr = "{LOCAL}:{demo}"

[admin]
addr = "{LOCAL}:{admin}"

[listeners.web]
addr = "{LOCAL}:{port}"
protocol = "http"
upstream = "app"
tls = ["site"]

[certificates.site]
cert = "{site.cert}"
key = "{site.key}"

[upstreams.app]
backends = ["{LOCAL}:{demo}"]
""")
    (tmp_path / "ca.pem").write_bytes(Path(ca.cert).read_bytes())
    return path


def https_get(port: int, ca: Path) -> bytes:
    """One request on a new TLS connection (a full handshake each: no session reuse)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((LOCAL, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname="site.test") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data.split(b"\r\n", 1)[0]


def handshakes(admin: int) -> dict[tuple[str, ...], float]:
    status, body = http_get(admin, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "ferryman_tls_handshakes_total":
                out[(sample.labels["listener"], sample.labels["result"])] = sample.value
            elif sample.name == "ferryman_tls_handshake_errors_total":
                out[(sample.labels["listener"], "reason", sample.labels["reason"])] = sample.value
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_completed_and_failed_handshakes_are_counted_across_workers(tmp_path: Path, workers: int) -> None:
    port, admin, demo = free_port(), free_port(), free_port()
    path = config(tmp_path, port, admin, demo, workers)
    with running(path) as proc:
        proc.wait_ready()
        wait_until(lambda: handshakes(admin).get(("web", "ok")) == 0, 10, "the listener's counters (zero) on /metrics")
        for _ in range(CONNECTIONS):
            assert https_get(port, tmp_path / "ca.pem") == b"HTTP/1.1 200 OK"
        # plain HTTP to the TLS port: OpenSSL fails the handshake (reason http_request)
        with socket.create_connection((LOCAL, port), timeout=10) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
            while plain.recv(65536):
                pass
        expected = {("web", "ok"): CONNECTIONS, ("web", "error"): 1, ("web", "reason", "http_request"): 1}
        seen: list[dict] = []

        def counted() -> bool:
            seen.append(handshakes(admin))
            return seen[-1] == expected

        wait_until(counted, 10, f"{expected} on /metrics (last: {seen[-1:] or '-'})")
        assert proc.stop(10) == 0

"""OpenTelemetry tracing of a real ``ferryman run``: spans reach a real OTLP/HTTP receiver
(protobuf decoded with the official classes), the origin gets our span as the parent in its
``traceparent``, and the sample ratio decides what is exported."""

from __future__ import annotations

import gzip
import http.client
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

from support.process import ENV, LOCAL, REPO, free_port, running, wait_until

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = "b7ad6b7169203331"


class Receiver:
    """An OTLP/HTTP traces endpoint: POST /v1/traces with protobuf bodies (gzip or not)."""

    def __init__(self) -> None:
        self.spans: list = []
        self.resources: list[dict] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                assert self.headers["Content-Type"] == "application/x-protobuf"
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver.lock:
                    receiver.paths.append(self.path)
                    for resource_spans in request.resource_spans:
                        receiver.resources.append({a.key: a.value for a in resource_spans.resource.attributes})
                        for scope_spans in resource_spans.scope_spans:
                            receiver.spans.extend(scope_spans.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer((LOCAL, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self) -> int:
        with self.lock:
            return len(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class Origin:
    """An HTTP origin that records the trace headers of each request it gets."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str | None, str | None]] = {}  # path → (traceparent, tracestate)
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                origin.seen[self.path] = (self.headers.get("traceparent"), self.headers.get("tracestate"))
                status = 503 if self.path.startswith("/api/fail") else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer((LOCAL, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


def write_config(tmp_path: Path, port: int, origin: int, receiver: int, tracing: str) -> Path:
    path = tmp_path / "ferryman.toml"
    path.write_text(f"""
[server]
workers = 1
grace_period = "2s"

[tracing]
endpoint = "http://{LOCAL}:{receiver}/v1/traces"
service_name = "edge-test"
flush_interval = "100ms"
{tracing}

[listeners.web]
addr = "{LOCAL}:{port}"
protocol = "http"
routes = ["api", "down"]

[routes.api]
path = "/api"
upstream = "app"

[routes.down]
path = "/down"
upstream = "nowhere"

[upstreams.app]
backends = ["{LOCAL}:{origin}"]

[upstreams.nowhere]
backends = ["{LOCAL}:{free_port()}"]
max_tries = 1
""")
    return path


def get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection(LOCAL, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def attrs(span) -> dict:  # noqa: ANN001 - a protobuf Span
    out = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind)
    return out


def test_spans_carry_the_request_and_the_origin_gets_our_span_as_parent(
    tmp_path: Path, receiver: Receiver, origin: Origin,
) -> None:
    port = free_port()
    path = write_config(tmp_path, port, origin.port, receiver.port, "sample_ratio = 1.0")
    with running(path) as proc:
        proc.wait_ready()
        child = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01", "tracestate": "congo=t61rcWkgMzE"}
        assert get(port, "/api/child?token=secret", child) == 200
        assert get(port, "/api/root") == 200
        assert get(port, "/api/fail") == 503
        assert get(port, "/down") == 502
        assert get(port, "/nothing-here") == 404
        wait_until(lambda: receiver.count() >= 5, 10, "5 spans exported")
        assert proc.stop(10) == 0
    assert receiver.count() == 5
    assert set(receiver.paths) == {"/v1/traces"}
    resource = receiver.resources[0]
    assert resource["service.name"].string_value == "edge-test"
    spans = {attrs(s)["url.path"]: s for s in receiver.spans}

    # a client that sent a traceparent: our span is its child, the origin's parent is our span
    span = spans["/api/child"]
    assert span.name == "GET api" and span.kind == span.SPAN_KIND_SERVER
    assert span.trace_id.hex() == CLIENT_TRACE and span.parent_span_id.hex() == CLIENT_PARENT
    assert span.trace_state == "congo=t61rcWkgMzE"
    assert span.flags & 0x300 == 0x300  # the parent is remote
    assert span.end_time_unix_nano >= span.start_time_unix_nano > 0
    a = attrs(span)
    assert a["http.request.method"] == "GET" and a["http.route"] == "api" and a["http.response.status_code"] == 200
    assert a["url.scheme"] == "http" and a["network.protocol.version"] == "1.1"
    assert a["client.address"] == LOCAL and a["ferryman.upstream.address"] == f"{LOCAL}:{origin.port}"
    assert a["server.address"] == LOCAL and a["server.port"] == port and a["ferryman.upstream"] == "app"
    assert "token" not in str(a)  # the query is not recorded
    assert span.status.code == span.status.STATUS_CODE_UNSET
    traceparent, tracestate = origin.seen["/api/child?token=secret"]
    assert traceparent == f"00-{CLIENT_TRACE}-{span.span_id.hex()}-01"
    assert tracestate == "congo=t61rcWkgMzE"

    # no traceparent from the client: a new trace, and the origin still gets ours
    root = spans["/api/root"]
    assert root.parent_span_id == b"" and root.trace_id.hex() != CLIENT_TRACE and len(root.trace_id) == 16
    assert root.flags & 0x300 == 0x100
    assert origin.seen["/api/root"] == (f"00-{root.trace_id.hex()}-{root.span_id.hex()}-01", None)

    # 5xx from the origin, and a proxy error (connection refused): error status with the kind
    fail = spans["/api/fail"]
    assert fail.status.code == fail.status.STATUS_CODE_ERROR and attrs(fail)["error.type"] == "503"
    down = spans["/down"]
    assert down.status.code == down.status.STATUS_CODE_ERROR and down.name == "GET down"
    assert attrs(down)["error.type"] == "connect_refused" and "connect_refused" in down.status.message
    assert attrs(down)["http.response.status_code"] == 502
    lost = spans["/nothing-here"]
    assert lost.name == "GET" and attrs(lost)["http.response.status_code"] == 404 and "http.route" not in attrs(lost)
    assert len({s.span_id for s in receiver.spans}) == 5


def test_sample_ratio_zero_exports_nothing_but_a_sampled_parent_is_followed(
    tmp_path: Path, receiver: Receiver, origin: Origin,
) -> None:
    port = free_port()
    path = write_config(tmp_path, port, origin.port, receiver.port, "sample_ratio = 0.0\ncompression = \"gzip\"")
    with running(path) as proc:
        proc.wait_ready()
        for i in range(10):
            assert get(port, f"/api/{i}") == 200
        unsampled = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-00"}
        assert get(port, "/api/unsampled", unsampled) == 200
        sampled = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"}
        assert get(port, "/api/sampled", sampled) == 200
        assert proc.stop(10) == 0  # the exporter sends what is queued before the process exits
    assert [attrs(s)["url.path"] for s in receiver.spans] == ["/api/sampled"]
    # not recorded, still propagated: the origin can continue the trace
    traceparent, _ = origin.seen["/api/3"]
    assert traceparent is not None and traceparent.endswith("-00")
    assert origin.seen["/api/unsampled"][0].startswith(f"00-{CLIENT_TRACE}-")  # type: ignore[union-attr]
    assert not origin.seen["/api/unsampled"][0].endswith(f"{CLIENT_PARENT}-00")  # type: ignore[union-attr]


BLOCK_OTEL = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, Blocker())
from ferryman.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_check_without_the_extra_names_the_table_and_the_pip_command(tmp_path: Path) -> None:
    path = write_config(tmp_path, free_port(), free_port(), free_port(), "")
    result = subprocess.run([sys.executable, "-c", BLOCK_OTEL, "check", "-c", str(path)], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "tracing: needs OpenTelemetry" in result.stderr
    assert "pip install 'ferryman[otel]'" in result.stderr
    ok = subprocess.run([sys.executable, "-m", "ferryman", "check", "-c", str(path)], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr


def test_export_header_values_are_checked_with_their_path() -> None:
    from ferryman.config.load import load_text
    from ferryman.errors import ConfigError

    base = '[tracing]\nendpoint = "http://127.0.0.1:4318/v1/traces"\n'
    load_text(base + 'headers = { authorization = "Bearer abc" }\n')
    for bad in ('"""Bearer abc\n"""', '"caf\\u20ac"'):  # a multi-line string's newline; not Latin-1
        try:
            load_text(base + f"headers = {{ authorization = {bad} }}\n")
        except ConfigError as exc:
            assert "tracing.headers.authorization" in exc.render()
        else:
            raise AssertionError(f"{bad} was accepted")

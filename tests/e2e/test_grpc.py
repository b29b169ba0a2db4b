"""gRPC through ferryman, with a real grpcio client and server: unary, server streaming,
client streaming and bidi streaming; metadata, trailers and grpc-status intact; deadlines
(grpc-timeout) passed on; a client's cancellation reaching the server. Cleartext (h2c both
ways) and TLS (h2 with ALPN both ways).

The grpcio client and server run on grpc's own threads (its sync API); the proxy runs on
the test's loop and the client calls are awaited through an executor.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.certs import Authority
from support.http_proxy import App, start_proxy, stop

from ferryman.net.addr import parse_address
from ferryman.net.connect import Peer
from ferryman.net.tls import CertificateSpec, CertStore, TlsOptions

WAIT = 10.0  # seconds any one step may take


class Service:
    """The test service's handlers (bytes in, bytes out) and what the server observed."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.remaining: list[float | None] = []
        self.hold_started = threading.Event()
        self.hold_ended = threading.Event()
        self.hold_active_after: list[bool] = []

    def _seen(self, context: grpc.ServicerContext) -> None:
        self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        self.remaining.append(context.time_remaining())

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._seen(context)
        if request == b"fail":
            context.set_trailing_metadata((("x-why", "asked to"),))
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        context.send_initial_metadata((("x-initial", "hello"),))
        context.set_trailing_metadata((("x-trailer", "bye"), ("x-bin-bin", b"\x00\x01")))
        return b"echo:" + request

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._seen(context)
        for i in range(int(request)):
            yield b"%d:" % i + b"x" * 10_000

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._seen(context)
        parts = list(requests)
        return b"%d messages, %d bytes" % (len(parts), sum(map(len, parts)))

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._seen(context)
        for message in requests:
            yield message[::-1]

    def hold(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Streams nothing until the client goes away; records, when the RPC ends, whether
        it was still active (in the termination callback: after a cancel grpc may never
        resume this generator)."""

        def ended() -> None:
            self.hold_active_after.append(context.is_active())
            self.hold_ended.set()

        context.add_callback(ended)
        self.hold_started.set()
        yield b"started"
        self.hold_ended.wait(2 * WAIT)  # longer than the test waits: a lost cancel fails there

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler("test.Svc", {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "Hold": grpc.unary_stream_rpc_method_handler(self.hold),
        })


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, Any]:
    directory: Path = tmp_path_factory.mktemp("grpc")
    ca = Authority(directory)
    return ca, ca.issue("grpc.test", dns=("grpc.test",), ips=("127.0.0.1",))


def _grpc_server(service: Service, credentials: grpc.ServerCredentials | None) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_secure_port("127.0.0.1:0", credentials) if credentials is not None else server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


async def _in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _calls(channel: grpc.Channel, service: Service) -> None:
    """Every RPC kind through ``channel``; assertions on what client and server saw."""
    unary = channel.unary_unary("/test.Svc/Unary")
    response, call = unary.with_call(b"ping", metadata=(("x-client", "c1"),), timeout=WAIT)
    assert response == b"echo:ping"
    assert ("x-initial", "hello") in call.initial_metadata()
    trailing = dict(call.trailing_metadata())
    assert trailing["x-trailer"] == "bye" and trailing["x-bin-bin"] == b"\x00\x01"
    assert call.code() is grpc.StatusCode.OK
    assert service.metadata[-1]["x-client"] == "c1"
    remaining = service.remaining[-1]
    assert remaining is not None and 0 < remaining <= WAIT  # the deadline reached the server (grpc-timeout)

    with pytest.raises(grpc.RpcError) as failed:
        unary(b"fail", timeout=WAIT)
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND and failed.value.details() == "no such thing"
    assert dict(failed.value.trailing_metadata())["x-why"] == "asked to"

    stream = channel.unary_stream("/test.Svc/ServerStream")
    messages = list(stream(b"50", timeout=WAIT))
    assert len(messages) == 50 and messages[49].startswith(b"49:") and all(len(m) > 10_000 for m in messages)

    client_stream = channel.stream_unary("/test.Svc/ClientStream")
    assert client_stream(iter([b"a" * 30_000] * 20), timeout=WAIT) == b"20 messages, 600000 bytes"

    bidi = channel.stream_stream("/test.Svc/Bidi")
    assert list(bidi(iter([b"abc", b"12345", b"x" * 70_000]), timeout=WAIT)) == [b"cba", b"54321", b"x" * 70_000]


def _cancel(channel: grpc.Channel, service: Service) -> None:
    """The client cancels a streaming call: the server sees its RPC end, cancelled."""
    call = channel.unary_stream("/test.Svc/Hold")(b"", timeout=WAIT)
    assert next(call) == b"started"
    assert service.hold_started.wait(WAIT)
    call.cancel()
    assert service.hold_ended.wait(WAIT)  # RST_STREAM(CANCEL) went through the proxy
    assert service.hold_active_after == [False]
    assert call.code() is grpc.StatusCode.CANCELLED


async def test_grpc_over_h2c_both_ways() -> None:
    service = Service()
    server, port = _grpc_server(service, None)
    app = App(Peer(parse_address(f"127.0.0.1:{port}"), connect_timeout=2.0, protocol="h2c"))
    proxy = await start_proxy(app)
    channel = grpc.insecure_channel(f"127.0.0.1:{proxy.sock.getsockname()[1]}")
    try:
        await _in_thread(_calls, channel, service)
        await _in_thread(_cancel, channel, service)
        assert app.errors[:5] == [None] * 5
        assert app.errors[-1] is not None  # the cancelled call
    finally:
        channel.close()
        await stop(proxy)
        server.stop(None)


async def test_grpc_over_tls_both_ways(pki) -> None:
    ca, leaf = pki
    key, cert, root = Path(leaf.key).read_bytes(), Path(leaf.cert).read_bytes(), Path(ca.cert).read_bytes()
    service = Service()
    server, port = _grpc_server(service, grpc.ssl_server_credentials(((key, cert),)))
    app = App(Peer(parse_address(f"127.0.0.1:{port}"), connect_timeout=2.0, protocol="h2", tls=TlsOptions(ca_file=ca.cert, sni="grpc.test")))
    proxy = await start_proxy(app, tls=CertStore([CertificateSpec("grpc", leaf.cert, leaf.key)]))
    credentials = grpc.ssl_channel_credentials(root_certificates=root)
    channel = grpc.secure_channel(f"127.0.0.1:{proxy.sock.getsockname()[1]}", credentials, options=(("grpc.ssl_target_name_override", "grpc.test"),))
    try:
        await _in_thread(_calls, channel, service)
        await _in_thread(_cancel, channel, service)
    finally:
        channel.close()
        await stop(proxy)
        server.stop(None)

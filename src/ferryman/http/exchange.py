"""One request/response through the proxy: the phase driver and the body streams.

The phases (hooks, peer choice, connect or pool hit, sending the head, waiting for the
response head) run in one task per request. Bodies do not: request body chunks go from
the downstream protocol straight to the upstream transport, response body chunks from
the upstream protocol straight to the downstream transport, with pause/resume both ways.

The upstream is an :class:`UpstreamH1` connection or an HTTP/2 stream
(:class:`~.upstream_h2.UpstreamH2Stream`, ``upstream.h2``): both take the request and
push ``on_upstream_*`` callbacks here; "pausing" an h2 stream's reading withholds its
flow-control credit. The per-request paths tell them apart with ``isinstance(...,
UpstreamH1)``: compiled, an UpstreamH1 is then read directly, not looked up by name. This class answers an HTTP/1.1 client;
:class:`~.downstream_h2.H2Exchange` overrides the few methods that write the response, for
an HTTP/2 client.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from collections.abc import Iterable
from typing import Any, ClassVar, Final

from mypy_extensions import mypyc_attr

from ..errors import ErrorKind, ErrorSource, ProxyError
from ..net.detach import can_detach, detach, pause
from ..net.pump import PumpStats, SplicePump
from ..protocol import proxy_protocol
from ..protocol.h1.events import BodyKind, H1Error, ResponseHead
from ..protocol.h1.headers import HOP_BY_HOP, strip_hop_by_hop
from ..protocol.h1.serializer import chunk, last_chunk, request_head, response_head
from .plan import ServicePlan
from .session import Session
from .upstream_h1 import UpstreamH1

log = logging.getLogger(__name__)

BODY_BUFFER_LIMIT: Final = 64 * 1024  # bytes held while the other side is not ready, then pause reading
TUNNEL_FLUSH_TIMEOUT: Final = 10.0  # seconds for pending bytes to leave before a tunnel moves to splice
INF: Final = float("inf")
# request trailer fields never forwarded (see Exchange.on_request_trailers)
TRAILER_DENY: Final = HOP_BY_HOP | frozenset((
    b"content-length", b"content-type", b"content-encoding", b"content-range", b"host", b"authorization",
    b"proxy-authorization", b"cookie", b"forwarded", b"x-real-ip", b"expect", b"max-forwards", b"range",
    b"cache-control", b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"if-range",
))
_CLIENT_GONE: Final = (ErrorKind.CONNECTION_CLOSED, ErrorKind.CONNECTION_RESET)
_CHUNKED: Final = (b"transfer-encoding", b"chunked")
_CONN_CLOSE: Final = (b"connection", b"close")


@mypyc_attr(allow_interpreted_subclasses=True)  # H2Exchange (downstream_h2) stays Python
class Exchange:
    """Drives one request. Created by the downstream protocol for each request head."""

    # H2Exchange: the response goes out as HTTP/2 frames (_send_head_h2). A ClassVar: compiled,
    # an instance default would hide the subclass's value
    h2_downstream: ClassVar[bool] = False

    def __init__(self, downstream: Any, session: Session) -> None:  # a DownstreamH1, or an HTTP/2 stream (downstream_h2.H2Stream)
        self.downstream = downstream
        self.service = downstream.service
        self.app = self.service.app
        self.plan: ServicePlan = self.service.plan
        self.session = session
        self.loop = downstream.loop
        self.upstream: Any = None  # an UpstreamH1, or an HTTP/2 stream (upstream_h2.UpstreamH2Stream)
        self.reused = False
        self.tunnel = False
        self.failed = False  # a per-chunk hook raised: drop further body bytes
        self.pump: SplicePump | None = None  # the tunnel's splice pump, once both sockets moved to it
        self._tunnel_eofs: set[str] = set()
        self._tunnel_idle: asyncio.TimerHandle | None = None  # callback tunnel's idle timer
        # request body (downstream → upstream)
        kind = session.request.body.kind
        self.request_done = kind is BodyKind.NONE
        self.filter_request_body = self.plan.request_body_filter and not self.request_done
        self.body_chunked = kind is BodyKind.CHUNKED or self.filter_request_body  # an HTTP/1.1 upstream gets it chunked
        self.request_chunked = self.body_chunked  # this attempt frames the body in chunks (not to an h2 upstream)
        self.req_trailers: list[tuple[bytes, bytes]] | None = None
        self.req_buffer: list[bytes | memoryview] = []
        self.req_buffered = 0
        self.req_streaming = False
        self.body_waiter: asyncio.Future[None] | None = None  # Session.read_body() is waiting
        # response (upstream → downstream)
        self.head_future: asyncio.Future[ResponseHead] = self.loop.create_future()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.resp_head: ResponseHead | None = None
        self.resp_mode = "raw"  # raw | chunked | close | none
        self.resp_streaming = False
        self.resp_buffer: list[bytes | memoryview] = []
        self.resp_ended = False
        self.resp_trailers: list[tuple[bytes, bytes]] = []
        self.body_filters = False  # decided once the response head went through the filters
        self.last_activity = 0.0
        self.read_timeout: float | None = None  # set while the upstream owes us bytes (sweep-checked)

    # the phase driver ------------------------------------------------------------------------
    async def run(self) -> None:
        app, s, svc = self.app, self.session, self.service
        error: ProxyError | None = None
        try:
            await self._phases()
        except ProxyError as exc:
            error = exc
            await self._fail(exc)
        except asyncio.CancelledError:
            error = ProxyError(ErrorKind.INTERNAL, context="cancelled by shutdown")
            self._abort_upstream()
            if self.pump is not None:
                self.pump.close()
        except Exception as exc:  # a bug in a hook: answer 500, keep serving others
            error = ProxyError(ErrorKind.INTERNAL, context=f"{type(exc).__name__}: {exc}")
            log.exception("%s: %s: unexpected error", svc.name, app.request_summary(s))
            await self._fail(error, status=500)
        finally:
            self._cancel_timer()
            s.digest.end = self.loop.time()
            self._release_upstream(error is None)
        if self.plan.logging:
            try:
                result = app.logging(s, error)
                if self.plan.await_logging:
                    await result
            except Exception:
                log.exception("%s: logging hook failed", svc.name)

    async def _phases(self) -> None:
        app, s, svc = self.app, self.session, self.service
        if self.downstream.closing:  # gone (an HTTP/2 stream reset) before its turn: nothing to do
            if self.head_future.done():
                self.head_future.exception()  # the same error, raised here: nobody will await it
            raise ProxyError(ErrorKind.CONNECTION_CLOSED, ErrorSource.DOWNSTREAM, context="client closed the connection")
        connect = s.request.method == b"CONNECT"
        if connect and not self.plan.allow_connect:
            self.downstream.keep_alive = False
            s.respond_error(405, "CONNECT is not enabled on this listener")
            return
        if self.plan.early_request_filter:
            result = app.early_request_filter(s)
            if self.plan.await_early_request_filter:
                await result
        if self.plan.request_filter and (await app.request_filter(s) if self.plan.await_request_filter else app.request_filter(s)):
            if self.downstream.pending_file is not None:
                await self.downstream.flush_file(s)
            return
        if self.plan.proxy_upstream_filter and not (await app.proxy_upstream_filter(s) if self.plan.await_proxy_upstream_filter else app.proxy_upstream_filter(s)):
            raise ProxyError(ErrorKind.ACCESS_DENIED, ErrorSource.INTERNAL, context="proxy_upstream_filter refused the request")
        if connect:
            await self._connect_tunnel()
        else:
            head = await self._send_with_retries()
            await self._deliver_head(head)
        await self.done

    async def _send_with_retries(self) -> ResponseHead:
        app, s = self.app, self.session
        tries = max(1, app.max_tries)
        awaited = self.plan.await_upstream_peer
        while True:
            peer: Any = await app.upstream_peer(s) if awaited else app.upstream_peer(s)  # type: ignore[misc]
            s.peer = peer
            try:
                await self._acquire(peer)
                head = await self._send_request()
                if head.status in s.retry_statuses and self._may_retry(tries - 1):
                    s.response_status = head.status
                    # the policy sends this answer's request to the next backend; its body is not read
                    raise ProxyError(ErrorKind.UPSTREAM_STATUS, ErrorSource.UPSTREAM, retry=True, context=f"{peer.name} answered {head.status}")
                return head
            except ProxyError as exc:
                if self.upstream is not None:
                    if self.plan.error_while_proxy or exc.kind in (ErrorKind.CONNECTION_CLOSED, ErrorKind.CONNECTION_RESET):
                        exc = app.error_while_proxy(s, peer, exc, self.reused)
                    self._abort_upstream()
                s.tries += 1
                s.last_error = exc
                if not exc.retry or not self._may_retry(tries):
                    raise
                log.info("%s: %s: %s; retrying", self.service.name, app.request_summary(s), exc)
                self._reset_response()

    def _may_retry(self, tries: int) -> bool:
        """Another attempt may start: fewer than ``tries`` failed so far, time left, and the
        request can be resent."""
        s = self.session
        return s.tries < tries and self._can_resend() and (s.retry_until == INF or self.loop.time() < s.retry_until)

    def _reset_response(self) -> None:
        """Forget what an abandoned attempt received."""
        self.head_future = self.loop.create_future()
        self.resp_buffer.clear()
        self.resp_ended = False
        self.resp_trailers = []

    def _can_resend(self) -> bool:
        """A request whose body already went (partly) upstream cannot be sent again."""
        return not self.req_streaming or self.session.body_bytes_received == 0

    async def _acquire(self, peer: Any) -> None:
        """A pooled connection to ``peer`` or a new one (failover decided by fail_to_connect)."""
        svc, s = self.service, self.session
        # a connection that began with a PROXY header speaks for one client only (HAProxy
        # makes such connections private too): its pool key includes that client
        key = peer.pool_key if not peer.proxy_protocol else (peer.pool_key, s.client_addr)
        if peer.protocol != "http1":
            from .upstream_h2 import acquire_stream

            self.upstream, self.reused = await acquire_stream(self, peer, key)  # type: ignore[assignment]
            await self._connected(peer)
            return
        conn: Any = svc.pool.get(key)
        self.reused = conn is not None
        if conn is None:
            sock = await self._connect(peer)
            try:
                if peer.proxy_protocol:
                    header = _proxy_header(peer.proxy_protocol, s)
                    await self.loop.sock_sendall(sock, header)
                tls = getattr(peer, "tls", None)
                if tls is None:
                    _, conn = await self.loop.create_connection(lambda: UpstreamH1(key, peer.name), sock=sock)
                else:
                    _, conn = await self.loop.create_connection(
                        lambda: UpstreamH1(key, peer.name), sock=sock, ssl=tls.context(),
                        server_hostname=tls.server_hostname(peer.address.host),
                        ssl_handshake_timeout=peer.connect_timeout or 60.0,
                    )
                conn.max_idle, conn.idle_timeout = peer.pool_size, peer.pool_idle_timeout
            except ssl.SSLError as exc:
                sock.close()
                raise ProxyError(ErrorKind.CONNECT_ERROR, ErrorSource.UPSTREAM, retry=True, context=f"TLS handshake with {peer.name} failed") from exc
            except OSError as exc:
                sock.close()
                raise ProxyError(ErrorKind.CONNECT_ERROR, ErrorSource.UPSTREAM, retry=True, context=peer.name) from exc
        else:
            conn.pool = None
        self.upstream = conn
        await self._connected(peer)

    async def _connect(self, peer: Any) -> socket.socket:
        """A new connection to ``peer``; a failure goes through ``fail_to_connect``."""
        try:
            return await self.service.connector.connect(peer)
        except ProxyError as exc:
            if self.plan.fail_to_connect:
                exc = self.app.fail_to_connect(self.session, peer, exc)
            raise

    async def _connected(self, peer: Any) -> None:
        s = self.session
        s.digest.upstream_connect = self.loop.time()
        s.digest.reused = self.reused
        s.digest.upstream_addr = peer.name
        if self.plan.connected_to_upstream:
            result = self.app.connected_to_upstream(s, peer, self.reused)
            if self.plan.await_connected_to_upstream:
                await result

    # CONNECT (forward proxy) -------------------------------------------------------------------
    async def _connect_tunnel(self) -> None:
        """``CONNECT host:port``: connect where ``upstream_peer`` says (failing over like any
        request), answer 200, then tunnel."""
        app, s = self.app, self.session
        while True:
            peer = await app.upstream_peer(s) if self.plan.await_upstream_peer else app.upstream_peer(s)
            s.peer = peer
            try:
                sock = await self._connect(peer)
                break
            except ProxyError as exc:
                s.tries += 1
                s.last_error = exc
                if not exc.retry or s.tries >= max(1, app.max_tries):
                    raise
        try:
            await self._connected(peer)
        except BaseException:
            sock.close()
            raise
        s.response_status = 200
        s.response_sent = True
        self.downstream.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await self._open_tunnel(sock)

    async def _send_request(self) -> ResponseHead:
        s, svc, upstream = self.session, self.service, self.upstream
        assert upstream is not None
        headers = self._upstream_headers()
        if self.plan.upstream_request_filter:
            result = self.app.upstream_request_filter(s, headers)
            if self.plan.await_upstream_request_filter:
                await result
        if isinstance(upstream, UpstreamH1):  # (narrowed: compiled, its fields are read directly)
            upstream.begin(self, s.upstream_method)
            upstream.write(request_head(s.upstream_method, s.upstream_target, headers))
        else:  # an HTTP/2 stream
            upstream.begin(self, s.upstream_method)
            upstream.send_head(s.upstream_method, s.upstream_target, headers, self.request_done and not self.req_buffer)
        self._flush_request_body()
        self._arm_read_timer()
        head = await self.head_future
        s.digest.upstream_header = self.loop.time()
        return head

    def _upstream_headers(self) -> list[tuple[bytes, bytes]]:
        s = self.session
        request = s.request
        headers = strip_hop_by_hop(request.headers)
        if request.upgrade is not None:
            headers.append((b"connection", b"upgrade"))
            headers.append((b"upgrade", request.upgrade))
        if self.filter_request_body:
            _drop(headers, b"content-length")
        if not isinstance(self.upstream, UpstreamH1):  # an HTTP/2 stream
            self.request_chunked = False  # DATA frames carry the body
            te = request.get(b"te")
            if te is not None and b"trailers" in te.lower():
                headers.append((b"te", b"trailers"))  # the client takes trailers (gRPC servers insist on it)
        else:
            self.request_chunked = self.body_chunked
        if self.request_chunked:
            headers.append(_CHUNKED)
        if self.plan.forwarded:
            add_forwarded(headers, s, self.plan.forwarded)
        return headers

    # request body ----------------------------------------------------------------------------
    def on_request_body(self, data: bytes | memoryview) -> None:
        """Downstream protocol callback: a request body chunk."""
        s = self.session
        s.body_bytes_received += len(data)
        self.downstream.body_activity = self.loop.time()
        if self.failed:
            return
        if s.max_body is not None and s.body_bytes_received > s.max_body:
            self._body_too_large(s.max_body)
            return
        if self.filter_request_body:
            data = self._filter_request_body(data, False)
            if not data:
                return
        if self.req_streaming:
            self._write_request_chunk(data)
            return
        self.req_buffer.append(data)
        self.req_buffered += len(data)
        if self.req_buffered > BODY_BUFFER_LIMIT and self.body_waiter is None:
            self.downstream.pause_reading_for(self)

    def on_request_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """Downstream protocol callback: the request body's trailers (chunked or h2). Fields
        a trailer must not carry (framing, routing, credentials, forwarding: RFC 9110
        6.5.1) are dropped: no filter sees trailers, and some origins merge them into the
        header section."""
        self.req_trailers = [(k, v) for k, v in trailers if k not in TRAILER_DENY and not k.startswith(b"x-forwarded-")]

    def on_request_end(self) -> None:
        if self.filter_request_body and not self.failed:
            tail = self._filter_request_body(b"", True)
            if tail and self.req_streaming:
                self._write_request_chunk(tail)
            elif tail:
                self.req_buffer.append(tail)
        self.request_done = True
        if self.body_waiter is not None and not self.body_waiter.done():
            self.body_waiter.set_result(None)
        if self.req_streaming:
            self._end_request_body()

    def _end_request_body(self) -> None:
        upstream = self.upstream
        if upstream is None:
            return
        if self.request_chunked:
            upstream.write(last_chunk(self.req_trailers or ()))
        elif upstream.h2:
            upstream.end_request(self.req_trailers)

    async def read_body(self, limit: int) -> bytes:
        """The whole request body, before anything went upstream (see ``Session.read_body``).
        The bytes stay buffered: if the request is then proxied, they go upstream as usual."""
        if self.req_streaming:
            raise RuntimeError("read_body(): the request body is already going upstream")
        s = self.session
        if s.body_bytes_received > limit or (s.request.body.length or 0) > limit:
            self.downstream.keep_alive = False
            self.failed = True  # drop whatever of the body is still to come
            raise ProxyError(ErrorKind.BODY_TOO_LARGE, ErrorSource.DOWNSTREAM, context=f"the request body is over the limit of {limit} bytes")
        if not self.request_done:
            if s.max_body is None or limit < s.max_body:
                s.max_body = limit
            self.body_waiter = self.loop.create_future()
            self.downstream.resume_reading_for(self)  # it may have paused at the buffer limit
            try:
                await self.body_waiter
            except ProxyError:
                if self.head_future.done():
                    self.head_future.exception()  # the same error: raised here, not awaited there
                raise
            finally:
                self.body_waiter = None
        return b"".join(self.req_buffer)

    def _filter_request_body(self, data: bytes | memoryview, end: bool) -> bytes:
        try:  # a hook gets bytes (large pieces arrive as memoryview slices)
            return self.app.request_body_filter(self.session, data if type(data) is bytes else bytes(data), end)
        except Exception as exc:
            self._hook_failed("request_body_filter", exc)
            return b""

    def on_request_body_timeout(self, timeout: float) -> None:
        """The client sent no request body bytes for ``timeout`` seconds (nginx: 408)."""
        error = ProxyError(ErrorKind.READ_TIMEOUT, ErrorSource.DOWNSTREAM, context=f"client sent no request body for {timeout:g}s")
        self.downstream.keep_alive = False
        self._abort_upstream()
        self._upstream_failed(error)

    def _body_too_large(self, limit: int) -> None:
        """A chunked body went over the session's limit: 413 if nothing was answered yet."""
        self.failed = True  # drop the rest of the body
        self.downstream.keep_alive = False
        self._abort_upstream()
        self._upstream_failed(ProxyError(ErrorKind.BODY_TOO_LARGE, ErrorSource.DOWNSTREAM, context=f"the request body is over the limit of {limit} bytes"))

    def _hook_failed(self, hook: str, exc: Exception) -> None:
        """A per-chunk hook raised: end the exchange with a 500 (or an abort if too late)."""
        if self.failed:
            return
        self.failed = True
        log.error("%s: %s: %s failed: %s: %s", self.service.name, self.app.request_summary(self.session), hook, type(exc).__name__, exc)
        self.downstream.keep_alive = False
        self._abort_upstream()
        self._upstream_failed(ProxyError(ErrorKind.INTERNAL, ErrorSource.INTERNAL, context=f"{hook} raised {type(exc).__name__}"))

    def _flush_request_body(self) -> None:
        for data in self.req_buffer:
            self._write_request_chunk(data)
        self.req_buffer.clear()
        self.req_buffered = 0
        self.req_streaming = True
        if self.request_done and (self.request_chunked or self.upstream.h2):  # type: ignore[union-attr]
            self._end_request_body()
        self.downstream.resume_reading_for(self)

    def _write_request_chunk(self, data: bytes | memoryview) -> None:
        upstream = self.upstream
        if upstream is None or not data:
            return
        self.last_activity = self.loop.time()  # the request body is moving: the upstream is not idle
        if self.request_chunked:
            upstream.writelines(chunk(data))
        else:
            upstream.write(data)

    def on_upstream_write_paused(self) -> None:
        self.downstream.pause_reading_for(self)

    def on_upstream_write_resumed(self) -> None:
        self.last_activity = self.loop.time()  # the upstream is taking the body: not idle
        self.downstream.resume_reading_for(self)

    # response --------------------------------------------------------------------------------
    def on_upstream_head(self, head: ResponseHead) -> None:
        self.last_activity = self.loop.time()
        if 100 <= head.status < 200 and head.status != 101:
            if not self.downstream.closing:  # interim (100 Continue, 103 Early Hints): pass on now
                self.downstream.write(response_head(head.status, head.reason, strip_hop_by_hop(head.headers)))
            return
        if not self.head_future.done():
            self.head_future.set_result(head)

    async def _deliver_head(self, head: ResponseHead) -> None:
        s, app, svc = self.session, self.app, self.service
        self.resp_head = head
        headers = strip_hop_by_hop(head.headers)
        s.response_status = head.status
        s.response_headers = headers
        if self.plan.upstream_response_filter:
            app.upstream_response_filter(s, headers)
        if self.plan.response_filter:
            result = app.response_filter(s, headers)
            if self.plan.await_response_filter:
                await result
        self.body_filters = s.filter_body
        if head.status == 101:
            if s.request.upgrade is None:
                raise ProxyError(ErrorKind.PROTOCOL_ERROR, ErrorSource.UPSTREAM, context="101 without an upgrade request")
            headers.append((b"connection", b"upgrade"))
            headers.append((b"upgrade", head.get(b"upgrade") or s.request.upgrade))
            self.downstream.write(response_head(101, head.reason, headers))
            s.response_sent = True
            await self._open_tunnel(None)
            return
        if self.h2_downstream:
            self._send_head_h2(head, headers)
            return
        # to an HTTP/1.1 client (inline: the hot path): the framing is chosen here
        self.resp_mode = self._response_mode(head, headers)
        if self.resp_mode == "chunked":
            _drop(headers, b"content-length")
            headers.append(_CHUNKED)
        if not self.downstream.keep_alive or self.resp_mode == "close":
            self.downstream.keep_alive = False
            headers.append(_CONN_CLOSE)
        head_bytes = response_head(s.response_status, head.reason if s.response_status == head.status else b"", headers, s.request.version)
        s.response_sent = True
        self.resp_streaming = True
        if self.resp_mode == "raw" and self.resp_buffer:  # one write for head and body received so far
            body = self.resp_buffer
            s.bytes_sent += size_of(body)
            self.downstream.writelines([head_bytes, *body])
        else:
            self.downstream.write(head_bytes)
            for data in self.resp_buffer:
                self._write_response_chunk(data)
        self.resp_buffer.clear()
        if self.upstream is not None and self.upstream.transport is not None and not self.downstream.write_paused:
            self.upstream.transport.resume_reading()  # it paused while the head was on its way
        if self.resp_ended:
            self._end_response()

    def _send_head_h2(self, head: ResponseHead, headers: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError  # see downstream_h2.H2Exchange

    def _response_mode(self, head: ResponseHead, headers: list[tuple[bytes, bytes]]) -> str:
        kind = head.body.kind
        if kind is BodyKind.NONE:
            return "none"
        if kind is BodyKind.LENGTH and not self.body_filters:
            return "raw"
        if self.session.request.version == b"1.0":
            _drop(headers, b"content-length")
            return "close"
        return "chunked"

    def on_upstream_body(self, data: bytes | memoryview) -> None:
        self.last_activity = self.loop.time()
        if self.resp_streaming:
            self._write_response_chunk(data)
            return
        self.resp_buffer.append(data)
        if size_of(self.resp_buffer) > BODY_BUFFER_LIMIT and self.upstream and self.upstream.transport:
            self.upstream.transport.pause_reading()

    def on_upstream_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.resp_trailers = trailers

    def _write_response_chunk(self, data: bytes | memoryview) -> None:
        if self.body_filters:
            data = self._filter_body(data, False)
            if not data:
                return
        self.session.bytes_sent += len(data)
        if self.resp_mode == "chunked":
            self.downstream.writelines(chunk(data))
        else:
            self.downstream.write(data)

    def _filter_body(self, piece: bytes | memoryview, end: bool) -> bytes:
        app, s, plan = self.app, self.session, self.plan
        data = piece if type(piece) is bytes else bytes(piece)  # a hook gets bytes (large pieces arrive as memoryview slices)
        try:
            if plan.upstream_response_body_filter:
                data = app.upstream_response_body_filter(s, data, end)
            if plan.response_body_filter:
                data = app.response_body_filter(s, data, end)
        except Exception as exc:
            self._hook_failed("response_body_filter", exc)
            return b""
        return data

    def on_upstream_end(self) -> None:
        upstream = self.upstream
        if isinstance(upstream, UpstreamH1):
            if upstream.parser.switched:
                return  # the end of a 101 head: the connection now carries the tunnel
            upstream.finish()
        elif upstream is not None:
            upstream.finish()
        self.last_activity = self.loop.time()
        self.resp_ended = True
        if self.resp_streaming:
            self._end_response()
        elif not self.head_future.done():  # ended before a final head (e.g. HEAD-less oddity)
            self.head_future.set_exception(ProxyError(ErrorKind.PROTOCOL_ERROR, ErrorSource.UPSTREAM, context="response ended without a head"))

    def _end_response(self) -> None:
        if (self.resp_trailers or self.body_filters) and not self._end_filters():
            return
        if self.resp_mode == "chunked":
            self.downstream.write(last_chunk(self.resp_trailers))
        if not self.done.done():
            self.done.set_result(None)

    def _end_filters(self) -> bool:
        """The response ended: the trailer filter, then the body filters' last bytes (sent
        with :meth:`_send_tail`). False when a hook failed (the response is abandoned)."""
        if self.resp_trailers and self.plan.response_trailer_filter:
            try:
                self.app.response_trailer_filter(self.session, self.resp_trailers)
            except Exception as exc:
                self._hook_failed("response_trailer_filter", exc)
                return False
        if self.body_filters:
            tail = self._filter_body(b"", True)
            if tail:
                self.session.bytes_sent += len(tail)
                self._send_tail(tail)
        return True

    def _send_tail(self, data: bytes | memoryview) -> None:
        """Body bytes the filters produced at the end, framed for an HTTP/1.1 client."""
        if self.resp_mode == "chunked":
            self.downstream.writelines(chunk(data))
        else:
            self.downstream.write(data)

    def on_upstream_error(self, exc: H1Error) -> None:
        self._upstream_failed(ProxyError(ErrorKind.PROTOCOL_ERROR, ErrorSource.UPSTREAM, context=f"{self.session.peer.name}: invalid response: {exc}"))

    def on_upstream_lost(self, exc: Exception | None) -> None:
        if self.tunnel:
            self.downstream.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        if self.resp_ended:
            return
        kind = ErrorKind.CONNECTION_RESET if exc is not None else ErrorKind.CONNECTION_CLOSED
        received = self.upstream.received if self.upstream is not None else 0
        context = f"{self.session.peer.name} closed the connection" + (" before responding" if not received else " mid-response")
        self._upstream_failed(ProxyError(kind, ErrorSource.UPSTREAM, context=context))

    def on_upstream_failed(self, error: ProxyError) -> None:
        """An HTTP/2 upstream stream failed (reset, refused, malformed, connection error)."""
        if not self.resp_ended:
            self._upstream_failed(error)

    def _upstream_failed(self, error: ProxyError) -> None:
        if self.body_waiter is not None and not self.body_waiter.done():
            self.body_waiter.set_exception(error)
        if self.upstream is not None:
            self.upstream.alive = False
        if not self.head_future.done():
            self.head_future.set_exception(error)
        elif not self.done.done():
            self.done.set_exception(error)

    # read timeout (checked by the service's sweep) ----------------------------------------------
    def _arm_read_timer(self) -> None:
        timeout = self.session.read_timeout
        if timeout and self.read_timeout is None:
            self.last_activity = self.loop.time()
            self.read_timeout = timeout
            if timeout < self.service.read_timeout_floor:
                self.service.tighten(timeout)

    def check_read_timeout(self, now: float) -> None:
        """The sweep's check: the upstream sent nothing for ``read_timeout`` seconds. Time a
        slow client keeps us from reading (downstream write paused) does not count."""
        timeout = self.read_timeout
        if self.done.done() or self.tunnel:
            self.read_timeout = None
        elif self.downstream.write_paused:
            self.last_activity = now
        elif now - self.last_activity >= timeout:  # type: ignore[operator]
            self.read_timeout = None
            self._upstream_failed(ProxyError(ErrorKind.READ_TIMEOUT, ErrorSource.UPSTREAM, context=f"{self.session.peer.name} sent nothing for {timeout:g}s"))

    def _cancel_timer(self) -> None:
        self.read_timeout = None

    # tunnel (after 101 Switching Protocols or CONNECT) -----------------------------------------
    async def _open_tunnel(self, upstream_sock: socket.socket | None) -> None:
        """Both connections now carry raw bytes. When both are plain sockets they move to the
        L4 splice pump (the kernel copies, Python only sees events); otherwise (TLS) bytes go
        through transport callbacks. ``upstream_sock``: a fresh CONNECT connection, else the
        upstream is the HTTP connection that answered 101."""
        self.tunnel = True
        down = self.downstream
        held = down.start_tunnel()  # client bytes that followed the request head
        early = b"".join(self.resp_buffer)  # upstream bytes that followed the 101 head
        self.resp_buffer.clear()
        self.session.body_bytes_received += len(held)  # the tunnel's bytes, as the pump counts them
        self.session.bytes_sent += len(early)
        if early:
            down.write(early)
        up_transport = self.upstream.transport if self.upstream is not None else None
        if can_detach(down.transport) and (upstream_sock is not None or can_detach(up_transport)):
            await self._splice_tunnel(upstream_sock, held)
            return
        if upstream_sock is not None:
            try:
                _, self.upstream = await self.loop.create_connection(lambda: UpstreamH1(None, self.session.peer.name), sock=upstream_sock)
            except OSError as exc:
                upstream_sock.close()
                raise ProxyError(ErrorKind.CONNECT_ERROR, ErrorSource.UPSTREAM, context=str(exc)) from exc
            self.upstream.listener = self  # type: ignore[union-attr]
        if held:
            self.upstream.write(held)  # type: ignore[union-attr]
        down.resume_tunnel()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()
        self._arm_tunnel_idle()

    async def _splice_tunnel(self, upstream_sock: socket.socket | None, held: bytes) -> None:
        down, svc = self.downstream, self.service
        deadline = self.loop.time() + TUNNEL_FLUSH_TIMEOUT
        pause(down.transport)  # type: ignore[arg-type]
        if upstream_sock is None:
            upstream, self.upstream = self.upstream, None
            upstream.listener = None  # type: ignore[union-attr]
            pause(upstream.transport)  # type: ignore[union-attr, arg-type]
            if held:
                upstream.write(held)  # type: ignore[union-attr]
                held = b""
            upstream_sock = await detach(upstream.transport, deadline)  # type: ignore[union-attr, arg-type]
        client_sock = await down.detach_socket(deadline)
        if client_sock is None or upstream_sock is None:
            for sock in (client_sock, upstream_sock):
                if sock is not None:
                    sock.close()
            down.abort()
            raise ProxyError(ErrorKind.CONNECTION_CLOSED, ErrorSource.INTERNAL, context="a connection closed while the tunnel opened")
        if held:
            await self.loop.sock_sendall(upstream_sock, held)
        self.pump = SplicePump(self.loop, client_sock, upstream_sock, svc.pipes, idle_timeout=svc.tunnel_idle_timeout)
        self.pump.start().add_done_callback(self._on_pump_done)

    def _on_pump_done(self, future: asyncio.Future[PumpStats]) -> None:
        stats = future.result()
        self.session.bytes_sent += stats.bytes_down
        self.session.body_bytes_received += stats.bytes_up
        if not self.done.done():
            self.done.set_result(None)

    def _arm_tunnel_idle(self) -> None:
        """Callback tunnel: close it after ``tunnel_idle_timeout`` without a byte either way
        (the splice pump keeps its own timer). One timer, re-armed only when it fires."""
        timeout = self.service.tunnel_idle_timeout
        if timeout and not self.done.done():
            self.last_activity = self.loop.time()
            self._tunnel_idle = self.loop.call_at(self.last_activity + timeout, self._on_tunnel_idle)
            self.done.add_done_callback(self._stop_tunnel_idle)

    def _on_tunnel_idle(self) -> None:
        deadline = self.last_activity + self.service.tunnel_idle_timeout  # type: ignore[operator]
        if self.loop.time() < deadline:
            self._tunnel_idle = self.loop.call_at(deadline, self._on_tunnel_idle)
            return
        self._tunnel_idle = None
        log.info("%s: %s: tunnel idle for %gs: closed", self.service.name, self.app.request_summary(self.session), self.service.tunnel_idle_timeout)
        self._close_tunnel()

    def _stop_tunnel_idle(self, _: object = None) -> None:
        if self._tunnel_idle is not None:
            self._tunnel_idle.cancel()
            self._tunnel_idle = None

    def on_upstream_tunnel_data(self, data: bytes | memoryview) -> None:
        self.session.bytes_sent += len(data)
        self.last_activity = self.loop.time()
        self.downstream.write(data)

    # uvloop can abort the process on write_eof() to a transport that already received EOF
    # (DESIGN.md): once both directions saw EOF, close instead. A TLS end cannot half-close
    # (no write_eof, and it closes itself on EOF): an EOF it cannot pass on, or receives, ends
    # the whole tunnel once the pending bytes left (nginx does the same for upgraded connections).
    def on_upstream_tunnel_eof(self) -> None:
        self._tunnel_eofs.add("upstream")
        transport = self.downstream.transport
        if "client" in self._tunnel_eofs or transport is None or not transport.can_write_eof():
            self._close_tunnel()
        else:
            self.downstream.write_eof()

    def on_downstream_tunnel_data(self, data: bytes | memoryview) -> None:
        if self.upstream is not None:
            self.session.body_bytes_received += len(data)
            self.last_activity = self.loop.time()
            self.upstream.write(data)

    def on_downstream_tunnel_eof(self) -> None:
        self._tunnel_eofs.add("client")
        upstream = self.upstream
        transport = upstream.transport if upstream is not None else None
        own = self.downstream.transport
        if "upstream" in self._tunnel_eofs or transport is None or transport.is_closing() or not transport.can_write_eof() or own is None or not own.can_write_eof():
            self._close_tunnel()
            return
        transport.write_eof()

    def _close_tunnel(self) -> None:
        """End a callback tunnel: both sides close once their pending bytes left."""
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.listener = None  # the tunnel is over: its late callbacks must not reach here
            upstream.close()
        self.downstream.close()
        if not self.done.done():
            self.done.set_result(None)

    def on_downstream_lost(self) -> None:
        """The client went away: stop the upstream side too."""
        self._abort_upstream()
        error = ProxyError(ErrorKind.CONNECTION_CLOSED, ErrorSource.DOWNSTREAM, context="client closed the connection")
        if self.body_waiter is not None and not self.body_waiter.done():
            self.body_waiter.set_exception(error)  # read_body() raises it; no response will be awaited
            return
        if not self.head_future.done():
            self.head_future.set_exception(error)
        elif not self.done.done():
            if self.tunnel:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)

    def on_downstream_write_paused(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def on_downstream_write_resumed(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None and (self.resp_streaming or self.tunnel):
            self.upstream.transport.resume_reading()

    # ending ----------------------------------------------------------------------------------
    async def _fail(self, error: ProxyError, status: int | None = None) -> None:
        s, svc = self.session, self.service
        if not self.app.suppress_error_log(s, error):
            # a client that went away is its own business (nginx logs its 499 at info)
            level = logging.INFO if error.source is ErrorSource.DOWNSTREAM and error.kind in _CLIENT_GONE else logging.WARNING
            log.log(level, "%s: %s: %s", svc.name, self.app.request_summary(s), error)
        if s.response_sent or self.downstream.closing:
            self.downstream.abort()  # a truncated response must not look complete
            return
        if status is None:
            if self.plan.fail_to_proxy:
                status = await self.app.fail_to_proxy(s, error) if self.plan.await_fail_to_proxy else self.app.fail_to_proxy(s, error)  # type: ignore[misc,assignment]
            else:
                status = _default_status(error)
        if status:
            self.downstream.keep_alive = False
            s.respond_error(status, error.context if error.source is ErrorSource.UPSTREAM or error.kind is ErrorKind.BODY_TOO_LARGE else "")
        else:
            self.downstream.abort()

    def _abort_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.listener = None
            upstream.abort()

    def _release_upstream(self, ok: bool) -> None:
        upstream, self.upstream = self.upstream, None
        if not isinstance(upstream, UpstreamH1):  # an HTTP/2 stream is used once
            if upstream is not None:
                upstream.listener = None
                upstream.close()
            return
        upstream.listener = None
        if ok and not self.tunnel and self.resp_ended and self.request_done and upstream.is_reusable():
            if upstream.transport is not None:
                upstream.transport.resume_reading()
            pool = self.service.pool
            if pool.put(upstream):
                upstream.pool = pool
            return
        upstream.close()


def size_of(pieces: Iterable[bytes | memoryview]) -> int:
    """Bytes in ``pieces`` (compiled, ``sum(map(len, ...))`` looks up three builtins by name)."""
    total = 0
    for piece in pieces:
        total += len(piece)
    return total


def _default_status(error: ProxyError) -> int:
    from .hooks import error_status

    return error_status(error)


def _drop(headers: list[tuple[bytes, bytes]], name: bytes) -> None:
    headers[:] = [pair for pair in headers if pair[0] != name]


def add_forwarded(headers: list[tuple[bytes, bytes]], s: Session, style: str) -> None:
    """Tell the upstream who the client is: ``x-forwarded`` (X-Forwarded-For/-Proto/-Host),
    ``forwarded`` (RFC 7239) or ``both``. Earlier hops' values are kept, ours appended."""
    ip = s.client_ip.encode()
    proto = b"https" if s.tls else b"http"
    host = s.header(b"host")
    if style == "x-forwarded" and not any(name in _FORWARDED_NAMES for name, _ in headers):
        headers.append((b"x-forwarded-for", ip))  # the usual case: the first proxy on the way
        headers.append((b"x-forwarded-proto", proto))
        if host is not None:
            headers.append((b"x-forwarded-host", host))
        return
    if style != "forwarded":
        prior = [v for k, v in headers if k == b"x-forwarded-for"]
        if prior:
            _drop(headers, b"x-forwarded-for")
        headers.append((b"x-forwarded-for", b", ".join(prior + [ip]) if prior else ip))
        if not any(k == b"x-forwarded-proto" for k, _ in headers):
            headers.append((b"x-forwarded-proto", proto))
        if host is not None and not any(k == b"x-forwarded-host" for k, _ in headers):
            headers.append((b"x-forwarded-host", host))
    if style != "x-forwarded":
        node = (b'"[%s]"' % ip) if b":" in ip else (ip or b"unknown")
        element = b"for=%s;proto=%s" % (node, proto)
        if host is not None and _FORWARDED_TOKEN.fullmatch(host):
            element += b";host=" + host
        elif host is not None:
            element += b';host="' + host.replace(b"\\", b"").replace(b'"', b"") + b'"'
        prior = [v for k, v in headers if k == b"forwarded"]
        if prior:
            _drop(headers, b"forwarded")
        headers.append((b"forwarded", b", ".join(prior + [element])))


_FORWARDED_NAMES: Final = frozenset((b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"))
_FORWARDED_TOKEN: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+(:[0-9]+)?")


def _proxy_header(version: int, s: Session) -> bytes:
    src, dst = s.client_addr, s.local_addr
    if not (isinstance(src, tuple) and isinstance(dst, tuple)):
        src = dst = None
    return proxy_protocol.build(version, src, dst)

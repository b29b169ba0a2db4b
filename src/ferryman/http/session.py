"""Per-request state handed to every ``ProxyHttp`` hook."""

from __future__ import annotations

from typing import Any, Final

from ..errors import ProxyError
from ..protocol.h1.events import RequestHead
from ..protocol.h1.serializer import response_head
from ..upstream.retry import IDEMPOTENT

INF: Final = float("inf")


class Digest:
    """Timings and connection facts of one request (seconds, monotonic)."""

    __slots__ = ("start", "upstream_connect", "upstream_header", "end", "reused", "upstream_addr")

    def __init__(self, start: float) -> None:
        self.start = start  # loop time: the same clock as the other stamps
        self.upstream_connect: float | None = None  # connect (or pool hit) done
        self.upstream_header: float | None = None  # response head received
        self.end: float | None = None
        self.reused = False
        self.upstream_addr = ""


class Session:
    """One HTTP request/response exchange on a downstream connection.

    ``request`` is the parsed head (header names lowercased); hooks may edit
    ``request.headers``. ``respond()`` answers directly (from ``request_filter``).
    """

    __slots__ = (
        "request", "client_addr", "local_addr", "tls", "ctx", "digest", "peer", "tries",
        "last_error", "response_status", "response_headers", "response_sent", "bytes_sent",
        "body_bytes_received", "upstream_method", "upstream_target", "route", "vars", "filter_body", "read_timeout",
        "retry_statuses", "retry_until", "max_body", "_downstream",
    )

    def __init__(self, request: RequestHead, client_addr: Any, local_addr: Any, downstream: Any, *, tls: bool = False) -> None:
        self.request = request
        self.client_addr = client_addr
        self.local_addr = local_addr
        self.tls = tls
        self.ctx: Any = None
        self.digest = Digest(downstream.loop.time())
        self.peer: Any = None
        self.tries = 0
        self.last_error: ProxyError | None = None
        self.response_status = 0
        self.response_headers: list[tuple[bytes, bytes]] | None = None
        self.response_sent = False  # a response head went downstream
        self.bytes_sent = 0  # response body bytes sent downstream
        self.body_bytes_received = 0  # request body bytes read from downstream
        self.upstream_method = request.method
        self.upstream_target = request.target
        self.route = ""  # the name of the route that matched (product gateway)
        self.vars: dict[str, Any] = {}  # per-request values of filters and apps (e.g. request_id)
        self.filter_body = downstream.service.has_response_body_filters  # run the body filters
        self.read_timeout = downstream.service.upstream_read_timeout  # between upstream reads
        self.retry_statuses: frozenset[int] = frozenset()  # answers that go to the next try instead (bodyless requests)
        self.retry_until = INF  # loop time after which no new try starts
        self.max_body: int | None = None  # request body limit below the listener's (413), e.g. a route's
        self._downstream = downstream

    # request facts -----------------------------------------------------------------------
    @property
    def ssl_object(self) -> Any:
        """The client's TLS connection (``ferryman.net.tls.peer_identity(s.ssl_object)``
        for mTLS; ``.version()``, ``.cipher()``, ``.selected_alpn_protocol()``), or None."""
        transport = self._downstream.transport if self.tls else None
        return transport.get_extra_info("ssl_object") if transport is not None else None

    @property
    def http_version(self) -> bytes:
        """The client's HTTP version: ``b"1.1"``, ``b"1.0"`` or ``b"2.0"`` (HTTP/2)."""
        return self.request.version

    @property
    def client_ip(self) -> str:
        addr = self.client_addr
        return addr[0] if isinstance(addr, tuple) else ""

    def header(self, name: bytes) -> bytes | None:
        """The first value of request header ``name`` (lowercase bytes), or None."""
        for key, value in self.request.headers:
            if key == name:
                return value
        return None

    @property
    def method_str(self) -> str:
        return self.request.method.decode("latin-1")

    @property
    def target_str(self) -> str:
        return self.request.target.decode("latin-1")

    @property
    def host_str(self) -> str:
        return (self.header(b"host") or b"").decode("latin-1")

    @property
    def retry_safe(self) -> bool:
        """Idempotent and without a request body: may be sent again on another connection."""
        return self.request.method in IDEMPOTENT and self.body_bytes_received == 0

    async def read_body(self, limit: int = 1 << 20) -> bytes:
        """The whole request body (at most ``limit`` bytes, else 413), for an async
        ``request_filter`` that answers from it (an API, a form). Call it before anything
        is proxied; if the request is then proxied, the body still goes upstream."""
        return await self._downstream.exchange.read_body(limit)

    # answering -----------------------------------------------------------------------------
    def respond(self, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """Send a complete response downstream (e.g. from ``request_filter``)."""
        out = list(headers or [])
        if not any(k == b"content-type" for k, _ in out) and body:
            out.append((b"content-type", b"text/plain; charset=utf-8"))
        if status not in (204, 304):  # RFC 9110: no Content-Length on 204; 304 keeps the resource's
            out.append((b"content-length", b"%d" % len(body)))
        self.response_status = status
        self.response_headers = out
        self._downstream.send_response(self, response_head(status, b"", out), b"" if self.request.method == b"HEAD" else body)

    def respond_file(self, status: int, headers: list[tuple[bytes, bytes]] | None, fd: int, offset: int, count: int) -> None:
        """Send a response whose body is ``count`` bytes of the open file ``fd`` from
        ``offset``, by sendfile(2) where the connection allows it. Takes ownership of ``fd``
        (closed once sent). For ``request_filter``: return True after calling it."""
        out = list(headers or [])
        out.append((b"content-length", b"%d" % count))
        self.response_status = status
        self.response_headers = out
        self._downstream.send_file(self, response_head(status, b"", out), fd, offset, 0 if self.request.method == b"HEAD" else count)

    def respond_error(self, status: int, reason: str = "") -> None:
        """Send a short error page: ``502 Bad Gateway`` plus an optional reason line."""
        from ..protocol.h1.serializer import REASONS

        text = f"{status} {REASONS.get(status, b'').decode()}\n"
        if reason:
            text += reason + "\n"
        self.respond(status, text.encode(), [(b"cache-control", b"no-store")])

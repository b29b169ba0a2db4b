"""``ProxyHttp``: the programmable HTTP proxy, with Pingora's request lifecycle.

Subclass it, implement :meth:`upstream_peer` (the only required hook) and override any
other hook you need; serve it with :class:`ferryman.http.service.HttpProxyService`. A hook
nobody overrides is never called (decided once, when the service is built).

Order for every request::

    new_ctx → early_request_filter → request_filter → request_body_filter (per chunk)
    → proxy_upstream_filter → upstream_peer → [pool hit or connect → fail_to_connect]
    → connected_to_upstream → upstream_request_filter → (request sent)
    → upstream_response_filter → response_filter → upstream_response_body_filter and
    response_body_filter (per chunk) → response_trailer_filter → logging

The hooks shown ``async`` below may be written as ``async def`` (awaited) or as plain
``def`` (called inline, with no coroutine per request: cheaper when the hook never waits).
The per-chunk and error-decision hooks are always plain functions.

Errors after a connection is up go through ``error_while_proxy`` (which may retry);
any error that ends the request goes through ``fail_to_proxy``, which decides the status
sent downstream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ErrorKind, ProxyError

if TYPE_CHECKING:
    from ..net.connect import Peer
    from .session import Session


class ProxyHttp:
    """Base class of HTTP proxy apps. Every default is safe and costs nothing."""

    #: upper bound on upstream attempts per request (connect failures, retryable errors)
    max_tries: int = 3

    def new_ctx(self) -> Any:
        """Called once per request; returns ``session.ctx``. Default: None."""
        return None

    async def early_request_filter(self, session: Session) -> None:
        """Called as soon as the request head is parsed, before anything else. Default: nothing."""

    async def request_filter(self, session: Session) -> bool:
        """Called to inspect or answer the request. Return True when a response has already
        been sent (``session.respond(...)``): the request is then not proxied. Default: False."""
        return False

    def request_body_filter(self, session: Session, chunk: bytes, end: bool) -> bytes:
        """Called for each request body chunk as it arrives (``end`` on the last call, maybe
        with an empty chunk); returns the bytes to send upstream. When overridden, a request
        with a body goes upstream chunked (its length may change). Default: unchanged (and,
        unoverridden, the body streams raw).

        The per-chunk hooks are plain functions: they run inside transport callbacks, with no
        coroutine per chunk."""
        return chunk

    async def proxy_upstream_filter(self, session: Session) -> bool:
        """Called before choosing a peer; return False to answer 502 without proxying.
        Default: True."""
        return True

    async def upstream_peer(self, session: Session) -> Peer:
        """Required. Returns the :class:`~ferryman.net.connect.Peer` for this attempt
        (``session.tries`` counts failed attempts; ``session.last_error`` holds the last)."""
        raise NotImplementedError("ProxyHttp subclasses must implement upstream_peer()")

    def fail_to_connect(self, session: Session, peer: Peer, error: ProxyError) -> ProxyError:
        """Called when a connect to ``peer`` failed; return the error with ``retry`` decided.
        Default: the error's own decision (timeouts and refusals retry)."""
        return error

    async def connected_to_upstream(self, session: Session, peer: Peer, reused: bool) -> None:
        """Called once a connection (new, or from the pool when ``reused``) is ready. Default: nothing."""

    async def upstream_request_filter(self, session: Session, headers: list[tuple[bytes, bytes]]) -> None:
        """Called to edit the request head sent upstream (``headers`` in place;
        ``session.upstream_method`` / ``session.upstream_target`` may be changed). Default: nothing."""

    def upstream_response_filter(self, session: Session, headers: list[tuple[bytes, bytes]]) -> None:
        """Called with the upstream response head, before ``response_filter`` (for changes
        that caching would store). Default: nothing."""

    async def response_filter(self, session: Session, headers: list[tuple[bytes, bytes]]) -> None:
        """Called to edit the response head sent downstream (``session.response_status`` may
        be changed too). Default: nothing."""

    def upstream_response_body_filter(self, session: Session, chunk: bytes, end: bool) -> bytes:
        """Called for each response body chunk as it comes from upstream. Default: unchanged."""
        return chunk

    def response_body_filter(self, session: Session, chunk: bytes, end: bool) -> bytes:
        """Called for each response body chunk going downstream. Default: unchanged."""
        return chunk

    def response_trailer_filter(self, session: Session, trailers: list[tuple[bytes, bytes]]) -> None:
        """Called with the trailers of a chunked response (edit in place) before they go
        downstream; not called for responses without trailers. Default: nothing."""

    def error_while_proxy(self, session: Session, peer: Peer, error: ProxyError, reused: bool) -> ProxyError:
        """Called when an error happens on an established upstream connection. Default: retry
        only when the connection was reused from the pool and nothing was received yet (the
        upstream probably closed an idle connection) and the method is idempotent."""
        if reused and error.kind in (ErrorKind.CONNECTION_CLOSED, ErrorKind.CONNECTION_RESET) and session.retry_safe:
            error.retry = True
        return error

    async def fail_to_proxy(self, session: Session, error: ProxyError) -> int:
        """Called when the request failed; returns the status to answer (0: close without
        answering). Default: 502 for upstream errors, 504 for timeouts, 400 for bad requests."""
        return error_status(error)

    async def logging(self, session: Session, error: ProxyError | None) -> None:
        """Called last for every request. Default: nothing."""

    def request_summary(self, session: Session) -> str:
        """A one-line description of the request for error logs."""
        return f"{session.method_str} {session.target_str} host={session.host_str}"

    def suppress_error_log(self, session: Session, error: ProxyError) -> bool:
        """Return True to keep an error out of the error log. Default: False."""
        return False


_STATUS_BY_KIND = {
    ErrorKind.CONNECT_TIMEOUT: 504,
    ErrorKind.READ_TIMEOUT: 504,
    ErrorKind.WRITE_TIMEOUT: 504,
    ErrorKind.NO_BACKEND: 503,
    ErrorKind.PROTOCOL_ERROR: 502,
    ErrorKind.ACCESS_DENIED: 403,
    ErrorKind.INTERNAL: 500,
}


_DOWNSTREAM_STATUS = {
    ErrorKind.PROTOCOL_ERROR: 400,
    ErrorKind.READ_TIMEOUT: 408,  # the client stopped sending its request body (nginx too)
    ErrorKind.BODY_TOO_LARGE: 413,
}


def error_status(error: ProxyError) -> int:
    """The status nginx/Pingora would send for an error."""
    if error.source.value == "downstream":
        return _DOWNSTREAM_STATUS.get(error.kind, 0)
    return _STATUS_BY_KIND.get(error.kind, 502)


def overrides(app: object, name: str) -> bool:
    return getattr(type(app), name) is not getattr(ProxyHttp, name)

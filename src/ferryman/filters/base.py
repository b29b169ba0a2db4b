"""``Filter``: one named, typed-config step that a route runs in the phases it implements.

A filter subclass sets ``kind`` (the ``kind = "..."`` of its TOML table) and ``Config`` (a
:class:`ferryman.config.model.Strict` pydantic model: unknown keys are errors), and overrides
any of the phase methods below. Routes compile their filters once per config load: a phase
no filter of a route implements costs that route nothing.

Phase methods are plain functions (they run on the event loop: never block it). They see the
same :class:`~ferryman.http.session.Session` the ``ProxyHttp`` hooks see; per-request state
goes in ``session.vars`` (a dict), keyed by the filter's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ..config.model import Strict

if TYPE_CHECKING:
    from ..http.session import Session

Headers = list[tuple[bytes, bytes]]

#: the phases a filter may implement, in the order they run for a request
PHASES = ("request_filter", "upstream_request_filter", "response_filter", "response_body_filter")


class Filter:
    """Base class of built-in and user filters."""

    kind: ClassVar[str] = ""

    class Config(Strict):
        """No options."""

    def __init__(self, name: str, config: Any) -> None:
        self.name = name
        self.config = config

    def request_filter(self, session: Session) -> bool:
        """Called once the route is matched, before the upstream is chosen. Answer the request
        with ``session.respond(...)`` and return True to stop there. Default: False."""
        return False

    def upstream_request_filter(self, session: Session, headers: Headers) -> None:
        """Called to edit the request head sent upstream (``headers`` in place;
        ``session.upstream_target`` may change). Default: nothing."""

    def response_filter(self, session: Session, headers: Headers) -> None:
        """Called to edit the response head sent downstream (``session.response_status`` may
        change). A filter that needs the response body sets ``session.filter_body = True``
        here; otherwise the body passes through untouched. Default: nothing."""

    def response_body_filter(self, session: Session, chunk: bytes, end: bool) -> bytes:
        """Called per response body chunk (``end`` on the last call, maybe with an empty
        chunk) when a ``response_filter`` asked for it; returns the bytes to send."""
        return chunk

    def bind_metrics(self, registry: Any) -> None:
        """Called once after construction with the process's metrics registry
        (:class:`ferryman.observability.metrics.Registry`): keep the cells you count in.
        Default: nothing."""

    def close(self) -> None:
        """Called when a reload retires this filter instance. Default: nothing."""


def implemented(filter_: Filter, phase: str) -> bool:
    """True when ``filter_`` overrides ``phase`` (decided once, at build time)."""
    return getattr(type(filter_), phase) is not getattr(Filter, phase)

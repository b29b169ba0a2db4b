"""``ServicePlan``: what every request reads from its service, as fields of a compiled class.

Which hooks the app overrides and which of those are coroutines is decided once, when
the service is built. Read per hook and request from the (interpreted) service's dicts,
each check was an attribute lookup and a dict lookup, ~300 instructions, over ten times a
request; from a compiled class it is a field read.
"""

from __future__ import annotations


class ServicePlan:
    """A service's fixed per-request decisions: hook ``x`` runs when ``x`` is True and is
    awaited when ``await_x`` is True (see :class:`~ferryman.http.hooks.ProxyHttp`)."""

    def __init__(self, has: dict[str, bool], awaits: dict[str, bool], *, forwarded: str, allow_connect: bool) -> None:
        self.new_ctx = has["new_ctx"]
        self.early_request_filter = has["early_request_filter"]
        self.request_filter = has["request_filter"]
        self.request_body_filter = has["request_body_filter"]
        self.proxy_upstream_filter = has["proxy_upstream_filter"]
        self.fail_to_connect = has["fail_to_connect"]
        self.connected_to_upstream = has["connected_to_upstream"]
        self.upstream_request_filter = has["upstream_request_filter"]
        self.upstream_response_filter = has["upstream_response_filter"]
        self.response_filter = has["response_filter"]
        self.upstream_response_body_filter = has["upstream_response_body_filter"]
        self.response_body_filter = has["response_body_filter"]
        self.response_trailer_filter = has["response_trailer_filter"]
        self.error_while_proxy = has["error_while_proxy"]
        self.fail_to_proxy = has["fail_to_proxy"]
        self.logging = has["logging"]
        self.response_body_filters = self.upstream_response_body_filter or self.response_body_filter
        self.await_early_request_filter = awaits["early_request_filter"]
        self.await_request_filter = awaits["request_filter"]
        self.await_proxy_upstream_filter = awaits["proxy_upstream_filter"]
        self.await_upstream_peer = awaits["upstream_peer"]
        self.await_connected_to_upstream = awaits["connected_to_upstream"]
        self.await_upstream_request_filter = awaits["upstream_request_filter"]
        self.await_response_filter = awaits["response_filter"]
        self.await_fail_to_proxy = awaits["fail_to_proxy"]
        self.await_logging = awaits["logging"]
        self.forwarded = forwarded  # "", "x-forwarded", "forwarded" or "both"
        self.allow_connect = allow_connect

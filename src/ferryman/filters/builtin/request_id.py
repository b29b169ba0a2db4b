"""``request_id``: give each request an id, send it upstream and back to the client.

```toml
[filters.rid]
kind = "request_id"
header = "x-request-id"     # default
trust_incoming = false      # true: keep a sane id the client (or a front proxy) sent
```

The id is chosen in ``request_filter`` (so later filters, apps and logs see
``session.vars["request_id"]``, a str): the client's value when ``trust_incoming`` is true
and it is 1-200 visible ASCII characters, else 32 random hex digits. It replaces any
``header`` field of the request sent upstream and of the response sent downstream.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ...config.model import Strict
from ..base import Filter, Headers
from ..registry import register
from .headers import EditableName

if TYPE_CHECKING:
    from ...http.session import Session

MAX_INCOMING = 200
_VISIBLE = bytes(range(0x21, 0x7F))


def sane_id(value: bytes) -> bool:
    """1-200 visible ASCII characters (no spaces, controls or non-ASCII bytes)."""
    return 0 < len(value) <= MAX_INCOMING and not value.translate(None, _VISIBLE)


def new_id() -> str:
    """32 random hex digits (128 bits)."""
    return os.urandom(16).hex()


@register
class RequestIdFilter(Filter):
    """Pick the id in ``request_filter``; set it on the upstream request and the response."""

    kind = "request_id"

    class Config(Strict):
        header: EditableName = "x-request-id"
        trust_incoming: bool = False

    def __init__(self, name: str, config: RequestIdFilter.Config) -> None:
        super().__init__(name, config)
        self.header = config.header.encode()
        self.trust_incoming = config.trust_incoming

    def request_id(self, session: Session) -> str:
        """The request's id, chosen on first use."""
        rid = session.vars.get("request_id")
        if rid is not None:
            return str(rid)
        incoming = session.header(self.header) if self.trust_incoming else None
        rid = incoming.decode("ascii") if incoming is not None and sane_id(incoming) else new_id()
        session.vars["request_id"] = rid
        return rid

    def request_filter(self, session: Session) -> bool:
        self.request_id(session)
        return False

    def upstream_request_filter(self, session: Session, headers: Headers) -> None:
        _replace(headers, self.header, self.request_id(session).encode("ascii"))

    def response_filter(self, session: Session, headers: Headers) -> None:
        _replace(headers, self.header, self.request_id(session).encode("ascii"))


def _replace(headers: Headers, name: bytes, value: bytes) -> None:
    for pair in headers:
        if pair[0] == name:
            headers[:] = [h for h in headers if h[0] != name]
            break
    headers.append((name, value))

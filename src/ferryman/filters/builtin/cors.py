"""``cors``: Cross-Origin Resource Sharing answered by the proxy.

```toml
[filters.cors]
kind = "cors"
allow_origins = ["https://app.example", "http://localhost:3000"]   # or ["*"]
allow_methods = ["GET", "POST"]          # default GET HEAD POST PUT PATCH DELETE; ["*"] echoes
allow_headers = ["content-type"]         # default none; ["*"] echoes the requested ones
expose_headers = ["x-request-id"]       # ["*"]: all (not with credentials)
allow_credentials = true
max_age = "10m"
```

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered
with 204 in ``request_filter`` and never reaches the upstream; from an origin not in the
list it gets no ``Access-Control-Allow-*`` fields (the browser then refuses). Other
requests with an allowed ``Origin`` get ``Access-Control-Allow-Origin`` (``*`` or the
origin), ``-Allow-Credentials`` and ``-Expose-Headers`` in ``response_filter``. The
upstream's own ``Access-Control-*`` fields are dropped from responses to requests with an
``Origin`` (allowed or not): this filter owns CORS for the route. Unless origins are ``*``, responses carry ``Vary: Origin`` (they differ by origin).

Origins are ``scheme://host[:port]`` compared case-insensitively; ``*`` must stand alone
and cannot be combined with ``allow_credentials`` (browsers refuse that pair).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from ...config.model import Strict
from ...config.types import Duration
from ..base import Filter, Headers
from ..registry import register
from .headers import check_header_name

if TYPE_CHECKING:
    from ...http.session import Session

_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#@\s]+")
DEFAULT_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def _check_origin(value: str) -> str:
    if value == "*":
        return value
    low = value.lower()
    if low.endswith("/") and _ORIGIN.fullmatch(low[:-1]):
        raise ValueError(f"origin {value!r} has a path; drop the trailing \"/\"")
    if not _ORIGIN.fullmatch(low):
        raise ValueError(f"{value!r} is not an origin (scheme://host[:port], or \"*\")")
    return low


def _check_method(value: str) -> str:
    if value == "*":
        return value
    try:
        check_header_name(value)  # a method is a token too
    except ValueError:
        raise ValueError(f"{value!r} is not an HTTP method") from None
    return value.upper()


def _check_listed_name(value: str) -> str:
    return value if value == "*" else check_header_name(value)


Origin = Annotated[str, AfterValidator(_check_origin)]
Method = Annotated[str, AfterValidator(_check_method)]
ListedName = Annotated[str, AfterValidator(_check_listed_name)]


def _alone(values: list[str]) -> list[str]:
    if "*" in values and len(values) > 1:
        raise ValueError("\"*\" must stand alone")
    return values


@register
class CorsFilter(Filter):
    """Answer preflights in ``request_filter``; add CORS fields in ``response_filter``."""

    kind = "cors"

    class Config(Strict):
        allow_origins: list[Origin] = Field(min_length=1)
        allow_methods: list[Method] = Field(default_factory=lambda: list(DEFAULT_METHODS), min_length=1)
        allow_headers: list[ListedName] = []
        expose_headers: list[ListedName] = []
        allow_credentials: bool = False
        max_age: Duration | None = None

        _star_alone = field_validator("allow_origins", "allow_methods", "allow_headers", "expose_headers")(_alone)

        @field_validator("allow_credentials")
        @classmethod
        def _listed(cls, credentials: bool, info: ValidationInfo) -> bool:
            if credentials and info.data.get("allow_origins") == ["*"]:
                raise ValueError("true needs allow_origins listed: browsers refuse credentials with \"*\"")
            if credentials and info.data.get("expose_headers") == ["*"]:
                raise ValueError("true makes browsers read expose_headers = [\"*\"] as a header named \"*\"; list the headers")
            return credentials

    def __init__(self, name: str, config: CorsFilter.Config) -> None:
        super().__init__(name, config)
        self.any_origin = config.allow_origins == ["*"]
        self.origins = frozenset(o.encode() for o in config.allow_origins)
        self.echo_method = config.allow_methods == ["*"]
        self.echo_headers = config.allow_headers == ["*"]
        common: list[tuple[bytes, bytes]] = []
        if config.allow_credentials:
            common.append((b"access-control-allow-credentials", b"true"))
        preflight = list(common)
        vary = [] if self.any_origin else [b"Origin"]
        if self.echo_method:
            vary.append(b"Access-Control-Request-Method")
        else:
            preflight.append((b"access-control-allow-methods", ", ".join(config.allow_methods).encode()))
        if self.echo_headers:
            vary.append(b"Access-Control-Request-Headers")
        elif config.allow_headers:
            preflight.append((b"access-control-allow-headers", ", ".join(config.allow_headers).encode()))
        if config.max_age is not None:
            preflight.append((b"access-control-max-age", b"%d" % int(config.max_age)))
        self.preflight_headers = preflight
        self.preflight_vary = [(b"vary", b", ".join(vary))] if vary else []
        if config.expose_headers:
            common.append((b"access-control-expose-headers", ", ".join(config.expose_headers).encode()))
        self.response_headers = common
        self.vary_origin = [] if self.any_origin else [(b"vary", b"Origin")]

    def _allow_origin(self, origin: bytes) -> bytes | None:
        """The ``Access-Control-Allow-Origin`` value for ``origin``, or None if refused."""
        if self.any_origin:
            return b"*"
        return origin if origin.lower() in self.origins else None

    def request_filter(self, session: Session) -> bool:
        if session.request.method != b"OPTIONS":
            return False
        origin = session.header(b"origin")
        method = session.header(b"access-control-request-method")
        if origin is None or method is None:
            return False  # a plain OPTIONS request: the upstream's business
        out = list(self.preflight_vary)
        allowed = self._allow_origin(origin)
        if allowed is not None:
            out.append((b"access-control-allow-origin", allowed))
            out += self.preflight_headers
            if self.echo_method:
                out.append((b"access-control-allow-methods", method))
            if self.echo_headers:
                requested = session.header(b"access-control-request-headers")
                if requested:
                    out.append((b"access-control-allow-headers", requested))
        session.respond(204, b"", out)
        return True

    def response_filter(self, session: Session, headers: Headers) -> None:
        origin = session.header(b"origin")
        if origin is not None:
            for pair in headers:
                if pair[0].startswith(b"access-control-"):
                    headers[:] = [h for h in headers if not h[0].startswith(b"access-control-")]
                    break
            allowed = self._allow_origin(origin)
            if allowed is not None:
                headers.append((b"access-control-allow-origin", allowed))
                headers.extend(self.response_headers)
        if self.vary_origin:
            headers.extend(self.vary_origin)

"""``redirect``: answer every request of the route with a redirect (nginx ``return 301 …``).

```toml
[filters.to_https]
kind = "redirect"
https = true                    # → https://$host$request_uri (no-op on TLS connections)
status = 301

[filters.moved]
kind = "redirect"
to = "https://new.example$request_uri"   # or a path: "/v2$uri?$args"
```

``to`` may use the variables of :data:`ferryman.filters.builtin.headers.VARIABLES`
(``$scheme``, ``$host``, ``$request_uri``, ``$uri``, ``$args``, …). ``status`` is one of
301, 302 (default), 303, 307, 308. Give exactly one of ``to`` and ``https = true``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import field_validator, model_validator

from ...config.model import Strict
from ..base import Filter
from ..registry import register
from .headers import TemplateValue, compile_template, render

if TYPE_CHECKING:
    from ...http.session import Session

#: where ``https = true`` sends the client
HTTPS_TARGET = "https://$host$request_uri"


@register
class RedirectFilter(Filter):
    """Respond with ``Location`` from ``request_filter``; the upstream is never contacted."""

    kind = "redirect"

    class Config(Strict):
        to: TemplateValue | None = None
        status: Literal[301, 302, 303, 307, 308] = 302
        https: bool = False

        @field_validator("to")
        @classmethod
        def _url(cls, to: str | None) -> str | None:
            if to is not None and not to:
                raise ValueError("the redirect target is empty")
            if to is not None and any(c in to for c in " \t"):
                raise ValueError(f"{to!r} contains whitespace; percent-encode it (%20)")
            return to

        @model_validator(mode="after")
        def _one_target(self) -> Any:
            if self.https == (self.to is not None):
                raise ValueError("give exactly one of to (a URL or path) and https = true")
            return self

    def __init__(self, name: str, config: RedirectFilter.Config) -> None:
        super().__init__(name, config)
        self.status = config.status
        self.https = config.https
        self.location = compile_template(config.to if config.to is not None else HTTPS_TARGET)

    def request_filter(self, session: Session) -> bool:
        if self.https:
            if session.tls:
                return False
            if not session.header(b"host"):
                session.respond_error(400, "no Host header to redirect to")
                return True
        session.respond(self.status, b"", [(b"location", render(self.location, session))])
        return True

"""``mock``: answer every request of the route with a fixed response (maintenance pages,
health endpoints, stubs while an upstream is being built).

```toml
[filters.maintenance]
kind = "mock"
status = 503
body = "down for maintenance\\n"
content_type = "text/plain; charset=utf-8"   # default for a non-empty body
headers = { "Retry-After" = "120" }
```

The response is built once, at load. ``status`` is 200-599 (default 200); 204 and 304 may not
carry a body. A HEAD request gets the same head without the body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, ValidationInfo, field_validator

from ...config.model import Strict
from ..base import Filter
from ..registry import register
from .headers import EditableName, HeaderValue, reject_case_duplicates

if TYPE_CHECKING:
    from ...http.session import Session


@register
class MockFilter(Filter):
    """Respond from ``request_filter`` with the configured status, headers and body."""

    kind = "mock"

    class Config(Strict):
        status: int = Field(default=200, ge=200, le=599)
        body: str = ""
        headers: dict[EditableName, HeaderValue] = {}
        content_type: HeaderValue | None = None

        _no_case_duplicates = field_validator("headers", mode="before")(reject_case_duplicates)

        @field_validator("body")
        @classmethod
        def _no_body(cls, body: str, info: ValidationInfo) -> str:
            status = info.data.get("status")
            if status in (204, 304) and body:
                raise ValueError(f"a {status} response cannot have a body")
            return body

        @field_validator("content_type")
        @classmethod
        def _once(cls, content_type: str | None, info: ValidationInfo) -> str | None:
            if content_type is not None and "content-type" in info.data.get("headers", {}):
                raise ValueError("give content_type or headers.content-type, not both")
            return content_type

    def __init__(self, name: str, config: MockFilter.Config) -> None:
        super().__init__(name, config)
        self.status = config.status
        self.body = config.body.encode("utf-8")
        headers = [(k.encode(), v.encode("utf-8")) for k, v in config.headers.items()]
        if config.content_type is not None:
            headers.append((b"content-type", config.content_type.encode("utf-8")))
        self.headers = headers

    def request_filter(self, session: Session) -> bool:
        session.respond(self.status, self.body, self.headers)
        return True

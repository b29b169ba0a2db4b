"""``ratelimit``: limit the request rate per client (or per header value) with 429.

```toml
[filters.rl]
kind = "ratelimit"
key = "client_ip"        # or "header:X-Api-Key"
rate = "100/s"           # COUNT/UNIT, unit s, m or h; "600/m", "50/10s"
burst = 20               # extra requests allowed on top of rate (default 0)
```

A request is admitted while the key's estimated count over the last window (see
:class:`ferryman.limits.rate.Rate`: the previous window's count weighted by how much of it
still overlaps, plus the current window's) is below ``rate`` + ``burst``; refused requests
are not counted. A new key may use ``rate`` + ``burst`` requests at once; one that keeps
asking settles at that many per window. A refused request gets ``429`` with
``Retry-After`` (whole seconds until the key has room again, at least 1).

Memory holds the keys seen in the last two windows; a header value over 64 bytes is kept
as a 16-byte hash. As in nginx's ``limit_req``, a request whose key is empty (no such
header; a unix-socket client for ``client_ip``) is not limited. With workers, the counts live
in memory the workers share (:mod:`ferryman.limits.shared_rate`): the rate is for the whole
proxy, however a client's connections spread over the workers.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, Field

from ...config.model import Strict
from ...limits.rate import Rate, parse_rate
from ...observability.metrics import Cell, Registry
from ...runtime import process
from ..base import Filter
from ..registry import register
from .headers import check_header_name

if TYPE_CHECKING:
    from ...http.session import Session

REFUSAL = b"429 Too Many Requests\nrate limit exceeded\n"
#: header keys longer than this are stored as a 16-byte hash (bounds the memory per key)
MAX_KEY = 64


def _check_key(value: str) -> str:
    if value == "client_ip":
        return value
    prefix, sep, name = value.partition(":")
    if prefix == "header" and sep:
        try:
            return "header:" + check_header_name(name)
        except ValueError as exc:
            raise ValueError(f"key {value!r}: {exc}") from None
    raise ValueError(f"key {value!r} must be \"client_ip\" or \"header:NAME\"")


def _check_rate(value: str) -> str:
    parse_rate(value)
    return value


@register
class RateLimitFilter(Filter):
    """Count requests per key in ``request_filter``; refuse with 429 beyond the rate."""

    kind = "ratelimit"

    class Config(Strict):
        key: Annotated[str, AfterValidator(_check_key)] = "client_ip"
        rate: Annotated[str, AfterValidator(_check_rate)]
        burst: int = Field(default=0, ge=0)

    def __init__(self, name: str, config: RateLimitFilter.Config, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, config)
        count, window = parse_rate(config.rate)
        self.allowance = count + config.burst  # >= 1, so a refused key always gets room later
        board = process.CURRENT.rate_board
        # with workers: counts shared by every worker (a client's limit is for the whole proxy)
        self.rate = board.rate(name, window, process.CURRENT.worker, clock) if board is not None else Rate(window, clock)
        self.header = config.key[7:].encode() if config.key.startswith("header:") else None
        self.refused = Cell()  # requests answered 429 (registered by bind_metrics)

    def bind_metrics(self, registry: Registry) -> None:
        self.refused = registry.counter("ferryman_ratelimit_rejections_total", self.name)

    def request_filter(self, session: Session) -> bool:
        if self.header is None:
            key: object = session.client_ip
        else:
            value = session.header(self.header)
            key = value if value is None or len(value) <= MAX_KEY else hashlib.blake2b(value, digest_size=16).digest()
        if not key:
            return False
        if self.rate.admit(key, self.allowance):
            return False
        self.refused.value += 1
        retry_after = b"%d" % max(1, math.ceil(self.rate.wait(key, self.allowance)))
        session.respond(429, REFUSAL, [(b"retry-after", retry_after), (b"cache-control", b"no-store")])
        return True

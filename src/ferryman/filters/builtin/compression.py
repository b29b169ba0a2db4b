"""``compression``: encode response bodies as zstd, br or gzip when the client accepts it.

The response head decides (``response_filter``): responses that are already encoded,
shorter than ``min_length``, of a type not listed, marked ``no-transform`` (response or
request Cache-Control), bodiless (HEAD, 1xx, 204, 304) or partial (206) pass untouched.
Any other response gets ``Vary: Accept-Encoding`` (caches must key it by that header
whether or not this client gets it encoded), and the client's Accept-Encoding picks the
coding. An encoded response loses Content-Length (the proxy re-frames it as chunked) and
Accept-Ranges, and a strong ETag becomes weak. Its body streams through a per-request
encoder kept in ``session.vars[name]`` that flushes after every chunk, so bytes reach the
client as the upstream sends them and memory stays bounded (the encoder's window, capped
below, not the body). The request sent upstream keeps its Accept-Encoding.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import brotli  # type: ignore[import-untyped]
import zstandard
from pydantic import Field, field_validator

from ...config.model import Strict
from ...config.types import Size
from ..base import Filter, Headers
from ..registry import register

if TYPE_CHECKING:
    from ...http.session import Session

Algorithm = Literal["zstd", "br", "gzip"]

#: encoder windows, capped so a response costs at most about a megabyte of encoder state
BROTLI_LGWIN = 19  # 512 KiB (the library default is 4 MiB)
ZSTD_WINDOW_LOG = 19  # 512 KiB (level 3 would take 2 MiB)

_NO_BODY_STATUSES = frozenset({204, 206, 304})
_ALIASES = {"x-gzip": "gzip"}


class Levels(Strict):
    """Compression level per algorithm (``level = { gzip = 6 }``)."""

    gzip: int = Field(default=5, ge=1, le=9)
    br: int = Field(default=4, ge=0, le=11)
    zstd: int = Field(default=3, ge=1, le=22)


DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = ("zstd", "br", "gzip")
DEFAULT_TYPES = ("text/*", "application/json", "application/javascript", "application/xml", "image/svg+xml")


# Accept-Encoding -------------------------------------------------------------------------------
def parse_accept_encoding(value: bytes) -> dict[str, float]:
    """``b"gzip;q=0.8, br, *;q=0"`` → ``{"gzip": 0.8, "br": 1.0, "*": 0.0}`` (names
    lowercased, ``x-gzip`` read as ``gzip``; an item with a malformed q is ignored)."""
    out: dict[str, float] = {}
    for item in value.decode("latin-1").split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, raw = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(raw.strip())
                except ValueError:
                    q = -1.0
                break
        if not 0.0 <= q <= 1.0:
            continue
        out[_ALIASES.get(name, name)] = q
    return out


def negotiate(accept: bytes | None, preference: Sequence[str]) -> str | None:
    """The coding to use, or None for identity.

    The highest q wins; equal q goes to the earlier entry of ``preference``; ``*`` stands
    for codings not named. A coding is refused at q=0, and when the client ranks identity
    (explicitly or through ``*``) above it. No header means no coding.
    """
    if accept is None:
        return None
    qs = parse_accept_encoding(accept)
    star = qs.get("*")
    best, best_q = None, 0.0
    for name in preference:
        q = qs.get(name, star)
        if q is not None and q > best_q:
            best, best_q = name, q
    if best is None:
        return None
    identity = qs.get("identity", star)
    if identity is not None and identity > best_q:
        return None
    return best


# encoders ------------------------------------------------------------------------------------------
class _Gzip:
    __slots__ = ("_z",)

    def __init__(self, level: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: gzip wrapper

    def chunk(self, data: bytes) -> bytes:
        z = self._z
        return z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes) -> bytes:
        z = self._z
        return z.compress(data) + z.flush(zlib.Z_FINISH)


class _Brotli:
    __slots__ = ("_b",)

    def __init__(self, level: int) -> None:
        self._b = brotli.Compressor(quality=level, lgwin=BROTLI_LGWIN)

    def chunk(self, data: bytes) -> bytes:
        b = self._b
        return b.process(data) + b.flush()

    def finish(self, data: bytes) -> bytes:
        b = self._b
        return b.process(data) + b.finish()


class _Zstd:
    __slots__ = ("_z",)

    def __init__(self, params: zstandard.ZstdCompressionParameters) -> None:
        # one ZstdCompressor per stream: its context must not be shared by concurrent streams
        self._z = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def chunk(self, data: bytes) -> bytes:
        z = self._z
        return z.compress(data) + z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self, data: bytes) -> bytes:
        z = self._z
        return z.compress(data) + z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


Encoder = _Gzip | _Brotli | _Zstd


# the filter ---------------------------------------------------------------------------------------
@register
class Compression(Filter):
    """Compress response bodies the client can decode (see the module docstring)."""

    kind = "compression"

    class Config(Strict):
        """``[filters.NAME] kind = "compression"``: ``algorithms`` in order of preference,
        ``level`` per algorithm, ``min_length`` (a Size: shorter Content-Length is sent as
        is), ``types`` (content types; ``"text/*"`` or any trailing ``*`` is a prefix)."""

        algorithms: list[Algorithm] = Field(default_factory=lambda: list(DEFAULT_ALGORITHMS), min_length=1)
        level: Levels = Field(default_factory=Levels)
        min_length: Size = 1024
        types: list[str] = Field(default_factory=lambda: list(DEFAULT_TYPES), min_length=1)

        @field_validator("algorithms")
        @classmethod
        def _distinct(cls, value: list[Algorithm]) -> list[Algorithm]:
            if len(set(value)) != len(value):
                raise ValueError(f"algorithms must not repeat: {value}")
            return value

        @field_validator("types")
        @classmethod
        def _media_types(cls, value: list[str]) -> list[str]:
            for item in value:
                if not item.strip() or "/" not in item:
                    raise ValueError(f"{item!r} is not a content type or prefix such as \"text/*\"")
            return value

    def __init__(self, name: str, config: Config) -> None:
        super().__init__(name, config)
        self.preference = tuple(config.algorithms)
        self.min_length = config.min_length
        self._prefixes = tuple(t.strip().lower().rstrip("*").encode("latin-1") for t in config.types)
        levels = config.level
        self._zstd_params = zstandard.ZstdCompressionParameters.from_level(levels.zstd, window_log=ZSTD_WINDOW_LOG)
        self._levels = {"gzip": levels.gzip, "br": levels.br}

    def new_encoder(self, algorithm: str) -> Encoder:
        """A fresh streaming encoder for one response."""
        if algorithm == "gzip":
            return _Gzip(self._levels["gzip"])
        if algorithm == "br":
            return _Brotli(self._levels["br"])
        return _Zstd(self._zstd_params)

    def type_matches(self, content_type: bytes) -> bool:
        media = content_type.partition(b";")[0].strip().lower()
        return any(media.startswith(prefix) for prefix in self._prefixes)

    def response_filter(self, session: Session, headers: Headers) -> None:
        status = session.response_status
        if status < 200 or status in _NO_BODY_STATUSES or session.request.method in (b"HEAD", b"CONNECT"):
            return
        content_type = length = None
        vary: list[int] = []
        for index, (key, value) in enumerate(headers):
            if key == b"content-encoding":
                return  # already encoded (even "identity": leave the upstream's choice alone)
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                length = value
            elif key == b"cache-control" and _no_transform(value):
                return
            elif key == b"vary":
                vary.append(index)
        if content_type is None or not self.type_matches(content_type):
            return
        if length is not None and (not length.isdigit() or int(length) < self.min_length):
            return
        if any(key == b"cache-control" and _no_transform(value) for key, value in session.request.headers):
            return
        # the response could be encoded: caches must key it by Accept-Encoding either way
        _add_vary(headers, vary)
        accept = _joined(session.request.headers, b"accept-encoding")
        algorithm = negotiate(accept, self.preference)
        if algorithm is None:
            return
        session.vars[self.name] = self.new_encoder(algorithm)
        session.filter_body = True
        out: Headers = []
        for key, value in headers:
            if key == b"content-length" or key == b"accept-ranges":
                continue  # re-framed as chunked; byte ranges of the identity body no longer apply
            if key == b"etag" and value.startswith(b'"'):
                value = b"W/" + value  # the encoded bytes differ: no longer a strong match
            out.append((key, value))
        out.append((b"content-encoding", algorithm.encode()))
        headers[:] = out

    def response_body_filter(self, session: Session, chunk: bytes, end: bool) -> bytes:
        encoder: Encoder | None = session.vars.get(self.name)
        if encoder is None:
            return chunk
        if end:
            del session.vars[self.name]
            return encoder.finish(chunk)
        if not chunk:
            return b""
        return encoder.chunk(chunk)


def _no_transform(value: bytes) -> bool:
    return any(part.strip().lower() == b"no-transform" for part in value.split(b","))


def _joined(headers: Headers, name: bytes) -> bytes | None:
    """All values of a list-valued header joined by commas, or None when absent."""
    values = [value for key, value in headers if key == name]
    if not values:
        return None
    return values[0] if len(values) == 1 else b", ".join(values)


def _add_vary(headers: Headers, indexes: list[int]) -> None:
    for index in indexes:
        for token in headers[index][1].split(b","):
            token = token.strip().lower()
            if token == b"accept-encoding" or token == b"*":
                return
    if indexes:
        first = indexes[0]
        key, value = headers[first]
        headers[first] = (key, value + b", Accept-Encoding" if value.strip() else b"Accept-Encoding")
    else:
        headers.append((b"vary", b"Accept-Encoding"))

"""compression filter: negotiation, skip rules, head edits, and real streamed decoding."""

from __future__ import annotations

import gzip
import time
import types
import zlib
from collections.abc import Callable

import brotli  # type: ignore[import-untyped]
import pytest
import zstandard
from pydantic import ValidationError

from ferryman.filters.builtin.compression import (
    Compression,
    negotiate,
    parse_accept_encoding,
)
from ferryman.filters.registry import lookup
from ferryman.http.session import Session
from ferryman.protocol.h1.events import RequestHead

Headers = list[tuple[bytes, bytes]]


class Downstream:
    """The connection side a Session talks to; these tests never send through it."""

    service = types.SimpleNamespace(has_response_body_filters=False, upstream_read_timeout=None)
    loop = types.SimpleNamespace(time=time.monotonic)
    keep_alive = True

    def send_response(self, session: Session, head: bytes, body: bytes) -> None:
        raise AssertionError("the compression filter never answers by itself")


def make_filter(**config: object) -> Compression:
    assert lookup("compression") is Compression
    return Compression("gz", Compression.Config.model_validate(config))


def make_session(request_headers: Headers | None = None, *, method: bytes = b"GET", status: int = 200) -> Session:
    head = RequestHead(method, b"/page", b"1.1", list(request_headers or []))
    session = Session(head, ("127.0.0.1", 40000), ("127.0.0.1", 8080), Downstream())
    session.response_status = status
    return session


def response_headers(**extra: bytes) -> Headers:
    headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", b"50000")]
    headers += [(name.replace("_", "-").encode(), value) for name, value in extra.items()]
    return headers


def get(headers: Headers, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key == name]


def run_head(filter_: Compression, accept: bytes | None = b"gzip, br, zstd", headers: Headers | None = None, **kw: object) -> tuple[Session, Headers]:
    request = [(b"accept-encoding", accept)] if accept is not None else []
    session = make_session(request, **kw)  # type: ignore[arg-type]
    headers = response_headers() if headers is None else headers
    filter_.response_filter(session, headers)
    return session, headers


# Accept-Encoding ------------------------------------------------------------------------------------
PREF = ("zstd", "br", "gzip")


@pytest.mark.parametrize(
    ("accept", "preference", "expected"),
    [
        (None, PREF, None),  # no header: identity
        (b"", PREF, None),  # empty header: identity only
        (b"gzip", PREF, "gzip"),
        (b"gzip, deflate, br", PREF, "br"),  # server preference on equal q
        (b"gzip, deflate, br, zstd", PREF, "zstd"),
        (b"gzip, br", ("gzip", "br"), "gzip"),  # preference order is the config's
        (b"br;q=0.5, gzip;q=0.8", PREF, "gzip"),  # higher q wins over preference
        (b"br;q=1.0, gzip;q=0.999", PREF, "br"),
        (b"GZIP;Q=0.5", PREF, "gzip"),  # case-insensitive
        (b"x-gzip", PREF, "gzip"),
        (b"gzip;q=0", PREF, None),
        (b"br;q=0, gzip", PREF, "gzip"),
        (b"deflate, compress", PREF, None),  # nothing we speak
        (b"*", PREF, "zstd"),
        (b"*;q=0.5, gzip", PREF, "gzip"),  # named beats *
        (b"*, zstd;q=0", PREF, "br"),
        (b"*;q=0", PREF, None),
        (b"identity;q=0", PREF, None),  # nothing else acceptable: identity is all we can send
        (b"identity;q=0, gzip;q=0.1", PREF, "gzip"),
        (b"gzip;q=0.5, identity", PREF, None),  # identity ranked higher
        (b"gzip;q=0.5, identity;q=0.5", PREF, "gzip"),  # a tie goes to compression
        (b"gzip;q=0.3, *;q=0.6", PREF, "zstd"),  # * covers zstd and identity at 0.6
        (b"gzip;q=abc, br", PREF, "br"),  # malformed q: that item is ignored
        (b"gzip;q=2", PREF, None),  # out of range q: ignored
        (b"gzip ; level=1 ; q=0.4, br;q=0.3", PREF, "gzip"),
        (b" , ,gzip,", PREF, "gzip"),
    ],
)
def test_negotiation_table(accept: bytes | None, preference: tuple[str, ...], expected: str | None) -> None:
    assert negotiate(accept, preference) == expected


def test_parse_accept_encoding() -> None:
    assert parse_accept_encoding(b"gzip;q=0.8, BR, *;q=0, x-gzip;q=0.1") == {"gzip": 0.1, "br": 1.0, "*": 0.0}


def test_multiple_accept_encoding_headers_are_joined() -> None:
    f = make_filter()
    session = make_session([(b"accept-encoding", b"gzip;q=0.2"), (b"accept-encoding", b"br")])
    headers = response_headers()
    f.response_filter(session, headers)
    assert get(headers, b"content-encoding") == [b"br"]


# streaming: real decoders, output before the end ----------------------------------------------------
class Decoder:
    """An incremental decoder of one algorithm and whether it saw the end of the stream."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        if algorithm == "gzip":
            self._z = zlib.decompressobj(wbits=31)
        elif algorithm == "br":
            self._b = brotli.Decompressor()
        else:
            self._d = zstandard.ZstdDecompressor().decompressobj()

    def feed(self, data: bytes) -> bytes:
        if self.algorithm == "gzip":
            return self._z.decompress(data)
        if self.algorithm == "br":
            return self._b.process(data)
        return self._d.decompress(data)

    @property
    def finished(self) -> bool:
        if self.algorithm == "gzip":
            return self._z.eof
        if self.algorithm == "br":
            return self._b.is_finished()
        return self._d.eof


def one_shot_decode(algorithm: str, data: bytes) -> bytes:
    if algorithm == "gzip":
        return gzip.decompress(data)
    if algorithm == "br":
        return brotli.decompress(data)
    with zstandard.ZstdDecompressor().stream_reader(data) as reader:
        return reader.read()


def body_chunks() -> list[bytes]:
    return [(b"<p>chunk %d: " % i) + b"lorem ipsum dolor sit amet " * (40 + i) + b"</p>\n" for i in range(6)]


@pytest.mark.parametrize("algorithm", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("last", [b"", b"<p>the tail</p>"])
def test_streamed_output_decodes_incrementally(algorithm: str, last: bytes) -> None:
    f = make_filter()
    session, headers = run_head(f, accept=algorithm.encode())
    assert session.filter_body is True
    assert get(headers, b"content-encoding") == [algorithm.encode()]

    decoder = Decoder(algorithm)
    sent, wire, decoded = b"", b"", b""
    for piece in body_chunks():
        out = f.response_body_filter(session, piece, False)
        assert out, "each chunk must produce output before the end"
        sent += piece
        wire += out
        decoded += decoder.feed(out)
        assert decoded == sent  # everything fed so far is decodable now: flushed, not held
        assert not decoder.finished
    assert f.response_body_filter(session, b"", False) == b""  # nothing to flush for nothing

    tail = f.response_body_filter(session, last, True)
    assert tail
    wire += tail
    decoded += decoder.feed(tail)
    assert decoded == sent + last
    assert decoder.finished
    assert one_shot_decode(algorithm, wire) == sent + last
    assert f.name not in session.vars  # the encoder is released at the end


@pytest.mark.parametrize("algorithm", ["gzip", "br", "zstd"])
def test_single_call_body_and_memoryview_chunks(algorithm: str) -> None:
    f = make_filter()
    session, _ = run_head(f, accept=algorithm.encode())
    body = b'{"k": "' + b"v" * 5000 + b'"}'
    wire = f.response_body_filter(session, memoryview(body)[:100], False)  # type: ignore[arg-type]
    wire += f.response_body_filter(session, memoryview(body)[100:], True)  # type: ignore[arg-type]
    assert one_shot_decode(algorithm, wire) == body
    assert len(wire) < len(body) // 10


def test_gzip_stream_has_the_gzip_wrapper() -> None:
    f = make_filter(algorithms=["gzip"])
    session, _ = run_head(f, accept=b"gzip")
    wire = f.response_body_filter(session, b"hello " * 100, True)
    assert wire[:2] == b"\x1f\x8b"
    assert gzip.decompress(wire) == b"hello " * 100


def test_levels_reach_the_encoders() -> None:
    body = bytes(range(256)) * 64 + b"abcdefgh" * 4000
    sizes = {}
    for level in (1, 9):
        f = make_filter(algorithms=["gzip"], level={"gzip": level})
        session, _ = run_head(f, accept=b"gzip")
        wire = f.response_body_filter(session, body, True)
        assert gzip.decompress(wire) == body
        sizes[level] = len(wire)
    assert sizes[9] < sizes[1]


def test_body_passes_through_when_not_compressing() -> None:
    f = make_filter()
    session, headers = run_head(f, accept=None)
    assert get(headers, b"content-encoding") == []
    assert f.response_body_filter(session, b"raw", False) == b"raw"
    assert f.response_body_filter(session, b"end", True) == b"end"


# head edits ----------------------------------------------------------------------------------------
def test_head_edits_when_compressing() -> None:
    f = make_filter()
    headers = response_headers(etag=b'"abc123"', accept_ranges=b"bytes", x_other=b"kept")
    session, headers = run_head(f, accept=b"br", headers=headers)
    assert get(headers, b"content-encoding") == [b"br"]
    assert get(headers, b"content-length") == []  # re-framed as chunked by the proxy
    assert get(headers, b"accept-ranges") == []
    assert get(headers, b"etag") == [b'W/"abc123"']
    assert get(headers, b"vary") == [b"Accept-Encoding"]
    assert get(headers, b"x-other") == [b"kept"]
    assert get(headers, b"content-type") == [b"text/html; charset=utf-8"]
    assert f.name in session.vars


def test_weak_etag_stays_as_it_is() -> None:
    f = make_filter()
    _, headers = run_head(f, headers=response_headers(etag=b'W/"v1"'))
    assert get(headers, b"etag") == [b'W/"v1"']


@pytest.mark.parametrize(
    ("vary", "expected"),
    [
        ([], [b"Accept-Encoding"]),
        ([b"Origin"], [b"Origin, Accept-Encoding"]),
        ([b"origin, accept-encoding"], [b"origin, accept-encoding"]),
        ([b"Origin", b"Accept-Encoding"], [b"Origin", b"Accept-Encoding"]),
        ([b"*"], [b"*"]),
        ([b""], [b"Accept-Encoding"]),
    ],
)
def test_vary(vary: list[bytes], expected: list[bytes]) -> None:
    f = make_filter()
    headers = response_headers() + [(b"vary", v) for v in vary]
    _, headers = run_head(f, headers=headers)
    assert get(headers, b"vary") == expected


def test_vary_is_added_to_an_eligible_response_the_client_gets_plain() -> None:
    f = make_filter()
    session, headers = run_head(f, accept=b"identity")
    assert get(headers, b"content-encoding") == []
    assert get(headers, b"vary") == [b"Accept-Encoding"]
    assert get(headers, b"content-length") == [b"50000"]
    assert session.filter_body is False


def test_chunked_response_without_length_is_compressed() -> None:
    f = make_filter()
    headers = [(b"content-type", b"application/json")]
    session, headers = run_head(f, accept=b"gzip", headers=headers)
    assert get(headers, b"content-encoding") == [b"gzip"]
    assert session.filter_body is True


# skip conditions -------------------------------------------------------------------------------------
SKIPS: dict[str, Callable[[], tuple[dict, Headers]]] = {
    "already encoded": lambda: ({}, response_headers(content_encoding=b"gzip")),
    "identity content-encoding": lambda: ({}, response_headers(content_encoding=b"identity")),
    "204": lambda: ({"status": 204}, response_headers()),
    "304": lambda: ({"status": 304}, response_headers()),
    "100": lambda: ({"status": 100}, response_headers()),
    "101": lambda: ({"status": 101}, response_headers()),
    "103": lambda: ({"status": 103}, response_headers()),
    "206": lambda: ({"status": 206}, response_headers(content_range=b"bytes 0-9/100")),
    "HEAD": lambda: ({"method": b"HEAD"}, response_headers()),
    "image type": lambda: ({}, [(b"content-type", b"image/png"), (b"content-length", b"50000")]),
    "no content-type": lambda: ({}, [(b"content-length", b"50000")]),
    "type prefix only": lambda: ({}, [(b"content-type", b"textual/plain"), (b"content-length", b"50000")]),
    "no-transform": lambda: ({}, response_headers(cache_control=b"public, No-Transform")),
    "short": lambda: ({}, [(b"content-type", b"text/plain"), (b"content-length", b"1023")]),
    "empty": lambda: ({}, [(b"content-type", b"text/plain"), (b"content-length", b"0")]),
    "bad length": lambda: ({}, [(b"content-type", b"text/plain"), (b"content-length", b"12x")]),
}


@pytest.mark.parametrize("case", sorted(SKIPS))
def test_skip_conditions(case: str) -> None:
    f = make_filter()
    kw, headers = SKIPS[case]()
    before = list(headers)
    session, headers = run_head(f, headers=headers, **kw)
    assert headers == before  # untouched: no encoding, no Vary
    assert session.filter_body is False
    assert f.name not in session.vars


def test_request_no_transform_is_honoured() -> None:
    f = make_filter()
    session = make_session([(b"accept-encoding", b"gzip"), (b"cache-control", b"no-transform")])
    headers = response_headers()
    f.response_filter(session, headers)
    assert get(headers, b"content-encoding") == []
    assert session.filter_body is False


def test_min_length_boundary_and_size_strings() -> None:
    f = make_filter(min_length="2k")
    assert f.min_length == 2048
    _, headers = run_head(f, headers=[(b"content-type", b"text/plain"), (b"content-length", b"2047")])
    assert get(headers, b"content-encoding") == []
    _, headers = run_head(f, headers=[(b"content-type", b"text/plain"), (b"content-length", b"2048")])
    assert get(headers, b"content-encoding") == [b"zstd"]


@pytest.mark.parametrize(
    ("content_type", "compressed"),
    [
        (b"text/plain", True),
        (b"TEXT/CSS; charset=utf-8", True),
        (b"application/json", True),
        (b"application/javascript", True),
        (b"application/xml", True),
        (b"image/svg+xml", True),
        (b"application/octet-stream", False),
        (b"image/jpeg", False),
        (b"video/mp4", False),
    ],
)
def test_default_types(content_type: bytes, compressed: bool) -> None:
    f = make_filter()
    _, headers = run_head(f, headers=[(b"content-type", content_type), (b"content-length", b"5000")])
    assert bool(get(headers, b"content-encoding")) is compressed


def test_custom_types() -> None:
    f = make_filter(types=["application/wasm", "application/*"])
    for content_type, compressed in ((b"application/wasm", True), (b"application/x-foo", True), (b"text/html", False)):
        _, headers = run_head(f, headers=[(b"content-type", content_type)])
        assert bool(get(headers, b"content-encoding")) is compressed, content_type


def test_upstream_request_keeps_accept_encoding() -> None:
    f = make_filter()
    session = make_session([(b"accept-encoding", b"gzip")])
    headers = [(b"accept-encoding", b"gzip")]
    f.upstream_request_filter(session, headers)
    assert headers == [(b"accept-encoding", b"gzip")]


# config ------------------------------------------------------------------------------------------------
def test_config_defaults() -> None:
    config = Compression.Config()
    assert config.algorithms == ["zstd", "br", "gzip"]
    assert (config.level.gzip, config.level.br, config.level.zstd) == (5, 4, 3)
    assert config.min_length == 1024
    assert config.types[0] == "text/*"


@pytest.mark.parametrize(
    ("config", "loc"),
    [
        ({"algorithms": ["deflate"]}, ("algorithms", 0)),
        ({"algorithms": ["gzip", "gzip"]}, ("algorithms",)),
        ({"algorithms": []}, ("algorithms",)),
        ({"level": {"gzip": 10}}, ("level", "gzip")),
        ({"level": {"br": 12}}, ("level", "br")),
        ({"level": {"zstd": 0}}, ("level", "zstd")),
        ({"level": {"lz4": 1}}, ("level", "lz4")),
        ({"min_length": "lots"}, ("min_length",)),
        ({"types": ["html"]}, ("types",)),
        ({"typo": 1}, ("typo",)),
    ],
)
def test_config_errors_name_their_key(config: dict, loc: tuple) -> None:
    with pytest.raises(ValidationError) as info:
        Compression.Config.model_validate(config)
    assert info.value.errors()[0]["loc"] == loc

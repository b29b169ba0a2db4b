"""static filter: files under a temp root, traversal refusal, validators, ranges, big files.

Responses go through the real Session (``respond`` / ``respond_file``) and are captured at
its downstream boundary, then parsed back with the project's response parser. Files above
the read limit arrive there as an fd + region (what the connection hands to sendfile,
exercised end to end in tests/e2e/test_sendfile.py).
"""

from __future__ import annotations

import email.utils
import os
import time
import types
from pathlib import Path

import pytest
from pydantic import ValidationError

from ferryman.filters.builtin.static import READ_LIMIT, Static, parse_range
from ferryman.filters.registry import lookup
from ferryman.http.session import Session
from ferryman.protocol.h1.events import Data, EndOfMessage, RequestHead, ResponseHead
from ferryman.protocol.h1.parser import ResponseParser

Headers = list[tuple[bytes, bytes]]

HELLO = b"hello, static world\n"  # 20 bytes
BIG = bytes(range(256)) * (READ_LIMIT // 256 + 40)  # above the read limit


class Downstream:
    """The connection side Session answers through: records ``respond`` (head and body) and
    ``respond_file`` (head, then the file region, read here from the fd it owns and closed
    as the real connection does after sendfile)."""

    service = types.SimpleNamespace(has_response_body_filters=False, upstream_read_timeout=None)
    loop = types.SimpleNamespace(time=time.monotonic)
    keep_alive = True

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.files: list[FileSent] = []

    def send_response(self, session: Session, head: bytes, body: bytes) -> None:
        self.sent.append((head, body))

    def send_file(self, session: Session, head: bytes, fd: int, offset: int, count: int) -> None:
        try:
            data = os.pread(fd, count, offset) if count else b""
        finally:
            os.close(fd)
        self.files.append(FileSent(head, offset, count, data))


class FileSent:
    """One file response: its head and the region sent (``count`` is 0 for HEAD)."""

    def __init__(self, head: bytes, offset: int, count: int, data: bytes) -> None:
        self.head, self.offset, self.count, self.data = head, offset, count, data
        parser = ResponseParser()
        parser.expect(b"GET")
        parsed = parser.feed(head)[0]
        assert isinstance(parsed, ResponseHead)
        self.status = parsed.status
        self.headers = dict(parsed.headers)


class Reply:
    def __init__(self, status: int, headers: Headers, body: bytes, raw_body: bytes) -> None:
        self.status, self.headers, self.body, self.raw_body = status, headers, body, raw_body

    def get(self, name: bytes) -> bytes | None:
        values = [v for k, v in self.headers if k == name]
        assert len(values) <= 1, f"{name!r} repeated: {values}"
        return values[0] if values else None

    def need(self, name: bytes) -> bytes:
        value = self.get(name)
        assert value is not None, f"no {name!r} header"
        return value


def run(filter_: Static, target: bytes, headers: Headers | None, method: bytes, host: bool = True) -> Downstream:
    downstream = Downstream()
    fields = ([(b"host", b"test")] if host else []) + (headers or [])
    session = Session(RequestHead(method, target, b"1.1", fields), ("127.0.0.1", 40000), ("127.0.0.1", 8080), downstream)
    assert filter_.request_filter(session) is True
    return downstream


def serve(filter_: Static, target: bytes, headers: Headers | None = None, method: bytes = b"GET") -> Reply:
    """Run the filter's request_filter and parse the in-memory response it sent."""
    downstream = run(filter_, target, headers, method)
    assert len(downstream.sent) == 1 and not downstream.files, "expected one in-memory response"
    head, raw_body = downstream.sent[0]
    parser = ResponseParser()
    parser.expect(method)
    events = parser.feed(head + raw_body)
    assert isinstance(events[0], ResponseHead) and isinstance(events[-1], EndOfMessage), events
    body = b"".join(bytes(e.data) for e in events if isinstance(e, Data))
    return Reply(events[0].status, events[0].headers, body, raw_body)


def serve_file(filter_: Static, target: bytes, headers: Headers | None = None, method: bytes = b"GET") -> FileSent:
    """Run request_filter on a request whose answer must go through respond_file."""
    downstream = run(filter_, target, headers, method)
    assert not downstream.sent and len(downstream.files) == 1, "expected one file response"
    return downstream.files[0]


def make(root: Path, **config: object) -> Static:
    assert lookup("static") is Static
    return Static("files", Static.Config.model_validate({"root": str(root), **config}))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """root/ with files, a sub directory with an index, one without, and a secret outside."""
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "index.html").write_bytes(b"<h1>home</h1>")
    (root / "hello.txt").write_bytes(HELLO)
    (root / "style.css").write_bytes(b"body{}")
    (root / "data.json").write_bytes(b"{}")
    (root / "pixel.png").write_bytes(b"\x89PNG")
    (root / "blob.weird-ext").write_bytes(b"?")
    (root / "archive.tar.gz").write_bytes(b"\x1f\x8b")
    (root / "space name.txt").write_bytes(b"spaced")
    (root / "big.bin").write_bytes(BIG)
    (root / "empty.txt").write_bytes(b"")
    (root / "docs" / "index.html").write_bytes(b"<h1>docs</h1>")
    (root / "docs" / "page.html").write_bytes(b"<p>page</p>")
    (tmp_path / "secret.txt").write_bytes(b"top secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "index.html").write_bytes(b"outside index")
    os.symlink(tmp_path / "secret.txt", root / "leak.txt")
    os.symlink(tmp_path / "outside", root / "leakdir")
    os.symlink("../../secret.txt", root / "docs" / "rel-leak.txt")
    os.symlink("hello.txt", root / "alias.txt")  # inside root: fine
    return root


# serving -------------------------------------------------------------------------------------------
def test_serves_a_file_with_validators(site: Path) -> None:
    reply = serve(make(site), b"/hello.txt")
    assert reply.status == 200
    assert reply.body == HELLO
    assert reply.get(b"content-length") == b"%d" % len(HELLO)
    assert reply.get(b"content-type") == b"text/plain; charset=utf-8"
    assert reply.get(b"accept-ranges") == b"bytes"
    st = (site / "hello.txt").stat()
    assert reply.get(b"etag") == b'W/"%x-%x"' % (st.st_size, st.st_mtime_ns)
    assert reply.get(b"last-modified") == email.utils.formatdate(st.st_mtime, usegmt=True).encode()
    assert reply.get(b"cache-control") is None


def test_etag_changes_with_the_file(site: Path) -> None:
    f = make(site)
    first = serve(f, b"/hello.txt").get(b"etag")
    (site / "hello.txt").write_bytes(HELLO + b"more")
    assert serve(f, b"/hello.txt").get(b"etag") != first


@pytest.mark.parametrize(
    ("target", "content_type"),
    [
        (b"/index.html", b"text/html; charset=utf-8"),
        (b"/style.css", b"text/css; charset=utf-8"),
        (b"/data.json", b"application/json"),
        (b"/pixel.png", b"image/png"),
        (b"/blob.weird-ext", b"application/octet-stream"),
        (b"/archive.tar.gz", b"application/gzip"),
        (b"/empty.txt", b"text/plain; charset=utf-8"),
    ],
)
def test_mime_types(site: Path, target: bytes, content_type: bytes) -> None:
    reply = serve(make(site), target)
    assert reply.status == 200
    assert reply.get(b"content-type") == content_type


def test_index_files_and_directory_redirects(site: Path) -> None:
    f = make(site)
    assert serve(f, b"/").body == b"<h1>home</h1>"
    assert serve(f, b"/docs/").body == b"<h1>docs</h1>"
    assert serve(f, b"/docs/page.html").body == b"<p>page</p>"
    moved = serve(f, b"/docs?x=1")
    assert moved.status == 301
    assert moved.get(b"location") == b"/docs/?x=1"
    assert serve(f, b"/empty/").status == 404  # no index, and no listing
    assert serve(make(site, index="page.html"), b"/docs/").body == b"<p>page</p>"
    assert serve(make(site, index=""), b"/docs/").status == 404


def test_paths_are_percent_decoded_and_queries_ignored(site: Path) -> None:
    f = make(site)
    assert serve(f, b"/space%20name.txt").body == b"spaced"
    assert serve(f, b"/hello.txt?v=2#frag").body == HELLO
    assert serve(f, b"/./docs//page.html").body == b"<p>page</p>"
    assert serve(f, b"/%68ello.txt").body == HELLO
    assert serve(f, b"http://test/hello.txt").body == HELLO  # absolute-form target


def test_missing_and_non_files(site: Path) -> None:
    f = make(site)
    assert serve(f, b"/nope.txt").status == 404
    assert serve(f, b"/hello.txt/").status == 404  # a file is not a directory
    assert serve(f, b"/hello.txt/x").status == 404
    os.mkfifo(site / "pipe")
    assert serve(f, b"/pipe").status == 404  # refused without blocking on the FIFO


def test_symlink_inside_root_is_served(site: Path) -> None:
    assert serve(make(site), b"/alias.txt").body == HELLO


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (b"/../secret.txt", 400),
        (b"/docs/../../secret.txt", 400),
        (b"/%2e%2e/secret.txt", 400),
        (b"/%2E%2E%2Fsecret.txt", 400),
        (b"/docs/..%2f..%2fsecret.txt", 400),
        (b"/../etc/passwd", 400),
        (b"/hello.txt%00.png", 400),
        (b"/%00", 400),
        (b"/..%5csecret.txt", 400),
        (b"/docs\\..\\..\\secret.txt", 400),
        (b"/leak.txt", 404),  # symlink to a file outside root
        (b"/leakdir/", 404),  # symlink to a directory outside root
        (b"/leakdir/index.html", 404),
        (b"/docs/rel-leak.txt", 404),  # relative symlink climbing out
        (b"*", 400),
    ],
)
def test_traversal_is_refused(site: Path, target: bytes, status: int) -> None:
    reply = serve(make(site), target)
    assert reply.status == status
    assert b"secret" not in reply.body and b"outside" not in reply.body


def test_index_symlinked_out_of_root_is_refused(site: Path, tmp_path: Path) -> None:
    (site / "trap").mkdir()
    os.symlink(tmp_path / "secret.txt", site / "trap" / "index.html")
    assert serve(make(site), b"/trap/").status == 404


def test_root_given_through_a_symlink(site: Path, tmp_path: Path) -> None:
    os.symlink(site, tmp_path / "link-to-root")
    f = make(tmp_path / "link-to-root")
    assert serve(f, b"/hello.txt").body == HELLO
    assert serve(f, b"/leak.txt").status == 404


def test_prefix_is_stripped(site: Path) -> None:
    f = make(site, prefix="/static/")
    assert serve(f, b"/static/hello.txt").body == HELLO
    assert serve(f, b"/static/").body == b"<h1>home</h1>"
    assert serve(f, b"/static").status == 301
    assert serve(f, b"/static").get(b"location") == b"/static/"
    assert serve(f, b"/staticx/hello.txt").status == 404
    assert serve(f, b"/hello.txt").status == 404
    assert serve(f, b"/static/../secret.txt").status == 400


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS"])
def test_other_methods_get_405_with_allow(site: Path, method: bytes) -> None:
    reply = serve(make(site), b"/hello.txt", method=method)
    assert reply.status == 405
    assert reply.get(b"allow") == b"GET, HEAD"


def test_head_has_the_headers_and_no_body(site: Path) -> None:
    reply = serve(make(site), b"/hello.txt", method=b"HEAD")
    assert reply.status == 200
    assert reply.get(b"content-length") == b"%d" % len(HELLO)
    assert reply.get(b"etag") is not None
    assert reply.raw_body == b""


def test_max_age(site: Path) -> None:
    f = make(site, max_age="1h")
    assert serve(f, b"/hello.txt").get(b"cache-control") == b"max-age=3600"
    assert serve(f, b"/hello.txt", [(b"if-none-match", serve(f, b"/hello.txt").need(b"etag"))]).get(b"cache-control") == b"max-age=3600"


# conditional requests ----------------------------------------------------------------------------------
def test_if_none_match(site: Path) -> None:
    f = make(site)
    etag = serve(f, b"/hello.txt").need(b"etag")
    assert etag.startswith(b'W/"')
    for value in (etag, etag[2:], b'"other", ' + etag, b"*"):
        reply = serve(f, b"/hello.txt", [(b"if-none-match", value)])
        assert reply.status == 304, value
        assert reply.raw_body == b""
        assert reply.get(b"etag") == etag
    assert serve(f, b"/hello.txt", [(b"if-none-match", b'"other"')]).status == 200
    head = serve(f, b"/hello.txt", [(b"if-none-match", etag)], method=b"HEAD")
    assert head.status == 304


def test_if_modified_since(site: Path) -> None:
    f = make(site)
    path = site / "hello.txt"
    os.utime(path, (1_700_000_000, 1_700_000_000))
    at = email.utils.formatdate(1_700_000_000, usegmt=True).encode()
    later = email.utils.formatdate(1_700_000_100, usegmt=True).encode()
    earlier = email.utils.formatdate(1_699_999_999, usegmt=True).encode()
    assert serve(f, b"/hello.txt", [(b"if-modified-since", at)]).status == 304
    assert serve(f, b"/hello.txt", [(b"if-modified-since", later)]).status == 304
    assert serve(f, b"/hello.txt", [(b"if-modified-since", earlier)]).status == 200
    assert serve(f, b"/hello.txt", [(b"if-modified-since", b"not a date")]).status == 200
    # If-None-Match decides when both are present
    both = [(b"if-none-match", b'"nope"'), (b"if-modified-since", later)]
    assert serve(f, b"/hello.txt", both).status == 200


# ranges ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "body", "content_range"),
    [
        (b"bytes=0-4", HELLO[0:5], b"bytes 0-4/20"),
        (b"bytes=7-", HELLO[7:], b"bytes 7-19/20"),
        (b"bytes=-3", HELLO[-3:], b"bytes 17-19/20"),
        (b"bytes=-1000", HELLO, b"bytes 0-19/20"),
        (b"bytes=5-1000", HELLO[5:], b"bytes 5-19/20"),
        (b"bytes=19-19", HELLO[19:], b"bytes 19-19/20"),
        (b"Bytes = 2-3", HELLO[2:4], b"bytes 2-3/20"),
    ],
)
def test_single_ranges(site: Path, spec: bytes, body: bytes, content_range: bytes) -> None:
    reply = serve(make(site), b"/hello.txt", [(b"range", spec)])
    assert reply.status == 206
    assert reply.body == body
    assert reply.get(b"content-range") == content_range
    assert reply.get(b"content-length") == b"%d" % len(body)


@pytest.mark.parametrize("spec", [b"bytes=20-", b"bytes=100-200", b"bytes=-0"])
def test_unsatisfiable_ranges(site: Path, spec: bytes) -> None:
    reply = serve(make(site), b"/hello.txt", [(b"range", spec)])
    assert reply.status == 416
    assert reply.get(b"content-range") == b"bytes */20"
    assert reply.body == b""


def test_range_on_an_empty_file_is_unsatisfiable(site: Path) -> None:
    assert serve(make(site), b"/empty.txt", [(b"range", b"bytes=-5")]).status == 416


@pytest.mark.parametrize("spec", [b"bytes=5-2", b"bytes=0-1,5-6", b"items=0-3", b"bytes=x-y", b"bytes=5", b"bytes=-"])
def test_ignored_ranges_send_everything(site: Path, spec: bytes) -> None:
    reply = serve(make(site), b"/hello.txt", [(b"range", spec)])
    assert reply.status == 200
    assert reply.body == HELLO


def test_if_range(site: Path) -> None:
    f = make(site)
    full = serve(f, b"/hello.txt")
    last_modified, etag = full.need(b"last-modified"), full.need(b"etag")
    ok = serve(f, b"/hello.txt", [(b"range", b"bytes=0-1"), (b"if-range", last_modified)])
    assert ok.status == 206 and ok.body == HELLO[:2]
    stale = serve(f, b"/hello.txt", [(b"range", b"bytes=0-1"), (b"if-range", b"Mon, 01 Jan 2001 00:00:00 GMT")])
    assert stale.status == 200 and stale.body == HELLO
    weak = serve(f, b"/hello.txt", [(b"range", b"bytes=0-1"), (b"if-range", etag)])
    assert weak.status == 200  # a weak entity tag never satisfies If-Range


def test_parse_range_table() -> None:
    assert parse_range(b"bytes=0-0", 1) == (0, 1)
    assert parse_range(b"bytes=0-", 0) == "unsatisfiable"
    assert parse_range(b"bytes=-1", 10) == (9, 1)
    assert parse_range(b"bytes=3-", 10) == (3, 7)
    assert parse_range(b"bytes=+3-4", 10) is None
    assert parse_range(b"bytes=10-", 10) == "unsatisfiable"


# big files: sendfile boundary ----------------------------------------------------------------------------
def test_big_file_goes_to_respond_file(site: Path) -> None:
    sent = serve_file(make(site), b"/big.bin")
    assert (sent.status, sent.offset, sent.count) == (200, 0, len(BIG))
    assert sent.data == BIG
    assert sent.headers[b"content-length"] == b"%d" % len(BIG)
    assert sent.headers[b"content-type"] == b"application/octet-stream"
    assert sent.headers[b"accept-ranges"] == b"bytes"
    assert b"etag" in sent.headers and b"last-modified" in sent.headers


def test_big_range_goes_to_respond_file(site: Path) -> None:
    start = 1000
    sent = serve_file(make(site), b"/big.bin", [(b"range", b"bytes=%d-" % start)])
    assert (sent.status, sent.offset, sent.count) == (206, start, len(BIG) - start)
    assert sent.data == BIG[start:]
    assert sent.headers[b"content-range"] == b"bytes %d-%d/%d" % (start, len(BIG) - 1, len(BIG))
    assert sent.headers[b"content-length"] == b"%d" % (len(BIG) - start)


def test_big_file_head_sends_no_body(site: Path) -> None:
    sent = serve_file(make(site), b"/big.bin", method=b"HEAD")
    assert sent.status == 200
    assert sent.headers[b"content-length"] == b"%d" % len(BIG)
    assert sent.count == 0


def test_small_range_of_a_big_file_is_read(site: Path) -> None:
    reply = serve(make(site), b"/big.bin", [(b"range", b"bytes=-100")])
    assert reply.status == 206 and reply.body == BIG[-100:]


def test_read_limit_boundary(site: Path) -> None:
    (site / "edge.bin").write_bytes(BIG[:READ_LIMIT])
    assert serve(make(site), b"/edge.bin").body == BIG[:READ_LIMIT]
    (site / "over.bin").write_bytes(BIG[: READ_LIMIT + 1])
    assert serve_file(make(site), b"/over.bin").count == READ_LIMIT + 1


def test_big_file_304_does_not_send_the_file(site: Path) -> None:
    f = make(site)
    etag = serve_file(f, b"/big.bin").headers[b"etag"]
    assert serve(f, b"/big.bin", [(b"if-none-match", etag)]).status == 304


def test_no_fd_leaks(site: Path) -> None:
    f = make(site)
    before = len(os.listdir("/proc/self/fd"))
    for target in (b"/hello.txt", b"/docs", b"/docs/", b"/empty/", b"/leak.txt", b"/nope", b"/big.bin", b"/../x"):
        for method in (b"GET", b"HEAD"):
            run(f, target, [(b"range", b"bytes=0-3")], method)
            run(f, target, [(b"range", b"bytes=1000-")], method)
    assert len(os.listdir("/proc/self/fd")) == before


# config --------------------------------------------------------------------------------------------------
def test_config(site: Path) -> None:
    config = Static.Config.model_validate({"root": str(site)})
    assert (config.index, config.prefix, config.max_age) == ("index.html", "/", None)


@pytest.mark.parametrize(
    ("extra", "loc", "message"),
    [
        ({"root": "/definitely/not/here"}, ("root",), "not an existing directory"),
        ({"root": "FILE"}, ("root",), "not an existing directory"),
        ({"root": ""}, ("root",), "must name a directory"),
        ({"prefix": "static"}, ("prefix",), "must start with"),
        ({"index": "a/b.html"}, ("index",), "plain file name"),
        ({"max_age": "soon"}, ("max_age",), "not a duration"),
        ({"autoindex": True}, ("autoindex",), "Extra inputs"),
    ],
)
def test_config_errors(site: Path, extra: dict, loc: tuple, message: str) -> None:
    config = {"root": str(site), **extra}
    if config["root"] == "FILE":
        config["root"] = str(site / "hello.txt")
    with pytest.raises(ValidationError) as info:
        Static.Config.model_validate(config)
    error = info.value.errors()[0]
    assert error["loc"] == loc
    assert message in error["msg"]


def test_missing_root_is_an_error() -> None:
    with pytest.raises(ValidationError) as info:
        Static.Config.model_validate({})
    assert info.value.errors()[0]["loc"] == ("root",)

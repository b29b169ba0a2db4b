"""``static``: answer GET/HEAD from files under a directory (validators, ranges, no listing).

The URL path below ``prefix`` is percent-decoded and resolved under ``root``; NUL,
backslash and ``..`` segments are refused (400), and a path whose real location (symlinks
resolved) leaves ``root`` is treated as missing (404). A directory serves its ``index``
file (a directory URL without its trailing "/" is redirected, 301); there is no
directory listing. Methods other than GET and HEAD get 405 with ``Allow``. Responses carry
a weak ETag (size + mtime), Last-Modified and, with ``max_age``, Cache-Control; they answer
If-None-Match / If-Modified-Since with 304 and a single byte Range with 206 (416 when
unsatisfiable; several ranges, or an If-Range that does not match, get the whole file).

Bodies up to :data:`READ_LIMIT` bytes are read and sent with ``session.respond``; larger
ones go out with ``session.respond_file`` (sendfile(2), the fd's ownership passes to it),
so a large file is never held in memory. File system calls are plain blocking ones: they
are meant for local disks whose metadata and small files sit in the page cache.
"""

from __future__ import annotations

import mimetypes
import os
import stat
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import unquote_to_bytes

from pydantic import field_validator

from ...config.model import Strict
from ...config.types import Duration
from ..base import Filter, Headers
from ..registry import register

if TYPE_CHECKING:
    from ...http.session import Session

UNSATISFIABLE: Final = "unsatisfiable"

#: bodies up to this size are read and sent from memory; larger ones use respond_file
READ_LIMIT = 64 * 1024

_ALLOW = [(b"allow", b"GET, HEAD")]
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW  # a FIFO must not block the loop
_ENCODED_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz", "br": "application/x-brotli"}


class _Refused(Exception):
    """A request path that names no servable file: answered with ``status``."""

    def __init__(self, status: int) -> None:
        self.status = status


@register
class Static(Filter):
    """Serve files from ``root`` (see the module docstring)."""

    kind = "static"

    class Config(Strict):
        """``[filters.NAME] kind = "static"``: ``root`` (an existing directory), ``index``
        (file served for a directory; "" for none), ``prefix`` (URL prefix stripped before
        the path is looked up under root), ``max_age`` (a Duration → ``Cache-Control``)."""

        root: str
        index: str = "index.html"
        prefix: str = "/"
        max_age: Duration | None = None

        @field_validator("root")
        @classmethod
        def _directory(cls, value: str) -> str:
            if not value:
                raise ValueError("root must name a directory")
            if not os.path.isdir(value):
                raise ValueError(f"{value!r} is not an existing directory")
            return value

        @field_validator("index")
        @classmethod
        def _file_name(cls, value: str) -> str:
            if "/" in value or "\0" in value or value in (".", ".."):
                raise ValueError(f"index must be a plain file name (or \"\" for none), not {value!r}")
            return value

        @field_validator("prefix")
        @classmethod
        def _url_prefix(cls, value: str) -> str:
            if not value.startswith("/"):
                raise ValueError(f"prefix must start with \"/\", not {value!r}")
            return value

    def __init__(self, name: str, config: Config) -> None:
        super().__init__(name, config)
        self.root = os.fsencode(os.path.realpath(config.root))
        self._root_dir = self.root.rstrip(b"/") + b"/"
        self.index = os.fsencode(config.index)
        self.prefix = config.prefix.rstrip("/").encode("utf-8")  # "/" → b""
        self.cache_control = b"max-age=%d" % int(config.max_age) if config.max_age is not None else None
        self._types: dict[bytes, bytes] = {}

    # request -----------------------------------------------------------------------------------
    def request_filter(self, session: Session) -> bool:
        method = session.request.method
        if method != b"GET" and method != b"HEAD":
            session.respond(405, b"405 Method Not Allowed\n", list(_ALLOW))
            return True
        try:
            self._serve(session)
        except _Refused as refused:
            session.respond_error(refused.status)
        return True

    def _serve(self, session: Session) -> None:
        path, query = _split_target(session.request.target)
        rest = self._strip_prefix(path)
        fd, real = self._open(self._segments(rest))
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                if not path.endswith(b"/"):  # so that the index page's relative links resolve
                    session.respond(301, b"", [(b"location", path + b"/" + query)])
                    return
                os.close(fd)
                fd = -1
                if not self.index:
                    raise _Refused(404)
                fd, real = self._open_under(os.path.join(real, self.index))
                st = os.fstat(fd)
            elif path.endswith(b"/"):  # "/file.txt/" names a directory that is not there
                raise _Refused(404)
            if not stat.S_ISREG(st.st_mode):
                raise _Refused(404)
            pending = self._answer(session, fd, real, st)
            if pending is not None:  # from here on the fd belongs to respond_file
                owned, fd = fd, -1
                status, headers, offset, count = pending
                session.respond_file(status, headers, owned, offset, count)
        finally:
            if fd >= 0:
                os.close(fd)

    def _strip_prefix(self, path: bytes) -> bytes:
        prefix = self.prefix
        if not prefix:
            return path
        if path == prefix or path.startswith(prefix + b"/"):
            return path[len(prefix):]
        raise _Refused(404)

    @staticmethod
    def _segments(rest: bytes) -> list[bytes]:
        """The decoded path segments; traversal and unsafe bytes are refused."""
        decoded = unquote_to_bytes(rest)
        if b"\0" in decoded or b"\\" in decoded:
            raise _Refused(400)
        segments = []
        for segment in decoded.split(b"/"):
            if segment == b"..":
                raise _Refused(400)
            if segment and segment != b".":
                segments.append(segment)
        return segments

    def _open(self, segments: list[bytes]) -> tuple[int, bytes]:
        if not segments:
            return self._open_under(self.root)
        return self._open_under(os.path.join(self.root, *segments))

    def _open_under(self, candidate: bytes) -> tuple[int, bytes]:
        """Open ``candidate`` if its real path stays under root; else 404 (403 if unreadable)."""
        real = os.path.realpath(candidate)
        if real != self.root and not real.startswith(self._root_dir):
            raise _Refused(404)
        try:
            return os.open(real, _OPEN_FLAGS), real
        except PermissionError:
            raise _Refused(403) from None
        except OSError:  # missing, a component is not a directory, swapped for a symlink, ...
            raise _Refused(404) from None

    # response ------------------------------------------------------------------------------------
    def _answer(self, session: Session, fd: int, real: bytes, st: os.stat_result) -> tuple[int, Headers, int, int] | None:
        """Answer for the open regular file ``fd``, or return the ``(status, headers, offset,
        count)`` that the caller hands to ``respond_file`` with the fd."""
        size = st.st_size
        etag = b'W/"%x-%x"' % (size, st.st_mtime_ns)
        last_modified = formatdate(st.st_mtime, usegmt=True).encode("ascii")
        headers: Headers = [(b"etag", etag), (b"last-modified", last_modified)]
        if self.cache_control is not None:
            headers.append((b"cache-control", self.cache_control))
        if _not_modified(session, etag, int(st.st_mtime)):
            session.respond(304, b"", headers)
            return None
        headers.append((b"content-type", self._content_type(real)))
        headers.append((b"accept-ranges", b"bytes"))
        status, offset, count = 200, 0, size
        spec = session.header(b"range")
        if spec is not None and _if_range_holds(session.header(b"if-range"), last_modified):
            span = parse_range(spec, size)
            if span == UNSATISFIABLE:
                session.respond(416, b"", [(b"content-range", b"bytes */%d" % size), *headers[:2]])
                return None
            if isinstance(span, tuple):
                status, (offset, count) = 206, span
                headers.append((b"content-range", b"bytes %d-%d/%d" % (offset, offset + count - 1, size)))
        if count > READ_LIMIT:
            return status, headers, offset, count
        session.respond(status, _pread_all(fd, offset, count), headers)
        return None

    def _content_type(self, real: bytes) -> bytes:
        ext = os.path.splitext(real)[1].lower()
        known = self._types.get(ext)
        if known is None:
            kind, encoding = mimetypes.guess_type("x" + os.fsdecode(ext), strict=False)
            if encoding is not None:  # x.tar.gz is a gzip file to the client, not a tar stream
                kind = _ENCODED_TYPES.get(encoding, "application/octet-stream")
            elif kind is None:
                kind = "application/octet-stream"
            elif kind.startswith("text/"):
                kind += "; charset=utf-8"
            known = kind.encode("ascii")
            if len(self._types) < 1024:
                self._types[ext] = known
        return known


# helpers (pure) --------------------------------------------------------------------------------
def _split_target(target: bytes) -> tuple[bytes, bytes]:
    """``(path, b"?query" or b"")`` of an origin- or absolute-form request target."""
    if not target.startswith(b"/"):
        _, sep, rest = target.partition(b"://")
        if not sep:
            raise _Refused(400)
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
    path, sep, query = target.partition(b"?")
    return path, sep + query


def parse_range(value: bytes, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """A ``Range`` header against a body of ``size`` bytes: ``(offset, count)``,
    :data:`UNSATISFIABLE` (416), or None to ignore it and send everything (not bytes, several
    ranges, or malformed: RFC 9110 lets a server ignore those)."""
    unit, _, spec = value.partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first, dash, last = spec.strip().partition(b"-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    if not first:  # suffix: the last N bytes
        if not last.isdigit():
            return None
        n = int(last)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        n = min(n, size)
        return size - n, n
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        return UNSATISFIABLE
    end = min(int(last), size - 1) if last else size - 1
    return start, end - start + 1


def _not_modified(session: Session, etag: bytes, mtime: int) -> bool:
    """RFC 9110 13.2.2: If-None-Match (weak comparison) decides, else If-Modified-Since."""
    inm = session.header(b"if-none-match")
    if inm is not None:
        opaque = etag[2:]
        for tag in inm.split(b","):
            tag = tag.strip()
            if tag == b"*" or tag.removeprefix(b"W/") == opaque:
                return True
        return False
    ims = session.header(b"if-modified-since")
    if ims is None:
        return False
    try:
        since = parsedate_to_datetime(ims.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return False
    if since.tzinfo is None:  # "-0000": UTC without a claim about local time
        since = since.replace(tzinfo=UTC)
    return mtime <= since.timestamp()


def _if_range_holds(value: bytes | None, last_modified: bytes) -> bool:
    """Whether Range applies: no If-Range, or one equal to Last-Modified (our ETag is weak,
    so an entity-tag If-Range never matches and the full body is sent)."""
    return value is None or value.strip() == last_modified


def _pread_all(fd: int, offset: int, count: int) -> bytes:
    parts = []
    while count > 0:
        data = os.pread(fd, count, offset)
        if not data:  # the file shrank since fstat
            break
        parts.append(data)
        offset += len(data)
        count -= len(data)
    return b"".join(parts)

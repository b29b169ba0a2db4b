"""Host, path and value matchers for HTTP routes, sans-IO.

Parsed once from config text (``parse_*`` raise ``ValueError`` with a precise message the
config layer prefixes with a TOML path); matched per request on the raw ``bytes`` the
codec produced. Bytes are decoded only when a regex has to run, as UTF-8 with undecodable
bytes kept as surrogates, so a regex never fails on odd input.

Host patterns (nginx ``server_name`` style):

- ``example.com``: exact, case-insensitive; a port and one trailing dot in the request's
  Host are ignored.
- ``*.example.com``: any host ending in ``.example.com`` (``a.example.com``,
  ``a.b.example.com``), not ``example.com`` itself.
- ``~^api\\d+\\.example\\.com$``: Python ``re``, searched (not full-matched, like nginx) in
  the normalised host (lower case, no port), case-insensitive (``~*`` is accepted too).
- empty / absent: any host, including a request without one.

Path patterns (nginx ``location`` style), matched against the raw path as sent, without
the query string:

- ``=/exact``: byte-for-byte equality.
- ``/api``: plain prefix, so ``/api`` also matches ``/apix`` (like ``location /api``).
- ``~^/v\\d+/``: ``re.search``; ``~*`` makes it case-insensitive.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ANY_HOST",
    "HOST_ANY",
    "HOST_EXACT",
    "HOST_REGEX",
    "HOST_WILDCARD",
    "PATH_EXACT",
    "PATH_PREFIX",
    "PATH_REGEX",
    "ROOT_PATH",
    "HostMatcher",
    "PathMatcher",
    "ValueMatcher",
    "decode",
    "normalize_host",
    "parse_header_name",
    "parse_host_pattern",
    "parse_method",
    "parse_path_pattern",
    "parse_value_pattern",
    "quote",
]

# Kinds, ranked: the numeric order is the priority order inside one priority level.
HOST_EXACT: Final = 0
HOST_WILDCARD: Final = 1
HOST_REGEX: Final = 2
HOST_ANY: Final = 3

PATH_EXACT: Final = 0
PATH_PREFIX: Final = 1
PATH_REGEX: Final = 2

_HOST_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Printable ASCII without space ('?' and '#' are refused first, with their own message).
_PATH_RE = re.compile(r"[\x21-\x7e]*")


def decode(raw: bytes) -> str:
    """Bytes → str for a regex: UTF-8, undecodable bytes kept as surrogates (lossless)."""
    return raw.decode("utf-8", "surrogateescape")


def normalize_host(host: bytes) -> bytes:
    """The request's Host as routes see it: lower case, no ``:port``, no trailing dot.

    ``[::1]:8080`` becomes ``[::1]``. Called per request only when the raw header is not
    already a configured exact host.
    """
    if host[:1] == b"[":
        end = host.find(b"]")
        if end >= 0:
            host = host[: end + 1]
    else:
        colon = host.find(b":")
        if colon >= 0:
            host = host[:colon]
        if host[-1:] == b".":
            host = host[:-1]
    return host.lower()


def quote(text: str) -> str:
    """Quote config text for an error message without doubling a regex's backslashes."""
    return f"'{text}'" if text.isprintable() and "'" not in text else repr(text)


def _compile(pattern: str, flags: int, what: str) -> re.Pattern[str]:
    if not pattern:
        raise ValueError(f"empty regex after '~' in {what}")
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise ValueError(f"invalid regex {quote(pattern)} in {what}: {exc}") from None


def _check_hostname(name: str, text: str) -> str:
    """Validate an exact host name (already lower case); returns it without a trailing dot."""
    if name.startswith("["):
        inner = name[1:-1] if name.endswith("]") else None
        try:
            if inner is None:
                raise ValueError
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"host {text!r} is not a valid IPv6 literal like '[::1]'") from None
        return name
    if ":" in name:
        raise ValueError(
            f"host {text!r} must not include a port (the port in the request's Host is ignored)"
        )
    if name.endswith(".") and len(name) > 1:
        name = name[:-1]
    if not _HOST_RE.fullmatch(name):
        raise ValueError(
            f"host {text!r} is not a valid host name (letters, digits, '-', '_' and dots, "
            "IDNs in punycode; '*.example.com' for a wildcard, '~regex' for a regex)"
        )
    return name


@dataclass(frozen=True, slots=True)
class HostMatcher:
    """A parsed host pattern. ``value`` is the normalised exact host or the wildcard
    suffix (with its leading dot) as bytes; ``regex`` is set for ``HOST_REGEX``."""

    kind: int
    text: str
    value: bytes = b""
    regex: re.Pattern[str] | None = None

    def matches(self, host: bytes | None) -> bool:
        """Whether a request Host (raw header bytes or ``None``) matches. Not the hot path:
        the route table inlines these checks."""
        if self.kind == HOST_ANY:
            return True
        if not host:
            return False
        h = normalize_host(host)
        if self.kind == HOST_EXACT:
            return h == self.value
        if self.kind == HOST_WILDCARD:
            return len(h) > len(self.value) and h.endswith(self.value)
        assert self.regex is not None
        return self.regex.search(decode(h)) is not None

    def __str__(self) -> str:
        return "*" if self.kind == HOST_ANY else self.text


@dataclass(frozen=True, slots=True)
class PathMatcher:
    """A parsed path pattern. ``value`` is the exact path or the prefix as bytes;
    ``regex`` is set for ``PATH_REGEX``."""

    kind: int
    text: str
    value: bytes = b""
    regex: re.Pattern[str] | None = None

    def matches(self, path: bytes) -> bool:
        """Whether a request path (without the query string) matches."""
        if self.kind == PATH_PREFIX:
            return path.startswith(self.value)
        if self.kind == PATH_EXACT:
            return path == self.value
        assert self.regex is not None
        return self.regex.search(decode(path)) is not None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class ValueMatcher:
    """A header or query value condition: exact text, or a regex when written ``~regex``."""

    text: str
    exact: str | None = None
    exact_bytes: bytes | None = None
    regex: re.Pattern[str] | None = None

    def matches_bytes(self, value: bytes) -> bool:
        """For header values (bytes as received)."""
        if self.exact_bytes is not None:
            return value == self.exact_bytes
        assert self.regex is not None
        return self.regex.search(decode(value)) is not None

    def matches_str(self, value: str) -> bool:
        """For query values (already percent-decoded text)."""
        if self.exact is not None:
            return value == self.exact
        assert self.regex is not None
        return self.regex.search(value) is not None

    def __str__(self) -> str:
        return self.text


ANY_HOST: Final = HostMatcher(HOST_ANY, "")
ROOT_PATH: Final = PathMatcher(PATH_PREFIX, "/", b"/")


def parse_host_pattern(text: str | None) -> HostMatcher:
    """``"example.com"`` | ``"*.example.com"`` | ``"~regex"`` | ``""``/``None`` (any host)."""
    if text is None or text == "":
        return ANY_HOST
    if not isinstance(text, str):
        raise ValueError(f"host must be a string, not {type(text).__name__}")
    if text.strip() != text:
        raise ValueError(f"host {text!r} has leading or trailing whitespace")
    if text.startswith("~"):
        pattern = text[2:] if text.startswith("~*") else text[1:]
        regex = _compile(pattern, re.IGNORECASE, f"host {quote(text)}")
        return HostMatcher(HOST_REGEX, text, regex=regex)
    lowered = text.lower()
    if lowered.startswith("*."):
        rest = lowered[2:]
        if not rest or rest.startswith("[") or "*" in rest:
            raise ValueError(
                f"host {text!r}: a wildcard must be '*.' followed by a host name, "
                "like '*.example.com'"
            )
        name = _check_hostname(rest, text)
        return HostMatcher(HOST_WILDCARD, text, ("." + name).encode("ascii"))
    if lowered == "*":
        raise ValueError("host '*' is not a pattern: leave host out (or empty) to match any host")
    if "*" in lowered:
        raise ValueError(
            f"host {text!r}: '*' is only allowed as a leading '*.' label, like '*.example.com'"
        )
    if lowered.startswith("."):
        raise ValueError(f"host {text!r} starts with '.': write '*.{text[1:]}' for subdomains")
    name = _check_hostname(lowered, text)
    return HostMatcher(HOST_EXACT, text, name.encode("ascii"))


def _check_plain_path(path: str, text: str) -> bytes:
    if not path.startswith("/"):
        raise ValueError(f"path {text!r} must start with '/' (or '~' for a regex)")
    if "?" in path or "#" in path:
        raise ValueError(
            f"path {text!r} must not contain '?' or '#': paths are matched without the query "
            "string (use a query condition)"
        )
    if not _PATH_RE.fullmatch(path):
        raise ValueError(
            f"path {text!r} may only contain printable ASCII without spaces: "
            "percent-encode other characters as clients send them"
        )
    return path.encode("ascii")


def parse_path_pattern(text: str | None) -> PathMatcher:
    """``"=/exact"`` | ``"/prefix"`` | ``"~regex"`` | ``"~*regex"`` | ``None`` (prefix ``/``)."""
    if text is None:
        return ROOT_PATH
    if not isinstance(text, str):
        raise ValueError(f"path must be a string, not {type(text).__name__}")
    if text == "":
        raise ValueError("path is empty: leave it out to match every path, or write '/'")
    if text.startswith("~*"):
        return PathMatcher(PATH_REGEX, text, regex=_compile(text[2:], re.IGNORECASE, f"path {quote(text)}"))
    if text.startswith("~"):
        return PathMatcher(PATH_REGEX, text, regex=_compile(text[1:], 0, f"path {quote(text)}"))
    if text.startswith("="):
        if text == "=":
            raise ValueError("path '=' needs a path after '=', like '=/exact'")
        return PathMatcher(PATH_EXACT, text, _check_plain_path(text[1:], text))
    return PathMatcher(PATH_PREFIX, text, _check_plain_path(text, text))


def parse_value_pattern(text: str) -> ValueMatcher:
    """A header/query condition value: exact text, or ``~regex`` (``re.search``)."""
    if not isinstance(text, str):
        raise ValueError(f"value must be a string, not {type(text).__name__}")
    if text.startswith("~"):
        if text == "~":
            raise ValueError("empty regex after '~' (write '~^' to accept any value)")
        return ValueMatcher(text, regex=_compile(text[1:], 0, f"value {quote(text)}"))
    return ValueMatcher(text, exact=text, exact_bytes=text.encode("utf-8"))


def parse_method(text: str) -> bytes:
    """An HTTP method name for a ``methods`` condition, upper-cased (``"get"`` → ``b"GET"``)."""
    if not isinstance(text, str) or not _TOKEN_RE.fullmatch(text):
        raise ValueError(f"method {text!r} is not a valid HTTP method token")
    return text.upper().encode("ascii")


def parse_header_name(text: str) -> bytes:
    """A header name for a ``headers`` condition, lower-cased (``"X-Canary"`` → ``b"x-canary"``)."""
    if not isinstance(text, str) or not _TOKEN_RE.fullmatch(text):
        raise ValueError(f"header name {text!r} is not a valid HTTP header name")
    return text.lower().encode("ascii")

"""``headers``: add, set and remove request headers (sent upstream) and response headers.

```toml
[filters.h]
kind = "headers"
request_set = { "X-Real-IP" = "$remote_addr" }
request_remove = ["cookie"]
response_add = { "X-Served-By" = "ferryman" }
```

Per direction the edits run in this order: ``*_remove`` (every field of those names), then
``*_set`` (every field of the name replaced by one), then ``*_add`` (another field appended).
Header names are case-insensitive. Values may use the variables of :data:`VARIABLES`
(``$host``, ``${host}``; ``$$`` is a literal ``$``); they are compiled once, at load, and a
value without variables costs nothing per request. Framing and hop-by-hop headers
(``content-length``, ``transfer-encoding``, ``connection``, …) belong to the proxy and are
refused. Request edits happen in ``upstream_request_filter`` (after the proxy's own
``x-forwarded-*`` fields), response edits in ``response_filter``.

This module also holds the header-name/value types and the ``$variable`` templates the other
built-in filters share.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, field_validator

from ...config.model import Strict
from ...protocol.h1.headers import HOP_BY_HOP
from ..base import Filter, Headers
from ..registry import register

if TYPE_CHECKING:
    from ...http.session import Session

# header names and values ------------------------------------------------------------------------
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

#: header fields the proxy frames the message with: filters may not add, set or remove them
MANAGED = frozenset({b"content-length", b"transfer-encoding"} | HOP_BY_HOP)


def check_header_name(value: str) -> str:
    """A header name (an RFC 9110 token), returned lowercase."""
    raw = value.encode("utf-8")
    if not raw or not all(c in _TCHAR for c in raw):
        raise ValueError(f"{value!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~ only)")
    return value.lower()


def check_editable_name(value: str) -> str:
    """A header name a filter may edit: not one of :data:`MANAGED`."""
    name = check_header_name(value)
    if name.encode() in MANAGED:
        raise ValueError(f"{name!r} is managed by the proxy (message framing / hop-by-hop); it cannot be edited")
    return name


def check_header_value(value: str) -> str:
    """A header value: no control characters (CR/LF would split the message); tab allowed."""
    bad = _CTL.search(value)
    if bad:
        raise ValueError(f"header value {value!r} contains the control character {bad.group()!r}")
    return value


HeaderName = Annotated[str, AfterValidator(check_header_name)]
EditableName = Annotated[str, AfterValidator(check_editable_name)]
HeaderValue = Annotated[str, AfterValidator(check_header_value)]


def reject_case_duplicates(table: Any) -> Any:
    """Pydantic "before" validator of a header table: refuse one header named twice in
    different case (``{"X-A" = "1", "x-a" = "2"}``), which lowercasing would merge silently."""
    if isinstance(table, dict):
        seen: dict[str, str] = {}
        for key in table:
            if isinstance(key, str):
                low = key.lower()
                if low in seen:
                    raise ValueError(f"{seen[low]!r} and {key!r} name the same header")
                seen[low] = key
    return table


# $variables -----------------------------------------------------------------------------------
def _host(s: Session) -> bytes:
    """nginx ``$host``: the Host header without its port, lowercased."""
    host = s.header(b"host") or b""
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1].lower() if end > 0 else host.lower()
    return host.split(b":", 1)[0].lower()


def path_and_query(target: bytes) -> bytes:
    """The origin-form part of a request target (``http://h/p?q`` → ``/p?q``)."""
    if target.startswith(b"/") or target == b"*":
        return target
    scheme_end = target.find(b"://")
    if scheme_end < 0:
        return target
    slash = target.find(b"/", scheme_end + 3)
    if slash >= 0:
        return target[slash:]
    query = target.find(b"?", scheme_end + 3)
    return b"/" + target[query:] if query >= 0 else b"/"


def _uri(s: Session) -> bytes:
    return path_and_query(s.upstream_target).split(b"?", 1)[0]


def _args(s: Session) -> bytes:
    target = path_and_query(s.upstream_target)
    mark = target.find(b"?")
    return target[mark + 1 :] if mark >= 0 else b""


Getter = Callable[["Session"], bytes]

#: the ``$name`` variables values may use, with their nginx meanings
VARIABLES: dict[str, Getter] = {
    "remote_addr": lambda s: s.client_ip.encode(),  # client IP ("" on a unix socket)
    "host": _host,  # Host header, port removed, lowercase
    "scheme": lambda s: b"https" if s.tls else b"http",  # of the downstream connection
    "request_id": lambda s: str(s.vars.get("request_id", "")).encode(),  # set by request_id
    "request_uri": lambda s: path_and_query(s.request.target),  # as the client sent it
    "uri": _uri,  # path of the (possibly rewritten) target, without the query
    "args": _args,  # query of the (possibly rewritten) target, without "?"
}

_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*)|(\{))")

#: a compiled value: constant bytes, or a function of the session
Template = bytes | Getter


def compile_template(text: str) -> Template:
    """Compile ``text`` with ``$name`` / ``${name}`` variables (``$$`` = ``$``; a ``$`` not
    followed by a name stays literal). Returns bytes when there is no variable; raises
    ValueError naming an unknown variable."""
    parts: list[bytes | Getter] = []
    literal = ""
    pos = 0
    for match in _VAR.finditer(text):
        literal += text[pos : match.start()]
        pos = match.end()
        braced, bare, open_brace = match.groups()
        if open_brace is not None:
            raise ValueError(f"{text!r}: \"${{\" must be followed by a variable name and \"}}\"")
        name = braced or bare
        if name is None:  # "$$"
            literal += "$"
            continue
        getter = VARIABLES.get(name)
        if getter is None:
            known = ", ".join("$" + n for n in sorted(VARIABLES))
            raise ValueError(f"{text!r}: unknown variable ${name} (known: {known}; write $$ for a literal $)")
        if literal:
            parts.append(literal.encode("utf-8"))
            literal = ""
        parts.append(getter)
    literal += text[pos:]
    if literal:
        parts.append(literal.encode("utf-8"))
    if all(isinstance(p, bytes) for p in parts):
        return b"".join(parts)  # type: ignore[arg-type]
    if len(parts) == 1:
        return parts[0]
    frozen = tuple(parts)

    def render_parts(s: Session) -> bytes:
        return b"".join([p if isinstance(p, bytes) else p(s) for p in frozen])

    return render_parts


def check_template(text: str) -> str:
    """Pydantic validator: ``text`` compiles (its value is kept as written)."""
    compile_template(text)
    return text


def render(template: Template, s: Session) -> bytes:
    """The value of a compiled template for this request."""
    return template if isinstance(template, bytes) else template(s)


TemplateValue = Annotated[str, AfterValidator(check_header_value), AfterValidator(check_template)]


# the edits ------------------------------------------------------------------------------------
class HeaderEdits:
    """One direction's compiled edits: drop names, then append (name, template) pairs."""

    __slots__ = ("drop", "empty", "pairs", "static")

    def __init__(self, remove: list[str], set_: dict[str, str], add: dict[str, str]) -> None:
        self.drop = frozenset(n.encode() for n in remove) | frozenset(n.encode() for n in set_)
        pairs = [(n.encode(), compile_template(v)) for n, v in (*set_.items(), *add.items())]
        self.pairs = tuple(pairs)
        self.static = all(isinstance(v, bytes) for _, v in pairs)
        self.empty = not self.drop and not self.pairs

    def apply(self, s: Session, headers: Headers) -> None:
        if self.drop:
            drop = self.drop
            headers[:] = [h for h in headers if h[0] not in drop]
        if self.static:
            headers.extend(self.pairs)  # type: ignore[arg-type]
        else:
            for name, value in self.pairs:
                headers.append((name, value if isinstance(value, bytes) else value(s)))


@register
class HeadersFilter(Filter):
    """Edit request headers sent upstream and response headers sent downstream."""

    kind = "headers"

    class Config(Strict):
        request_add: dict[EditableName, TemplateValue] = {}
        request_set: dict[EditableName, TemplateValue] = {}
        request_remove: list[EditableName] = []
        response_add: dict[EditableName, TemplateValue] = {}
        response_set: dict[EditableName, TemplateValue] = {}
        response_remove: list[EditableName] = []

        _no_case_duplicates = field_validator("request_add", "request_set", "response_add", "response_set", mode="before")(
            reject_case_duplicates
        )

    def __init__(self, name: str, config: HeadersFilter.Config) -> None:
        super().__init__(name, config)
        self.request = HeaderEdits(config.request_remove, config.request_set, config.request_add)
        self.response = HeaderEdits(config.response_remove, config.response_set, config.response_add)

    def upstream_request_filter(self, session: Session, headers: Headers) -> None:
        if not self.request.empty:
            self.request.apply(session, headers)

    def response_filter(self, session: Session, headers: Headers) -> None:
        if not self.response.empty:
            self.response.apply(session, headers)

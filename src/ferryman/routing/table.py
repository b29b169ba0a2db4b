"""The HTTP route table: built once per config, matched per request. Sans-IO.

Priority, first match wins. Routes are ordered by this key, smallest first:

1. ``-priority``: an explicit ``priority`` (default 0) overrides everything below; higher
   first, negative values go after every default route.
2. host kind: exact, then wildcard, then regex, then any host.
3. within the kind: wildcards with the longer suffix first; regex hosts in config order of
   the first route using that exact pattern text (routes sharing a host pattern are kept
   together); exact hosts never compete with each other, they group by first appearance.
4. path kind: ``=exact``, then prefix, then regex.
5. within the kind: the longer prefix first; regex paths in config order.
6. config order.

Conditions (methods, headers, query) do not change the order: a route whose conditions
fail is skipped and the next one is tried. So a canary route with a header condition must
come before (or out-prioritise) its unconditional twin.

Speed: exact hosts index a dict of pre-sorted candidate lists in which every host check
(including wildcard and regex hosts, evaluated at build time against that host) is already
done; other hosts scan one pre-sorted fallback list. Bytes are decoded only when a regex
must run, and the query string is parsed only when a route with a query condition is
reached.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl

from .matchers import (
    HOST_ANY,
    HOST_EXACT,
    HOST_REGEX,
    HOST_WILDCARD,
    PATH_EXACT,
    PATH_PREFIX,
    HostMatcher,
    PathMatcher,
    ValueMatcher,
    decode,
    normalize_host,
    parse_header_name,
    parse_host_pattern,
    parse_method,
    parse_path_pattern,
    parse_value_pattern,
)

__all__ = ["RouteSpec", "RouteTable", "parse_query", "split_target"]

# Entry codes used by the match loop (ordered by how common the check is).
_H_NONE: Final = 0  # any host, or already checked when the candidate list was built
_H_WILD: Final = 1
_H_REGEX: Final = 2
_P_PREFIX: Final = 0
_P_EXACT: Final = 1
_P_REGEX: Final = 2


def _pairs(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    if isinstance(value, Mapping):
        return tuple(value.items())
    try:
        return tuple((k, v) for k, v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a mapping or (name, value) pairs") from None


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One route as the config (or a framework user) states it.

    ``host``/``path`` are pattern text (see :mod:`ferryman.routing.matchers`); ``None``
    means any host / prefix ``/``. ``methods``, ``headers`` and ``query`` may be given as
    lists and dicts: they are stored as tuples. ``target`` is opaque to routing (e.g. the
    compiled route) and takes no part in equality.
    """

    name: str
    host: str | None = None
    path: str | None = None
    methods: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    priority: int | None = None
    target: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.methods, str):
            raise TypeError("methods must be a list of method names, not a string")
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "headers", _pairs(self.headers, "headers"))
        object.__setattr__(self, "query", _pairs(self.query, "query"))


class _Conditions:
    """The optional per-route conditions, all of which must hold."""

    __slots__ = ("headers", "methods", "query")

    def __init__(
        self,
        methods: frozenset[bytes] | None,
        headers: tuple[tuple[bytes, ValueMatcher], ...],
        query: tuple[tuple[str, ValueMatcher], ...],
    ) -> None:
        self.methods = methods
        self.headers = headers
        self.query = query

    def headers_ok(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """Every condition is met by at least one header line of that name."""
        for name, matcher in self.headers:
            for n, v in headers:
                if n == name and matcher.matches_bytes(v):
                    break
            else:
                return False
        return True

    def query_ok(self, pairs: list[tuple[str, str]]) -> bool:
        """Every condition is met by at least one query parameter of that name."""
        for name, matcher in self.query:
            for k, v in pairs:
                if k == name and matcher.matches_str(v):
                    break
            else:
                return False
        return True


_Entry = tuple[int, Any, int, Any, "_Conditions | None", RouteSpec]


class _Route:
    """A compiled route: matchers, conditions, sort key."""

    __slots__ = ("cond", "host", "key", "path", "spec")

    def __init__(
        self, spec: RouteSpec, host: HostMatcher, path: PathMatcher, cond: _Conditions | None
    ) -> None:
        self.spec = spec
        self.host = host
        self.path = path
        self.cond = cond
        self.key: tuple[int, ...] = ()

    def entry(self, host_checked: bool) -> _Entry:
        """The match loop's view: (host code, host value, path code, path value, cond, spec)."""
        host = self.host
        hkind: int
        hval: Any
        pkind: int
        pval: Any
        if host_checked or host.kind in (HOST_ANY, HOST_EXACT):
            hkind, hval = _H_NONE, None
        elif host.kind == HOST_WILDCARD:
            hkind, hval = _H_WILD, host.value
        else:
            hkind, hval = _H_REGEX, host.regex
        path = self.path
        if path.kind == PATH_PREFIX:
            pkind, pval = _P_PREFIX, path.value
        elif path.kind == PATH_EXACT:
            pkind, pval = _P_EXACT, path.value
        else:
            assert path.regex is not None
            pkind, pval = _P_REGEX, path.regex.search
        return (hkind, hval, pkind, pval, self.cond, self.spec)

    def describe(self) -> str:
        spec = self.spec
        parts = [f"host {self.host}", f"path {self.path}"]
        if spec.methods:
            parts.append("methods " + ",".join(m.upper() for m in spec.methods))
        parts.extend(f"header {k.lower()}: {v}" for k, v in spec.headers)
        parts.extend(f"query {k}: {v}" for k, v in spec.query)
        if spec.priority is not None:
            parts.append(f"priority {spec.priority}")
        return ", ".join(parts)


def _compile(
    spec: RouteSpec, hosts: dict[str, HostMatcher], paths: dict[str | None, PathMatcher]
) -> _Route:
    """Parse one spec; errors name the route and the field."""
    name = spec.name
    if not isinstance(name, str):
        raise ValueError(f"route name must be a string, not {type(name).__name__}")
    prefix = f"route {name!r}: "
    if spec.priority is not None and (isinstance(spec.priority, bool) or not isinstance(spec.priority, int)):
        raise ValueError(f"{prefix}priority must be an integer, not {spec.priority!r}")
    try:
        # Share matchers between routes with the same text (regex hosts rely on identity).
        host = hosts.get(spec.host or "")
        if host is None:
            host = hosts[spec.host or ""] = parse_host_pattern(spec.host)
        path = paths.get(spec.path)
        if path is None:
            path = paths[spec.path] = parse_path_pattern(spec.path)
    except ValueError as exc:
        raise ValueError(prefix + str(exc)) from None
    methods: frozenset[bytes] | None = None
    if spec.methods:
        try:
            methods = frozenset(parse_method(m) for m in spec.methods)
        except ValueError as exc:
            raise ValueError(f"{prefix}methods: {exc}") from None
    headers = []
    for key, value in spec.headers:
        try:
            headers.append((parse_header_name(key), parse_value_pattern(value)))
        except ValueError as exc:
            raise ValueError(f"{prefix}headers.{key}: {exc}") from None
    query = []
    for key, value in spec.query:
        if not isinstance(key, str) or not key:
            raise ValueError(f"{prefix}query: parameter name {key!r} must be a non-empty string")
        try:
            query.append((key, parse_value_pattern(value)))
        except ValueError as exc:
            raise ValueError(f"{prefix}query.{key}: {exc}") from None
    cond = None
    if methods or headers or query:
        cond = _Conditions(methods, tuple(headers), tuple(query))
    return _Route(spec, host, path, cond)


def parse_query(query: bytes) -> list[tuple[str, str]]:
    """Query string → ``[(name, value)]``, percent-decoded (UTF-8, lossless), blanks kept."""
    return parse_qsl(decode(query), keep_blank_values=True, encoding="utf-8", errors="surrogateescape")


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Request target → ``(path, query)`` without the ``?``.

    Origin-form (``/a/b?x=1``) is the fast path. Absolute-form (``http://h/a?x=1``, sent to
    proxies) loses its scheme and authority, and an empty path becomes ``/``; the caller
    decides whether that authority overrides Host. Anything else (``*``, authority-form)
    is returned as the path, which no route pattern matches.
    """
    q = target.find(b"?")
    if q < 0:
        path, query = target, b""
    else:
        path, query = target[:q], target[q + 1 :]
    if path[:1] != b"/":
        sep = path.find(b"://")
        if sep > 0:
            slash = path.find(b"/", sep + 3)
            path = path[slash:] if slash >= 0 else b"/"
    return path, query


class RouteTable:
    """Routes in priority order; :meth:`match` picks the first whose host, path and
    conditions all hold. Immutable once built; build a new one on reload."""

    __slots__ = ("_by_host", "_compiled", "_fallback", "_normalize", "routes")

    def __init__(self, specs: Iterable[RouteSpec]) -> None:
        hosts: dict[str, HostMatcher] = {}
        paths: dict[str | None, PathMatcher] = {}
        compiled: list[_Route] = []
        names: set[str] = set()
        exact_first: dict[bytes, int] = {}
        regex_first: dict[str, int] = {}
        for index, spec in enumerate(specs):
            if not isinstance(spec, RouteSpec):
                raise TypeError(f"expected RouteSpec, got {type(spec).__name__}")
            if spec.name in names:
                raise ValueError(f"route {spec.name!r} is defined twice")
            names.add(spec.name)
            route = _compile(spec, hosts, paths)
            host, path = route.host, route.path
            if host.kind == HOST_EXACT:
                host_sub = exact_first.setdefault(host.value, index)
            elif host.kind == HOST_WILDCARD:
                host_sub = -len(host.value)
            elif host.kind == HOST_REGEX:
                host_sub = regex_first.setdefault(host.text, index)
            else:
                host_sub = 0
            path_sub = -len(path.value) if path.kind == PATH_PREFIX else 0
            priority = spec.priority or 0
            route.key = (-priority, host.kind, host_sub, path.kind, path_sub, index)
            compiled.append(route)
        compiled.sort(key=lambda r: r.key)
        self._compiled: tuple[_Route, ...] = tuple(compiled)
        self.routes: tuple[RouteSpec, ...] = tuple(r.spec for r in compiled)

        non_exact = [r for r in compiled if r.host.kind != HOST_EXACT]
        self._fallback: tuple[_Entry, ...] = tuple(r.entry(False) for r in non_exact)
        by_host: dict[bytes, tuple[_Entry, ...]] = {}
        for value in exact_first:
            text = decode(value)
            cands = [
                r for r in compiled
                if (r.host.value == value if r.host.kind == HOST_EXACT else _host_fits(r.host, value, text))
            ]
            by_host[value] = tuple(r.entry(True) for r in cands)
        self._by_host = by_host
        self._normalize = bool(by_host) or any(e[0] != _H_NONE for e in self._fallback)

    def __len__(self) -> int:
        return len(self.routes)

    def match(
        self,
        host: bytes | None,
        path: bytes,
        method: bytes = b"GET",
        headers: Sequence[tuple[bytes, bytes]] = (),
        query: bytes = b"",
    ) -> RouteSpec | None:
        """The first route matching the request, or ``None``.

        ``host`` is the raw Host header (``None`` or empty: only any-host routes can
        match); ``path`` and ``query`` come from :func:`split_target`; header names are
        lower-case bytes.
        """
        h: bytes | None = None
        entries = None
        if host:
            entries = self._by_host.get(host)  # raw header already normalised: no copy
            if entries is None:
                if self._normalize:
                    h = normalize_host(host)
                    entries = self._by_host.get(h)
                if entries is None:
                    entries = self._fallback
        else:
            entries = self._fallback
        spath: str | None = None
        hs: str | None = None
        last_re: re.Pattern[str] | None = None
        last_ok = False
        qpairs: list[tuple[str, str]] | None = None
        for hkind, hval, pkind, pval, cond, spec in entries:
            if hkind:
                if h is None:
                    continue
                if hkind == _H_WILD:
                    if len(h) <= len(hval) or not h.endswith(hval):
                        continue
                else:
                    if hval is not last_re:
                        if hs is None:
                            hs = decode(h)
                        last_re = hval
                        last_ok = hval.search(hs) is not None
                    if not last_ok:
                        continue
            if pkind == _P_PREFIX:
                if not path.startswith(pval):
                    continue
            elif pkind == _P_EXACT:
                if path != pval:
                    continue
            else:
                if spath is None:
                    spath = decode(path)
                if pval(spath) is None:
                    continue
            if cond is None:
                return spec
            if cond.methods is not None and method not in cond.methods:
                continue
            if cond.headers and not cond.headers_ok(headers):
                continue
            if cond.query:
                if qpairs is None:
                    qpairs = parse_query(query)
                if not cond.query_ok(qpairs):
                    continue
            return spec
        return None

    def describe(self) -> list[tuple[str, str]]:
        """``[(name, "host *.example.com, path /api, methods GET")]`` in priority order
        (for the admin API)."""
        return [(r.spec.name, r.describe()) for r in self._compiled]


def _host_fits(host: HostMatcher, value: bytes, text: str) -> bool:
    """Build time: does a non-exact host pattern accept the normalised host ``value``?"""
    if host.kind == HOST_ANY:
        return True
    if host.kind == HOST_WILDCARD:
        return len(value) > len(host.value) and value.endswith(host.value)
    assert host.regex is not None
    return host.regex.search(text) is not None

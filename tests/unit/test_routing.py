"""Route matching: every matcher kind, every priority rule, conditions, rewrite, bad patterns,
and a brute-force reference for random route sets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferryman.routing import (
    PathRewrite,
    RouteSpec,
    RouteTable,
    normalize_host,
    parse_header_name,
    parse_host_pattern,
    parse_method,
    parse_path_pattern,
    parse_query,
    parse_value_pattern,
    split_target,
)


def only(host: str | None = None, path: str | None = None, **kw: Any) -> RouteTable:
    """A table holding one route named "r"."""
    return RouteTable([RouteSpec("r", host=host, path=path, **kw)])


def hit(table: RouteTable, host: bytes | None, path: bytes = b"/", method: bytes = b"GET",
        headers: list[tuple[bytes, bytes]] | None = None, query: bytes = b"") -> str | None:
    spec = table.match(host, path, method, headers or [], query)
    return None if spec is None else spec.name


# ------------------------------------------------------------------------- host matchers

HOST_CASES = [
    # pattern, request Host, matches
    ("example.com", b"example.com", True),
    ("example.com", b"EXAMPLE.Com", True),
    ("Example.COM", b"example.com", True),
    ("example.com", b"example.com:8080", True),
    ("example.com", b"Example.com:443", True),
    ("example.com", b"example.com.", True),
    ("example.com.", b"example.com", True),
    ("example.com", b"www.example.com", False),
    ("example.com", b"example.co", False),
    ("example.com", b"example.com.evil", False),
    ("example.com", b"", False),
    ("example.com", None, False),
    ("10.0.0.1", b"10.0.0.1:80", True),
    ("[::1]", b"[::1]:8080", True),
    ("[::1]", b"[::1]", True),
    ("[::1]", b"[::2]", False),
    ("*.example.com", b"a.example.com", True),
    ("*.example.com", b"a.b.example.com", True),
    ("*.example.com", b"A.Example.com:8443", True),
    ("*.example.com", b"example.com", False),
    ("*.example.com", b".example.com", False),
    ("*.example.com", b"aexample.com", False),
    ("*.example.com", b"a.example.com.evil", False),
    ("*.example.com", b"example.org", False),
    ("*.example.com", None, False),
    ("*.a.example.com", b"x.a.example.com", True),
    ("*.a.example.com", b"a.example.com", False),
    ("~^api\\d+\\.example\\.com$", b"api12.example.com", True),
    ("~^api\\d+\\.example\\.com$", b"API7.EXAMPLE.com:81", True),
    ("~^api\\d+\\.example\\.com$", b"api.example.com", False),
    ("~^api\\d+\\.example\\.com$", b"xapi1.example.com", False),
    ("~example", b"www.example.org", True),  # re.search, not fullmatch
    ("~example", b"www.exampl.org", False),
    ("~^a\\.b$", b"a.b:99", True),  # the port is stripped before the regex runs
    ("~*^WWW\\.", b"www.x.org", True),
    ("~.", None, False),  # no host: only any-host routes match
    ("", b"anything.example", True),
    ("", b"", True),
    ("", None, True),
    (None, None, True),
    (None, b"x:1", True),
]


@pytest.mark.parametrize(("pattern", "host", "expected"), HOST_CASES)
def test_host_matcher(pattern: str | None, host: bytes | None, expected: bool) -> None:
    assert parse_host_pattern(pattern).matches(host) is expected
    # The table inlines these checks on three paths: the raw Host is an indexed exact host,
    # the normalised one is, or neither (fallback scan). Cover all with a decoy exact host.
    assert (hit(only(pattern), host) == "r") is expected
    decoy = RouteTable([RouteSpec("decoy", host="decoy.test", path="=/nope"), RouteSpec("r", host=pattern)])
    assert (hit(decoy, host) == "r") is expected
    if host:
        exact = normalize_host(host).decode()
        if not exact.startswith("."):
            pinned = RouteTable([RouteSpec("pin", host=exact, path="=/nope"), RouteSpec("r", host=pattern)])
            assert (hit(pinned, host) == "r") is expected


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"Example.COM", b"example.com"),
        (b"example.com:8080", b"example.com"),
        (b"example.com.:8080", b"example.com"),
        (b"[::1]:8080", b"[::1]"),
        (b"[FE80::1]", b"[fe80::1]"),
        (b"10.0.0.1:1", b"10.0.0.1"),
    ],
)
def test_normalize_host(raw: bytes, normal: bytes) -> None:
    assert normalize_host(raw) == normal


# ------------------------------------------------------------------------- path matchers

PATH_CASES = [
    ("=/exact", b"/exact", True),
    ("=/exact", b"/exact/", False),
    ("=/exact", b"/exactly", False),
    ("=/exact", b"/Exact", False),
    ("=/", b"/", True),
    ("=/", b"/a", False),
    ("/api", b"/api", True),
    ("/api", b"/api/v1", True),
    ("/api", b"/apix", True),  # plain prefix, like nginx `location /api`
    ("/api", b"/ap", False),
    ("/api", b"/API", False),
    ("/api/", b"/api", False),
    ("/", b"/anything", True),
    (None, b"/", True),
    (None, b"/deep/path", True),
    (None, b"*", False),
    ("~^/v\\d+/", b"/v2/users", True),
    ("~^/v\\d+/", b"/v/users", False),
    ("~^/v\\d+/", b"/x/v2/users", False),
    ("~\\.png$", b"/img/a.png", True),  # re.search, anywhere in the path
    ("~\\.png$", b"/img/a.png.txt", False),
    ("~^/API", b"/api", False),
    ("~*^/API", b"/api/x", True),
    ("~^/caf\u00e9$", "/caf\u00e9".encode(), True),  # regexes see UTF-8 text
    ("~^/a.$", b"/a\xff", True),  # undecodable bytes still match (as one surrogate)
]


@pytest.mark.parametrize(("pattern", "path", "expected"), PATH_CASES)
def test_path_matcher(pattern: str | None, path: bytes, expected: bool) -> None:
    assert parse_path_pattern(pattern).matches(path) is expected
    assert (hit(only(None, pattern), b"h", path) == "r") is expected
    assert (hit(only("h", pattern), b"h", path) == "r") is expected


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/", b"/", b""),
        (b"/a/b", b"/a/b", b""),
        (b"/a?x=1&y", b"/a", b"x=1&y"),
        (b"/a?", b"/a", b""),
        (b"/a?b?c", b"/a", b"b?c"),
        (b"http://example.com/a/b?x=1", b"/a/b", b"x=1"),
        (b"http://example.com", b"/", b""),
        (b"https://example.com:8443?x", b"/", b"x"),
        (b"*", b"*", b""),
        (b"example.com:443", b"example.com:443", b""),
    ],
)
def test_split_target(target: bytes, path: bytes, query: bytes) -> None:
    assert split_target(target) == (path, query)


# ------------------------------------------------------------------------- priority rules

R = RouteSpec

PRIORITY_CASES = [
    # id, routes (config order), request (host, path), expected route name
    ("exact host before wildcard", [R("w", "*.example.com"), R("e", "www.example.com")],
     (b"www.example.com", b"/"), "e"),
    ("wildcard before regex", [R("r", "~example"), R("w", "*.example.com")],
     (b"www.example.com", b"/"), "w"),
    ("regex before any host", [R("any"), R("r", "~example")], (b"www.example.com", b"/"), "r"),
    ("exact before any host", [R("any"), R("e", "example.com")], (b"example.com", b"/"), "e"),
    ("longer wildcard first", [R("short", "*.example.com"), R("long", "*.a.example.com")],
     (b"x.a.example.com", b"/"), "long"),
    ("shorter wildcard when the longer misses", [R("short", "*.example.com"), R("long", "*.a.example.com")],
     (b"x.b.example.com", b"/"), "short"),
    ("regex hosts in config order", [R("r1", "~^www"), R("r2", "~example")], (b"www.example.com", b"/"), "r1"),
    ("regex hosts in config order, reversed", [R("r2", "~example"), R("r1", "~^www")],
     (b"www.example.com", b"/"), "r2"),
    ("a regex host that misses does not hide the next", [R("r1", "~^zzz"), R("r2", "~example")],
     (b"www.example.com", b"/"), "r2"),
    ("routes sharing a regex host stay together",
     [R("x1", "~x", "/a"), R("y", "~y", "/a/b"), R("x2", "~x", "/a/b")], (b"xy", b"/a/b"), "x2"),
    ("host beats path specificity", [R("any-exact-path", None, "=/a"), R("host", "h", "/")],
     (b"h", b"/a"), "host"),
    ("exact path before prefix", [R("p", "h", "/a"), R("x", "h", "=/a")], (b"h", b"/a"), "x"),
    ("longest prefix first", [R("short", "h", "/a"), R("long", "h", "/a/b")], (b"h", b"/a/b/c"), "long"),
    ("prefix before regex", [R("re", "h", "~^/a"), R("p", "h", "/a")], (b"h", b"/a/b"), "p"),
    ("no path is prefix / and beats a regex", [R("re", None, "~^/a"), R("root")], (b"h", b"/a"), "root"),
    ("regex paths in config order", [R("re1", "h", "~^/a"), R("re2", "h", "~/a/b")], (b"h", b"/a/b"), "re1"),
    ("regex paths in config order, reversed", [R("re2", "h", "~/a/b"), R("re1", "h", "~^/a")],
     (b"h", b"/a/b"), "re2"),
    ("explicit priority beats host kind",
     [R("e", "www.example.com"), R("any", priority=10)], (b"www.example.com", b"/"), "any"),
    ("explicit priority beats path kind", [R("x", "h", "=/a"), R("re", "h", "~^/", priority=1)],
     (b"h", b"/a"), "re"),
    ("higher priority first", [R("p1", priority=1), R("p5", priority=5), R("p3", priority=3)], (b"h", b"/"), "p5"),
    ("negative priority after defaults", [R("neg", "h", "=/a", priority=-1), R("any")], (b"h", b"/a"), "any"),
    ("priority 0 is the default", [R("zero", priority=0), R("e", "h")], (b"h", b"/"), "e"),
    ("equal priority falls back to the rules", [R("any", priority=2), R("e", "h", priority=2)], (b"h", b"/"), "e"),
    ("config order breaks ties", [R("first", "h", "/a"), R("second", "h", "/a")], (b"h", b"/a"), "first"),
    ("config order breaks ties (any host)", [R("first"), R("second")], (b"h", b"/"), "first"),
    ("same wildcard and prefix tie by config order",
     [R("one", "*.x.org", "/p"), R("two", "*.x.org", "/p")], (b"a.x.org", b"/p"), "one"),
    ("falls through to the next host class", [R("e", "h", "/only"), R("any", None, "/")],
     (b"h", b"/other"), "any"),
    ("no host: only any-host routes", [R("e", "h"), R("w", "*.h"), R("r", "~."), R("any", None, "/z")],
     (None, b"/z"), "any"),
]


# Answers that follow from the rules alone must not change when the config order does.
ORDER_DEPENDENT = {"regex hosts in config order", "regex hosts in config order, reversed",
                   "regex paths in config order", "regex paths in config order, reversed",
                   "config order breaks ties", "config order breaks ties (any host)",
                   "same wildcard and prefix tie by config order", "routes sharing a regex host stay together"}


@pytest.mark.parametrize(("case", "routes", "request_", "expected"), PRIORITY_CASES,
                         ids=[c[0] for c in PRIORITY_CASES])
def test_priority(case: str, routes: list[RouteSpec], request_: tuple[bytes, bytes], expected: str) -> None:
    assert hit(RouteTable(routes), *request_) == expected
    if case not in ORDER_DEPENDENT:
        assert hit(RouteTable(list(reversed(routes))), *request_) == expected


def test_describe_lists_routes_in_priority_order() -> None:
    table = RouteTable([
        R("any"),
        R("re-path", "example.com", "~^/v\\d"),
        R("prefix", "example.com", "/api"),
        R("wild", "*.example.com", methods=["get", "post"], headers={"X-Canary": "1"}, query={"debug": "~."}),
        R("exact", "example.com", "=/"),
        R("top", None, "/", priority=7),
    ])
    assert [name for name, _ in table.describe()] == ["top", "exact", "prefix", "re-path", "wild", "any"]
    assert [s.name for s in table.routes] == ["top", "exact", "prefix", "re-path", "wild", "any"]
    assert len(table) == 6
    described = dict(table.describe())
    assert described["wild"] == "host *.example.com, path /, methods GET,POST, header x-canary: 1, query debug: ~."
    assert described["top"] == "host *, path /, priority 7"
    assert described["exact"] == "host example.com, path =/"


def test_exact_host_groups_follow_first_appearance() -> None:
    table = RouteTable([R("b1", "b.org"), R("a1", "a.org", "/x"), R("b2", "B.org.", "/long")])
    assert [s.name for s in table.routes] == ["b2", "b1", "a1"]
    assert hit(table, b"b.org", b"/longer") == "b2"
    assert hit(table, b"b.org", b"/x") == "b1"
    assert hit(table, b"a.org:1", b"/x") == "a1"


# ------------------------------------------------------------------------- conditions

CONDITION_CASES = [
    # route kwargs, (method, headers, query), matches
    ({"methods": ["GET", "POST"]}, (b"GET", [], b""), True),
    ({"methods": ["GET", "POST"]}, (b"POST", [], b""), True),
    ({"methods": ["GET", "POST"]}, (b"DELETE", [], b""), False),
    ({"methods": ["get"]}, (b"GET", [], b""), True),
    ({"methods": ["GET"]}, (b"get", [], b""), False),  # methods are case-sensitive on the wire
    ({"headers": {"x-canary": "1"}}, (b"GET", [(b"x-canary", b"1")], b""), True),
    ({"headers": {"X-Canary": "1"}}, (b"GET", [(b"x-canary", b"1")], b""), True),
    ({"headers": {"x-canary": "1"}}, (b"GET", [(b"x-canary", b"10")], b""), False),
    ({"headers": {"x-canary": "1"}}, (b"GET", [], b""), False),
    ({"headers": {"x-canary": "1"}}, (b"GET", [(b"x-canary", b"0"), (b"x-canary", b"1")], b""), True),
    ({"headers": {"x-canary": "~^[12]$"}}, (b"GET", [(b"x-canary", b"2")], b""), True),
    ({"headers": {"x-canary": "~^[12]$"}}, (b"GET", [(b"x-canary", b"3")], b""), False),
    ({"headers": {"x-canary": "~^"}}, (b"GET", [(b"x-canary", b"")], b""), True),  # presence
    ({"headers": {"a": "1", "b": "2"}}, (b"GET", [(b"a", b"1"), (b"b", b"2")], b""), True),
    ({"headers": {"a": "1", "b": "2"}}, (b"GET", [(b"a", b"1")], b""), False),
    ({"headers": {"ua": "~Firefox"}}, (b"GET", [(b"ua", b"Mozilla/5.0 Firefox/1")], b""), True),
    ({"headers": {"x": "caf\u00e9"}}, (b"GET", [(b"x", "caf\u00e9".encode())], b""), True),
    ({"query": {"debug": "1"}}, (b"GET", [], b"debug=1"), True),
    ({"query": {"debug": "1"}}, (b"GET", [], b"a=2&debug=1"), True),
    ({"query": {"debug": "1"}}, (b"GET", [], b"debug=%31"), True),  # percent-decoded
    ({"query": {"debug": "1"}}, (b"GET", [], b"debug=2"), False),
    ({"query": {"debug": "1"}}, (b"GET", [], b""), False),
    ({"query": {"debug": ""}}, (b"GET", [], b"debug"), True),  # blank values kept
    ({"query": {"debug": ""}}, (b"GET", [], b"debug="), True),
    ({"query": {"q": "a b"}}, (b"GET", [], b"q=a+b"), True),
    ({"query": {"debug": "~^(1|true)$"}}, (b"GET", [], b"debug=true"), True),
    ({"query": {"debug": "~^(1|true)$"}}, (b"GET", [], b"debug=yes"), False),
    ({"query": {"name": "~^caf\u00e9$"}}, (b"GET", [], b"name=caf%C3%A9"), True),
    ({"query": {"x": "1"}}, (b"GET", [], b"x=\xff&x=1"), True),  # raw non-UTF-8 bytes survive
    ({"methods": ["POST"], "headers": {"a": "1"}, "query": {"b": "2"}}, (b"POST", [(b"a", b"1")], b"b=2"), True),
    ({"methods": ["POST"], "headers": {"a": "1"}, "query": {"b": "2"}}, (b"GET", [(b"a", b"1")], b"b=2"), False),
    ({"methods": ["POST"], "headers": {"a": "1"}, "query": {"b": "2"}}, (b"POST", [(b"a", b"2")], b"b=2"), False),
    ({"methods": ["POST"], "headers": {"a": "1"}, "query": {"b": "2"}}, (b"POST", [(b"a", b"1")], b"b=3"), False),
]


@pytest.mark.parametrize(("kwargs", "request_", "expected"), CONDITION_CASES)
def test_conditions(kwargs: dict[str, Any], request_: tuple[bytes, list[tuple[bytes, bytes]], bytes],
                    expected: bool) -> None:
    method, headers, query = request_
    assert (hit(only("h", "/", **kwargs), b"h", b"/", method, headers, query) == "r") is expected
    assert (hit(only(None, "/", **kwargs), b"h", b"/", method, headers, query) == "r") is expected


def test_failed_condition_falls_through_to_the_next_route() -> None:
    table = RouteTable([
        R("canary", "example.com", "/api", headers={"x-canary": "1"}),
        R("api", "example.com", "/api"),
    ])
    assert hit(table, b"example.com", b"/api/x", headers=[(b"x-canary", b"1")]) == "canary"
    assert hit(table, b"example.com", b"/api/x") == "api"
    # Listed the other way round, the unconditional twin wins: conditions do not reorder.
    flipped = RouteTable([
        R("api", "example.com", "/api"),
        R("canary", "example.com", "/api", headers={"x-canary": "1"}),
    ])
    assert hit(flipped, b"example.com", b"/api/x", headers=[(b"x-canary", b"1")]) == "api"


class _NoDecode(bytes):
    """Bytes that fail the test if anything decodes them."""

    def decode(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
        raise AssertionError("decoded although no regex or query condition needed it")


def test_no_decoding_or_query_parsing_without_a_need() -> None:
    table = RouteTable([
        R("e", "example.com", "=/x"),
        R("w", "*.example.com", "/api"),
        R("q", "example.com", "/q", query={"a": "1"}),
        R("any", None, "/"),
    ])
    for host in (b"example.com", b"EXAMPLE.COM:80", b"a.example.com", b"other", None):
        assert hit(table, host, _NoDecode(b"/x"), query=_NoDecode(b"a=1")) in {"e", "any"}
    # The query is parsed once the query route is reached, and only then.
    assert hit(table, b"example.com", b"/q", query=b"a=1") == "q"
    with pytest.raises(AssertionError, match="decoded"):
        table.match(b"example.com", b"/q", b"GET", [], _NoDecode(b"a=1"))


def test_regex_decodes_the_path() -> None:
    table = RouteTable([R("re", None, "~^/x$")])
    with pytest.raises(AssertionError, match="decoded"):
        table.match(b"h", _NoDecode(b"/x"), b"GET", [], b"")


def test_no_match_is_none() -> None:
    table = RouteTable([
        R("e", "example.com", "=/x", methods=["GET"]),
        R("w", "*.example.com", "/api"),
        R("r", "~^api", "~^/v1/"),
    ])
    for host, path, method in [
        (b"example.com", b"/y", b"GET"),
        (b"example.com", b"/x", b"POST"),
        (b"example.com", b"/api", b"GET"),
        (b"a.example.com", b"/x", b"GET"),
        (b"api.org", b"/v2/", b"GET"),
        (b"other.org", b"/api", b"GET"),
        (None, b"/x", b"GET"),
        (b"", b"/api", b"GET"),
    ]:
        assert table.match(host, path, method, [], b"") is None, (host, path, method)
    assert RouteTable([]).match(b"h", b"/", b"GET", [], b"") is None
    assert len(RouteTable([])) == 0


def test_match_returns_the_spec_with_its_target() -> None:
    target = object()
    spec = RouteSpec("api", "example.com", "/api", target=target)
    found = RouteTable([spec]).match(b"example.com", b"/api", b"GET", [], b"")
    assert found is spec and found.target is target


def test_route_spec_normalises_collections() -> None:
    spec = RouteSpec("r", methods=["GET"], headers={"a": "1"}, query=[("b", "2")])
    assert spec.methods == ("GET",)
    assert spec.headers == (("a", "1"),)
    assert spec.query == (("b", "2"),)
    assert spec == RouteSpec("r", methods=("GET",), headers=(("a", "1"),), query={"b": "2"}, target=1)
    assert hash(spec) == hash(RouteSpec("r", methods=("GET",), headers={"a": "1"}, query={"b": "2"}))
    with pytest.raises(TypeError, match="methods"):
        RouteSpec("r", methods="GET")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="headers"):
        RouteSpec("r", headers=["a"])  # type: ignore[list-item]


# ------------------------------------------------------------------------- rewrite

REWRITE_CASES = [
    # pattern, replacement, target, result
    (r"^/api/(.*)$", "/$1", b"/api/users/1", b"/users/1"),
    (r"^/api/(.*)$", "/$1", b"/api/users?x=1&y=2", b"/users?x=1&y=2"),
    (r"^/api/(.*)$", r"/\1", b"/api/users?x=1", b"/users?x=1"),
    (r"^/api/(.*)$", "/$1", b"/other/users?x=1", b"/other/users?x=1"),
    (r"^/api/(.*)$", "/$1", b"/api/", b"/"),
    (r"^/(\w+)/(\d+)$", "/$2/$1", b"/item/42", b"/42/item"),
    (r"^/(\w+)/(\d+)$", "/show?id=$2&kind=$1", b"/item/42?orig=1", b"/show?id=42&kind=item"),
    (r"^/old", "/new?", b"/old?drop=1", b"/new"),
    (r"^/old", "/new", b"/old?", b"/new?"),
    (r"/v\d+/", "/latest/", b"/x/v2/y", b"/latest/"),  # the whole path is replaced, like nginx
    (r"^/a(/b)?$", "/c$1", b"/a", b"/c"),  # a group that took no part is empty
    (r"^/a(/b)?$", "/c$1", b"/a/b", b"/c/b"),
    (r"^(/.*)$", "$1/index.html", b"/docs?v=2", b"/docs/index.html?v=2"),
    (r"^/x(.*)$", "$1", b"/x", b"/"),  # an empty result path becomes "/"
    (r"^/x/(.*)$", "$1", b"/x/y", b"/y"),
    (r"^/(.*)$", "/$0", b"/p", b"//p"),
    (r"^/cost$", "/price$", b"/cost", b"/price$"),  # '$' not followed by a digit or name is literal
    (r"^/(\d)(\d)$", "/$10", b"/12", b"/10"),  # one digit per reference, as in nginx
    (r"^/caf\u00e9/(.*)$", "/c/$1", "/caf\u00e9/x".encode(), b"/c/x"),
    (r"^/raw/(.*)$", "/r/$1", b"/raw/\xff\xfe", b"/r/\xff\xfe"),  # undecodable bytes round-trip
]


@pytest.mark.parametrize(("pattern", "replacement", "target", "result"), REWRITE_CASES)
def test_rewrite(pattern: str, replacement: str, target: bytes, result: bytes) -> None:
    assert PathRewrite(pattern, replacement).apply(target) == result


def test_rewrite_without_match_returns_the_same_object() -> None:
    target = b"/nothing/here?x=1"
    assert PathRewrite(r"^/api", "/x").apply(target) is target


def test_rewrite_equality() -> None:
    assert PathRewrite("^/a", "/b") == PathRewrite("^/a", "/b")
    assert PathRewrite("^/a", "/b") != PathRewrite("^/a", "/c")
    assert "'^/a'" in repr(PathRewrite("^/a", "/b"))


@pytest.mark.parametrize(
    ("pattern", "replacement", "message"),
    [
        ("^/api/(.*", "/$1", r"invalid rewrite regex '\^/api/\(\.\*': missing \), unterminated subpattern"),
        ("", "/x", "rewrite pattern is empty"),
        ("^/a", "", "rewrite replacement is empty"),
        ("^/a/(.*)$", "/$2", r"refers to \$2 but the pattern '\^/a/\(\.\*\)\$' has 1 capture group"),
        ("^/a", r"/\1", r"refers to \\1 but the pattern '\^/a' has 0 capture group"),
        ("^/a", "/$host/x", r"variables like '\$h…' are not supported"),
        ("^/a", "/${x}", "variables like"),
        ("^/a", "/a b", "printable ASCII"),
        ("^/a", "/caf\u00e9", "percent-encode"),
        ("^/a", "/a#frag", "'#'"),
        ("^/a", "relative/x", "must start with '/' or a capture"),
    ],
)
def test_rewrite_rejects(pattern: str, replacement: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PathRewrite(pattern, replacement)


# ------------------------------------------------------------------------- bad patterns

BAD_PATTERNS = [
    (parse_host_pattern, "~(", r"invalid regex '\(' in host '~\(': missing \)"),
    (parse_host_pattern, "~", "empty regex after '~' in host '~'"),
    (parse_host_pattern, "example.com:8080", "must not include a port"),
    (parse_host_pattern, "*", "leave host out"),
    (parse_host_pattern, "*.", "a wildcard must be"),
    (parse_host_pattern, "*.*.example.com", "a wildcard must be"),
    (parse_host_pattern, "www.*.com", r"only allowed as a leading '\*\.' label"),
    (parse_host_pattern, "example.*", r"only allowed as a leading '\*\.' label"),
    (parse_host_pattern, ".example.com", r"write '\*\.example\.com'"),
    (parse_host_pattern, "exa mple.com", "not a valid host name"),
    (parse_host_pattern, "example..com", "not a valid host name"),
    (parse_host_pattern, "-x.com", "not a valid host name"),
    (parse_host_pattern, "http://example.com", "not a valid host name|must not include a port"),
    (parse_host_pattern, " example.com", "whitespace"),
    (parse_host_pattern, "[::1", "not a valid IPv6 literal"),
    (parse_host_pattern, "[nope]", "not a valid IPv6 literal"),
    (parse_host_pattern, "*.[::1]", "a wildcard must be"),
    (parse_path_pattern, "", "path is empty"),
    (parse_path_pattern, "api", "path 'api' must start with '/'"),
    (parse_path_pattern, "=api", "path '=api' must start with '/'"),
    (parse_path_pattern, "=", "needs a path after '='"),
    (parse_path_pattern, "~", "empty regex after '~' in path '~'"),
    (parse_path_pattern, "~*", r"empty regex after '~' in path '~\*'"),
    (parse_path_pattern, "~^/v(\\d+", r"invalid regex '\^/v\(\\d\+' in path"),
    (parse_path_pattern, "~[", "unterminated character set"),
    (parse_path_pattern, "/a?b=1", "must not contain '\\?' or '#'"),
    (parse_path_pattern, "/a#x", "must not contain '\\?' or '#'"),
    (parse_path_pattern, "/a b", "printable ASCII"),
    (parse_path_pattern, "/caf\u00e9", "percent-encode"),
    (parse_value_pattern, "~", "empty regex after '~'"),
    (parse_value_pattern, "~(", r"invalid regex '\(' in value '~\('"),
    (parse_method, "GE T", "not a valid HTTP method"),
    (parse_method, "", "not a valid HTTP method"),
    (parse_header_name, "x canary", "not a valid HTTP header name"),
    (parse_header_name, "x:y", "not a valid HTTP header name"),
]


@pytest.mark.parametrize(("parse", "text", "message"), BAD_PATTERNS,
                         ids=[f"{p.__name__}:{t}" for p, t, _ in BAD_PATTERNS])
def test_bad_pattern(parse: Any, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(text)


def test_good_pattern_helpers() -> None:
    assert parse_method("get") == b"GET"
    assert parse_header_name("X-Canary") == b"x-canary"
    assert parse_value_pattern("1").matches_bytes(b"1")
    assert parse_value_pattern("~^a").matches_str("abc")
    assert parse_host_pattern("*.Example.COM").value == b".example.com"
    assert parse_host_pattern("Example.COM.").value == b"example.com"
    assert parse_path_pattern("=/x").value == b"/x"
    assert parse_query(b"a=1&b&c=%20&a=2") == [("a", "1"), ("b", ""), ("c", " "), ("a", "2")]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (R("api", host="a:1"), "route 'api': host 'a:1' must not include a port"),
        (R("api", path="api"), "route 'api': path 'api' must start with '/'"),
        (R("api", path="~("), r"route 'api': invalid regex '\(' in path '~\('"),
        (R("api", methods=["G T"]), "route 'api': methods: method 'G T' is not"),
        (R("api", headers={"x y": "1"}), "route 'api': headers.x y: header name 'x y' is not"),
        (R("api", headers={"x": "~("}), r"route 'api': headers.x: invalid regex"),
        (R("api", query={"d": "~"}), "route 'api': query.d: empty regex"),
        (R("api", query={"": "1"}), "route 'api': query: parameter name '' must be"),
        (R("api", priority="1"), "route 'api': priority must be an integer"),  # type: ignore[arg-type]
        (R("api", priority=True), "route 'api': priority must be an integer"),
    ],
)
def test_table_errors_name_the_route(spec: RouteSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RouteTable([R("ok"), spec])


def test_duplicate_route_names_rejected() -> None:
    with pytest.raises(ValueError, match="route 'a' is defined twice"):
        RouteTable([R("a"), R("b"), R("a", "h")])


# ------------------------------------------------------------------------- reference property

HOSTS = [None, "", "example.com", "EXAMPLE.com", "a.example.com", "*.example.com", "*.a.example.com",
         "*.com", "other.org", "~^a\\.", "~example", "~^[a-z]+\\.example\\.com$", "[::1]"]
PATHS = [None, "/", "/api", "/api/v1", "/apix", "=/api", "=/", "~^/api/v\\d", "~*^/API", "~\\.png$", "/static"]
METHODS = [(), (), ("GET",), ("POST", "PUT")]
HEADERS: list[dict[str, str]] = [{}, {}, {"x-canary": "1"}, {"x-canary": "~^[12]$"}]
QUERIES: list[dict[str, str]] = [{}, {}, {"debug": "1"}, {"debug": "~^$"}]
PRIORITIES = [None, None, None, -1, 0, 1, 5]

REQ_HOSTS = [None, b"", b"example.com", b"Example.COM:8080", b"a.example.com", b"x.a.example.com",
             b"b.example.com", b"other.org", b"example.com.", b"a.", b"foo.com", b"[::1]:80", b"a.b",
             b".example.com"]
REQ_PATHS = [b"/", b"/api", b"/api/v1/x", b"/apix", b"/API/x", b"/static/a.png", b"/x"]
REQ_HEADERS = [[], [(b"x-canary", b"1")], [(b"x-canary", b"2")], [(b"x-canary", b"3"), (b"x-canary", b"1")]]
REQ_QUERIES = [b"", b"debug=1", b"debug=", b"debug", b"a=1&debug=%31", b"debug=2"]



def _mixed(choices: list[list[Any]], n: int) -> list[Any]:
    """The n-th combination of one item from each list (one draw instead of one per field)."""
    out = []
    for options in choices:
        n, i = divmod(n, len(options))
        out.append(options[i])
    return out


def _combinations(choices: list[list[Any]]) -> int:
    total = 1
    for options in choices:
        total *= len(options)
    return total


ROUTE_FIELDS: list[list[Any]] = [HOSTS, PATHS, METHODS, HEADERS, QUERIES, PRIORITIES]
REQUEST_FIELDS: list[list[Any]] = [REQ_HOSTS, REQ_PATHS, [b"GET", b"POST", b"DELETE"], REQ_HEADERS, REQ_QUERIES]

route_specs = st.lists(st.integers(0, _combinations(ROUTE_FIELDS) - 1), max_size=8).map(
    lambda rows: [RouteSpec(f"r{i}", *_mixed(ROUTE_FIELDS, n)) for i, n in enumerate(rows)]
)
requests = st.lists(st.integers(0, _combinations(REQUEST_FIELDS) - 1), min_size=4, max_size=24).map(
    lambda rows: [_mixed(REQUEST_FIELDS, n) for n in rows]
)


def reference_order(specs: list[RouteSpec]) -> list[RouteSpec]:
    """The documented priority key, written out from the rules, not from the table's code."""

    def host_rank(i: int, spec: RouteSpec) -> tuple[int, int]:
        text = spec.host
        if not text:
            return (3, 0)
        if text.startswith("~"):
            return (2, next(j for j, s in enumerate(specs) if s.host == text))
        if text.startswith("*."):
            return (1, -len(text))
        name = text.lower().rstrip(".")
        return (0, next(j for j, s in enumerate(specs) if (s.host or "").lower().rstrip(".") == name))

    def path_rank(spec: RouteSpec) -> tuple[int, int]:
        text = "/" if spec.path is None else spec.path
        if text.startswith("="):
            return (0, 0)
        if text.startswith("~"):
            return (2, 0)
        return (1, -len(text))

    keyed = [(-(s.priority or 0), *host_rank(i, s), *path_rank(s), i) for i, s in enumerate(specs)]
    return [specs[k[-1]] for k in sorted(keyed)]


def reference_matches(spec: RouteSpec, host: bytes | None, path: bytes, method: bytes,
                      headers: list[tuple[bytes, bytes]], query: bytes) -> bool:
    if not parse_host_pattern(spec.host).matches(host) or not parse_path_pattern(spec.path).matches(path):
        return False
    if spec.methods and method.decode() not in {m.upper() for m in spec.methods}:
        return False
    for name, want in spec.headers:
        values = [v.decode() for n, v in headers if n == name.encode()]
        if not any(parse_value_pattern(want).matches_str(v) for v in values):
            return False
    for name, want in spec.query:
        values = [v for k, v in parse_query(query) if k == name]
        if not any(parse_value_pattern(want).matches_str(v) for v in values):
            return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=route_specs, reqs=requests)
def test_table_agrees_with_brute_force(specs: list[RouteSpec], reqs: list[Any]) -> None:
    table = RouteTable(specs)
    order = reference_order(specs)
    assert [s.name for s in table.routes] == [s.name for s in order]
    for host, path, method, headers, query in reqs:
        expected = next((s for s in order if reference_matches(s, host, path, method, headers, query)), None)
        got = table.match(host, path, method, headers, query)
        assert got is expected, (host, path, method, headers, query, table.describe())

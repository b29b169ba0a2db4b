"""Built-in route filters (headers, redirect, mock, request_id, ip_acl, basic_auth, cors,
ratelimit): each is built from its Config and run on real Sessions.

Requests are parsed from wire bytes with the project's request parser; direct responses are
captured at the Session's downstream boundary (``send_response``) and parsed back with the
response parser, so what a filter sends is checked as a client would read it.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import sys
import time
import types
from typing import Any

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ferryman.filters import Filter, implemented, kinds, lookup
from ferryman.filters.builtin.basic_auth import (
    CACHE_SIZE,
    MAX_AUTHORIZATION,
    hash_pbkdf2_sha256,
)
from ferryman.filters.builtin.headers import compile_template, render
from ferryman.filters.builtin.ip_acl import VERDICT_CACHE, NetworkSet
from ferryman.filters.builtin.ratelimit import MAX_KEY, RateLimitFilter
from ferryman.http.session import Session
from ferryman.protocol.h1.events import Data, EndOfMessage, RequestHead, ResponseHead
from ferryman.protocol.h1.parser import RequestParser, ResponseParser

Headers = list[tuple[bytes, bytes]]
MINE = ["basic_auth", "cors", "headers", "ip_acl", "mock", "ratelimit", "redirect", "request_id"]


# harness --------------------------------------------------------------------------------------
class Downstream:
    """The interface Session uses: its service's settings, its loop's clock, and
    ``send_response``, which records each response sent."""

    def __init__(self) -> None:
        self.service = types.SimpleNamespace(has_response_body_filters=False, upstream_read_timeout=60.0)
        self.loop = types.SimpleNamespace(time=time.monotonic)
        self.sent: list[tuple[bytes, bytes]] = []

    def send_response(self, session: Session, head: bytes, body: bytes) -> None:
        self.sent.append((head, body))


class Reply:
    def __init__(self, head: ResponseHead, body: bytes) -> None:
        self.status = head.status
        self.headers = head.headers
        self.body = body

    def get(self, name: bytes) -> bytes | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name!r} repeated: {values}"
        return values[0] if values else None

    def all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


def request(
    target: bytes = b"/",
    headers: Headers | None = None,
    method: bytes = b"GET",
    client: Any = ("192.0.2.10", 40000),
    tls: bool = False,
    version: bytes = b"1.1",
) -> Session:
    """A Session for a request parsed from its wire form (Host: example.com unless given)."""
    fields = [(b"host", b"example.com")] if headers is None else headers
    raw = b"%s %s HTTP/%s\r\n" % (method, target, version)
    raw += b"".join(b"%s: %s\r\n" % pair for pair in fields) + b"\r\n"
    events = RequestParser().feed(raw)
    head = events[0]
    assert isinstance(head, RequestHead), events
    return Session(head, client, ("127.0.0.1", 8080), Downstream(), tls=tls)


def reply(session: Session) -> Reply:
    """The one response the filter sent directly, parsed as a client would."""
    sent = session._downstream.sent
    assert len(sent) == 1, sent
    head, body = sent[0]
    parser = ResponseParser()
    parser.expect(session.request.method)
    events = parser.feed(head + body)
    assert isinstance(events[0], ResponseHead) and isinstance(events[-1], EndOfMessage), events
    return Reply(events[0], b"".join(bytes(e.data) for e in events if isinstance(e, Data)))


def build(kind: str, name: str = "f", **config: Any) -> Any:
    cls = lookup(kind)
    return cls(name, cls.Config.model_validate(config))


def config_errors(kind: str, config: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        lookup(kind).Config.model_validate(config)
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors(include_url=False)]


def passes(filter_: Filter, session: Session) -> None:
    """request_filter lets the request through without answering it."""
    assert filter_.request_filter(session) is False
    assert session._downstream.sent == []


def upstream_headers(filter_: Filter, session: Session) -> Headers:
    headers = list(session.request.headers)
    filter_.upstream_request_filter(session, headers)
    return headers


def response_headers(filter_: Filter, session: Session, headers: Headers) -> Headers:
    out = list(headers)
    filter_.response_filter(session, out)
    return out


# registry ---------------------------------------------------------------------------------------
def test_kinds_are_registered_with_their_phases() -> None:
    assert set(MINE) <= set(kinds())
    phases = {
        "headers": {"upstream_request_filter", "response_filter"},
        "redirect": {"request_filter"},
        "mock": {"request_filter"},
        "request_id": {"request_filter", "upstream_request_filter", "response_filter"},
        "ip_acl": {"request_filter"},
        "basic_auth": {"request_filter", "upstream_request_filter"},
        "cors": {"request_filter", "response_filter"},
        "ratelimit": {"request_filter"},
    }
    for kind, expected in phases.items():
        cls = lookup(kind)
        assert cls.kind == kind
        instance = cls.__new__(cls)
        got = {p for p in ("request_filter", "upstream_request_filter", "response_filter", "response_body_filter") if implemented(instance, p)}
        assert got == expected, kind


@pytest.mark.parametrize("kind", MINE)
def test_unknown_keys_are_errors(kind: str) -> None:
    errors = config_errors(kind, {"no_such_key": 1})
    assert (("no_such_key",), "Extra inputs are not permitted") in errors


@pytest.mark.parametrize("kind", MINE)
def test_configs_are_frozen(kind: str) -> None:
    minimal = {
        "redirect": {"https": True},
        "ip_acl": {"deny": ["10.0.0.0/8"]},
        "basic_auth": {"users": ["a:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="]},
        "cors": {"allow_origins": ["*"]},
        "ratelimit": {"rate": "1/s"},
    }.get(kind, {})
    config = lookup(kind).Config.model_validate(minimal)
    field = next(iter(type(config).model_fields))
    with pytest.raises(ValidationError):
        setattr(config, field, None)


# headers ----------------------------------------------------------------------------------------
def test_headers_request_edits_in_order_remove_set_add() -> None:
    f = build(
        "headers",
        request_remove=["Cookie"],
        request_set={"X-Env": "prod"},
        request_add={"X-Tag": "a", "X-Env": "extra"},
    )
    s = request(headers=[(b"host", b"example.com"), (b"cookie", b"c=1"), (b"x-env", b"dev"), (b"x-env", b"qa"), (b"cookie", b"d=2"), (b"accept", b"*/*")])
    out = upstream_headers(f, s)
    assert out == [(b"host", b"example.com"), (b"accept", b"*/*"), (b"x-env", b"prod"), (b"x-tag", b"a"), (b"x-env", b"extra")]
    assert s.request.headers[1] == (b"cookie", b"c=1"), "the client's head itself is not edited"


def test_headers_response_edits() -> None:
    f = build("headers", response_set={"Server": "ferryman"}, response_remove=["x-powered-by"], response_add={"X-Frame-Options": "DENY"})
    out = response_headers(f, request(), [(b"server", b"origin"), (b"x-powered-by", b"php"), (b"content-length", b"3")])
    assert out == [(b"content-length", b"3"), (b"server", b"ferryman"), (b"x-frame-options", b"DENY")]


def test_headers_without_edits_in_a_direction_leave_it_alone() -> None:
    f = build("headers", response_add={"x-a": "1"})
    s = request(headers=[(b"host", b"h"), (b"x-b", b"2")])
    assert upstream_headers(f, s) == [(b"host", b"h"), (b"x-b", b"2")]


def test_headers_variables() -> None:
    f = build(
        "headers",
        request_set={
            "x-real-ip": "$remote_addr",
            "x-host": "${host}!",
            "x-proto": "$scheme",
            "x-rid": "id=$request_id",
            "x-orig": "$request_uri",
            "x-path": "$uri",
            "x-args": "[$args]",
            "x-price": "$5 and $$host",
        },
    )
    s = request(b"/a/b?q=1&r=2", headers=[(b"host", b"WWW.Example.com:8443")], client=("2001:db8::7", 5), tls=True)
    s.vars["request_id"] = "abc"
    s.upstream_target = b"/rewritten?z=9"  # as a rewrite filter would leave it
    got = dict(upstream_headers(f, s))
    assert got[b"x-real-ip"] == b"2001:db8::7"
    assert got[b"x-host"] == b"www.example.com!"
    assert got[b"x-proto"] == b"https"
    assert got[b"x-rid"] == b"id=abc"
    assert got[b"x-orig"] == b"/a/b?q=1&r=2"  # as sent by the client
    assert got[b"x-path"] == b"/rewritten"  # after rewrites, as nginx's $uri
    assert got[b"x-args"] == b"[z=9]"
    assert got[b"x-price"] == b"$5 and $host"


@pytest.mark.parametrize(
    ("host", "expected"),
    [(b"example.com", b"example.com"), (b"[2001:DB8::1]:8080", b"[2001:db8::1]"), (b"10.0.0.1:80", b"10.0.0.1")],
)
def test_host_variable_drops_the_port(host: bytes, expected: bytes) -> None:
    assert render(compile_template("$host"), request(headers=[(b"host", host)])) == expected


@pytest.mark.parametrize(
    ("target", "uri", "args"),
    [
        (b"/p", b"/p", b""),
        (b"/p?", b"/p", b""),
        (b"http://other.example/x/y?k=v", b"/x/y", b"k=v"),
        (b"http://other.example", b"/", b""),
        (b"http://other.example?k=v", b"/", b"k=v"),
    ],
)
def test_uri_and_args_of_any_target_form(target: bytes, uri: bytes, args: bytes) -> None:
    s = request(target)
    assert render(compile_template("$uri"), s) == uri
    assert render(compile_template("$args"), s) == args


def test_plain_values_compile_to_constants() -> None:
    assert compile_template("plain value") == b"plain value"
    assert compile_template("cost: $5, $$") == b"cost: $5, $"
    assert callable(compile_template("$host"))
    assert callable(compile_template("a${host}b"))
    f = build("headers", request_add={"x-a": "1", "x-b": "2"})
    assert f.request.static and f.request.pairs == ((b"x-a", b"1"), (b"x-b", b"2"))


@pytest.mark.parametrize(
    ("config", "loc", "message"),
    [
        ({"request_set": {"X A": "1"}}, ("request_set", "X A", "[key]"), "not a header name"),
        ({"request_remove": ["ok", "bad:name"]}, ("request_remove", 1), "not a header name"),
        ({"response_add": {"": "1"}}, ("response_add", "", "[key]"), "not a header name"),
        ({"request_set": {"Content-Length": "1"}}, ("request_set", "Content-Length", "[key]"), "managed by the proxy"),
        ({"response_remove": ["Transfer-Encoding"]}, ("response_remove", 0), "managed by the proxy"),
        ({"request_add": {"Connection": "close"}}, ("request_add", "Connection", "[key]"), "managed by the proxy"),
        ({"request_set": {"x-a": "a\r\nInjected: 1"}}, ("request_set", "x-a"), "control character"),
        ({"response_set": {"x-a": "a\x00"}}, ("response_set", "x-a"), "control character"),
        ({"request_set": {"x-a": "$nope"}}, ("request_set", "x-a"), "unknown variable $nope"),
        ({"request_set": {"x-a": "${host"}}, ("request_set", "x-a"), "must be followed by a variable name"),
        ({"request_set": {"X-A": "1", "x-a": "2"}}, ("request_set",), "'X-A' and 'x-a' name the same header"),
        ({"request_set": {"x-a": 1}}, ("request_set", "x-a"), "valid string"),
        ({"request_remove": "x-a"}, ("request_remove",), "valid list"),
    ],
)
def test_headers_config_errors(config: dict[str, Any], loc: tuple[Any, ...], message: str) -> None:
    errors = config_errors("headers", config)
    assert any(got_loc == loc and message in msg for got_loc, msg in errors), errors


# redirect -------------------------------------------------------------------------------------
def test_redirect_to_a_template_with_default_302() -> None:
    f = build("redirect", to="https://new.example$request_uri")
    s = request(b"/old/page?x=1")
    assert f.request_filter(s) is True
    r = reply(s)
    assert (r.status, r.get(b"location"), r.body) == (302, b"https://new.example/old/page?x=1", b"")
    assert r.get(b"content-length") == b"0"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_statuses(status: int) -> None:
    f = build("redirect", to="$scheme://$host/v2$uri?$args", status=status)
    s = request(b"/items?page=2", headers=[(b"host", b"Shop.Example:8080")])
    assert f.request_filter(s) is True
    r = reply(s)
    assert (r.status, r.get(b"location")) == (status, b"http://shop.example/v2/items?page=2")


def test_redirect_https_shortcut() -> None:
    f = build("redirect", https=True, status=301)
    s = request(b"/a?b=c", headers=[(b"host", b"example.com:8080")])
    assert f.request_filter(s) is True
    r = reply(s)
    assert (r.status, r.get(b"location")) == (301, b"https://example.com/a?b=c")


def test_redirect_https_shortcut_passes_tls_requests() -> None:
    passes(build("redirect", https=True), request(tls=True))


def test_redirect_https_shortcut_without_host_is_a_400() -> None:
    f = build("redirect", https=True)
    s = request(headers=[], version=b"1.0")
    assert f.request_filter(s) is True
    assert reply(s).status == 400


def test_redirect_answers_head_without_body() -> None:
    f = build("redirect", to="/elsewhere", status=308)
    s = request(method=b"HEAD")
    assert f.request_filter(s) is True
    r = reply(s)
    assert (r.status, r.get(b"location"), r.body) == (308, b"/elsewhere", b"")


@pytest.mark.parametrize(
    ("config", "loc", "message"),
    [
        ({"to": "/x", "status": 305}, ("status",), "301, 302, 303, 307 or 308"),
        ({"to": "/x", "status": "301"}, ("status",), "301, 302, 303, 307 or 308"),
        ({}, (), "exactly one of to"),
        ({"to": "/x", "https": True}, (), "exactly one of to"),
        ({"to": ""}, ("to",), "empty"),
        ({"to": "/a b"}, ("to",), "whitespace"),
        ({"to": "/x\n"}, ("to",), "control character"),
        ({"to": "$server_name/x"}, ("to",), "unknown variable $server_name"),
    ],
)
def test_redirect_config_errors(config: dict[str, Any], loc: tuple[Any, ...], message: str) -> None:
    errors = config_errors("redirect", config)
    assert any(got_loc == loc and message in msg for got_loc, msg in errors), errors


# mock -----------------------------------------------------------------------------------------
def test_mock_fixed_response() -> None:
    f = build("mock", status=503, body="down for maintenance\n", headers={"Retry-After": "120"}, content_type="text/html")
    s = request()
    assert f.request_filter(s) is True
    r = reply(s)
    assert (r.status, r.body) == (503, b"down for maintenance\n")
    assert (r.get(b"retry-after"), r.get(b"content-type"), r.get(b"content-length")) == (b"120", b"text/html", b"21")


def test_mock_defaults_and_head() -> None:
    f = build("mock", body="ok")
    s = request()
    f.request_filter(s)
    r = reply(s)
    assert (r.status, r.body, r.get(b"content-type")) == (200, b"ok", b"text/plain; charset=utf-8")
    head = request(method=b"HEAD")
    f.request_filter(head)
    r = reply(head)
    assert (r.status, r.body, r.get(b"content-length")) == (200, b"", b"2")


def test_mock_is_reused_across_requests_unchanged() -> None:
    f = build("mock", status=204, headers={"x-a": "1"})
    for _ in range(3):
        s = request()
        assert f.request_filter(s) is True
        assert (reply(s).status, reply(s).get(b"x-a")) == (204, b"1")
    assert f.headers == [(b"x-a", b"1")]


@pytest.mark.parametrize(
    ("config", "loc", "message"),
    [
        ({"status": 99}, ("status",), "greater than or equal to 200"),
        ({"status": 600}, ("status",), "less than or equal to 599"),
        ({"status": 204, "body": "x"}, ("body",), "a 204 response cannot have a body"),
        ({"status": 304, "body": "x"}, ("body",), "a 304 response cannot have a body"),
        ({"content_type": "a/b", "headers": {"Content-Type": "c/d"}}, ("content_type",), "not both"),
        ({"headers": {"content-length": "5"}}, ("headers", "content-length", "[key]"), "managed by the proxy"),
        ({"body": 5}, ("body",), "valid string"),
    ],
)
def test_mock_config_errors(config: dict[str, Any], loc: tuple[Any, ...], message: str) -> None:
    errors = config_errors("mock", config)
    assert any(got_loc == loc and message in msg for got_loc, msg in errors), errors


# request_id -----------------------------------------------------------------------------------
def test_request_id_generated_sent_upstream_and_back() -> None:
    f = build("request_id")
    s = request(headers=[(b"host", b"h"), (b"x-request-id", b"client-chosen")])
    passes(f, s)
    rid = s.vars["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
    up = upstream_headers(f, s)
    assert [v for k, v in up if k == b"x-request-id"] == [rid.encode()], "the untrusted client value is replaced"
    down = response_headers(f, s, [(b"x-request-id", b"from-upstream"), (b"content-length", b"0")])
    assert [v for k, v in down if k == b"x-request-id"] == [rid.encode()]
    other = request()
    f.request_filter(other)
    assert other.vars["request_id"] != rid


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        (b"abc-123", True),
        (b"x" * 200, True),
        (b"!~{}", True),
        (b"x" * 201, False),
        (b"has space", False),
        (b"caf\xc3\xa9", False),
    ],
)
def test_request_id_trusts_only_sane_incoming_ids(incoming: bytes, kept: bool) -> None:
    f = build("request_id", trust_incoming=True, header="X-Trace-Id")
    s = request(headers=[(b"host", b"h"), (b"x-trace-id", incoming)])
    f.request_filter(s)
    rid = s.vars["request_id"]
    assert (rid == incoming.decode("latin-1")) is kept
    if not kept:
        assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert dict(upstream_headers(f, s))[b"x-trace-id"] == rid.encode()
    assert b"x-request-id" not in dict(upstream_headers(f, s))


def test_request_id_without_incoming_header_is_generated_even_when_trusted() -> None:
    f = build("request_id", trust_incoming=True)
    s = request()
    f.request_filter(s)
    assert re.fullmatch(r"[0-9a-f]{32}", s.vars["request_id"])


def test_request_id_feeds_the_headers_variable() -> None:
    rid, headers = build("request_id"), build("headers", response_set={"x-log": "rid=$request_id"})
    s = request()
    rid.request_filter(s)
    out = response_headers(headers, s, [])
    assert out == [(b"x-log", b"rid=" + s.vars["request_id"].encode())]


def test_request_id_config_errors() -> None:
    errors = config_errors("request_id", {"header": "bad header", "trust_incoming": "yes"})
    locs = {loc for loc, _ in errors}
    assert locs == {("header",), ("trust_incoming",)}, errors


# ip_acl ---------------------------------------------------------------------------------------
def check_ip(f: Any, ip: str) -> int | None:
    """None when the request passes, else the status sent."""
    s = request(client=(ip, 1234) if ip else "/run/ferryman.sock")
    if f.request_filter(s) is False:
        assert s._downstream.sent == []
        return None
    return reply(s).status


def test_ip_acl_allow_list() -> None:
    f = build("ip_acl", allow=["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"])
    assert check_ip(f, "10.200.3.4") is None
    assert check_ip(f, "192.0.2.7") is None
    assert check_ip(f, "2001:db8:ffff::1") is None
    assert check_ip(f, "192.0.2.8") == 403
    assert check_ip(f, "11.0.0.1") == 403
    assert check_ip(f, "2001:db9::1") == 403
    assert check_ip(f, "") == 403, "a unix-socket client matches no allow entry"


def test_ip_acl_deny_list() -> None:
    f = build("ip_acl", deny=["203.0.113.0/24", "::1"])
    assert check_ip(f, "203.0.113.99") == 403
    assert check_ip(f, "::1") == 403
    assert check_ip(f, "203.0.114.1") is None
    assert check_ip(f, "") is None
    s = request(client=("203.0.113.5", 1))
    f.request_filter(s)
    r = reply(s)
    assert r.body.startswith(b"403 Forbidden")


def test_ip_acl_deny_wins_over_allow() -> None:
    f = build("ip_acl", allow=["10.0.0.0/8"], deny=["10.1.0.0/16"])
    assert check_ip(f, "10.1.2.3") == 403
    assert check_ip(f, "10.2.2.3") is None
    f = build("ip_acl", deny=["10.0.0.0/8"], allow=["10.1.0.0/16"])  # order does not matter
    assert check_ip(f, "10.1.2.3") == 403


def test_ip_acl_mapped_and_scoped_ipv6_clients() -> None:
    f = build("ip_acl", allow=["10.0.0.0/8", "fe80::/10"])
    assert check_ip(f, "::ffff:10.9.8.7") is None
    assert check_ip(f, "::ffff:11.9.8.7") == 403
    assert check_ip(f, "fe80::1%eth0") is None
    assert check_ip(f, "not-an-ip") == 403


def test_ip_acl_whole_address_space() -> None:
    f = build("ip_acl", deny=["0.0.0.0/0"])
    assert check_ip(f, "8.8.8.8") == 403
    assert check_ip(f, "2001:db8::1") is None
    f = build("ip_acl", deny=["::/0"])
    assert check_ip(f, "2001:db8::1") == 403
    assert check_ip(f, "8.8.8.8") is None


def test_ip_acl_verdict_cache_is_bounded() -> None:
    f = build("ip_acl", allow=["10.0.0.0/8"])
    for i in range(VERDICT_CACHE + 10):
        assert f.allowed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert 0 < len(f.verdicts) <= VERDICT_CACHE
    assert check_ip(f, "10.0.0.1") is None and f.verdicts["10.0.0.1"] is True
    assert check_ip(f, "11.0.0.1") == 403 and check_ip(f, "11.0.0.1") == 403
    assert f.verdicts["11.0.0.1"] is False


networks = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32)),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 128)),
).map(lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False))


@settings(max_examples=300, deadline=None)
@given(st.lists(networks, max_size=8), st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_network_set_agrees_with_ipaddress(nets: list[Any], ip: Any) -> None:
    expected = any(ip.version == n.version and ip in n for n in nets)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        expected = expected or any(n.version == 4 and ip.ipv4_mapped in n for n in nets)
    assert (str(ip) in NetworkSet(nets)) is expected


@pytest.mark.parametrize(
    ("config", "loc", "message"),
    [
        ({"allow": ["10.0.0.0/33"]}, ("allow", 0), "not an IP address or CIDR"),
        ({"deny": ["10.0.0.1", "bogus"]}, ("deny", 1), "not an IP address or CIDR"),
        ({"allow": ["2001:db8::/129"]}, ("allow", 0), "not an IP address or CIDR"),
        ({"allow": [10]}, ("allow", 0), "expected a CIDR string"),
        ({}, (), "give allow and/or deny"),
        ({"allow": [], "deny": []}, (), "give allow and/or deny"),
    ],
)
def test_ip_acl_config_errors(config: dict[str, Any], loc: tuple[Any, ...], message: str) -> None:
    errors = config_errors("ip_acl", config)
    assert any(tuple(p for p in got_loc if not str(p).startswith("function")) == loc and message in msg for got_loc, msg in errors), errors


# basic_auth -----------------------------------------------------------------------------------
SHA_PASSWORD = "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="  # htpasswd -nbs user password


def basic(user: str | bytes, password: str | bytes) -> bytes:
    u = user.encode() if isinstance(user, str) else user
    p = password.encode() if isinstance(password, str) else password
    return b"Basic " + base64.b64encode(u + b":" + p)


def auth_request(authorization: bytes | None) -> Session:
    headers = [(b"host", b"example.com")]
    if authorization is not None:
        headers.append((b"authorization", authorization))
    return request(headers=headers)


def refused(f: Any, authorization: bytes | None) -> Reply:
    s = auth_request(authorization)
    assert f.request_filter(s) is True
    r = reply(s)
    assert r.status == 401
    assert "remote_user" not in s.vars
    return r


@pytest.fixture(scope="module")
def bcrypt_hash() -> str:
    return bcrypt.hashpw(b"s3cret!", bcrypt.gensalt(rounds=4)).decode()


def test_basic_auth_sha_entry_matches_htpasswd() -> None:
    assert SHA_PASSWORD == "{SHA}" + base64.b64encode(hashlib.sha1(b"password").digest()).decode()
    f = build("basic_auth", users=[f"bob:{SHA_PASSWORD}"], realm="staff area")
    s = auth_request(basic("bob", "password"))
    passes(f, s)
    assert s.vars["remote_user"] == "bob"
    r = refused(f, basic("bob", "Password"))
    assert r.get(b"www-authenticate") == b'Basic realm="staff area", charset="UTF-8"'
    assert r.body == b"401 Unauthorized\n"
    assert r.get(b"cache-control") == b"no-store"


@pytest.mark.parametrize("prefix", ["$2b$", "$2y$", "$2a$"])
def test_basic_auth_bcrypt(bcrypt_hash: str, prefix: str) -> None:
    f = build("basic_auth", users=["alice:" + prefix + bcrypt_hash[4:]])
    passes(f, auth_request(basic("alice", "s3cret!")))
    refused(f, basic("alice", "s3cret"))
    refused(f, basic("alice", "x" * 100))  # bcrypt refuses > 72 bytes: a refusal, not a crash


def test_basic_auth_pbkdf2() -> None:
    salt = b"0123456789abcdef"
    stored = hash_pbkdf2_sha256("hunter2", rounds=1000, salt=salt)
    # the format, rebuilt independently: passlib's adapted base64 ("." for "+", no padding)
    digest = hashlib.pbkdf2_hmac("sha256", b"hunter2", salt, 1000)

    def ab64(data: bytes) -> str:
        return base64.b64encode(data).decode().rstrip("=").replace("+", ".")

    assert stored == f"$pbkdf2-sha256$1000${ab64(salt)}${ab64(digest)}"
    f = build("basic_auth", users=[f"carol:{stored}", f"dave:{hash_pbkdf2_sha256('other', rounds=1000)}"])
    passes(f, auth_request(basic("carol", "hunter2")))
    passes(f, auth_request(basic("dave", "other")))
    refused(f, basic("carol", "other"))
    refused(f, basic("dave", "hunter2"))


def test_basic_auth_refusals() -> None:
    f = build("basic_auth", users=[f"bob:{SHA_PASSWORD}"])
    r = refused(f, None)
    assert r.get(b"www-authenticate") == b'Basic realm="restricted", charset="UTF-8"'
    refused(f, basic("mallory", "password"))  # unknown user, right password of another
    refused(f, b"Bearer abc")
    refused(f, b"Basic !!!not-base64!!!")
    refused(f, b"Basic " + base64.b64encode(b"no-colon"))
    refused(f, b"Basic")
    passes(f, auth_request(basic("bob", "password").replace(b"Basic", b"bAsIc")))


def test_basic_auth_password_with_colon_and_utf8_user() -> None:
    stored = hash_pbkdf2_sha256("a:b:c", rounds=1000)
    f = build("basic_auth", users=[f"zoë:{stored}"])
    s = auth_request(basic("zoë", "a:b:c"))
    passes(f, s)
    assert s.vars["remote_user"] == "zoë"


def test_basic_auth_hides_credentials_by_default() -> None:
    f = build("basic_auth", users=[f"bob:{SHA_PASSWORD}"])
    s = auth_request(basic("bob", "password"))
    passes(f, s)
    assert upstream_headers(f, s) == [(b"host", b"example.com")]
    keep = build("basic_auth", users=[f"bob:{SHA_PASSWORD}"], hide_credentials=False)
    s = auth_request(basic("bob", "password"))
    passes(keep, s)
    assert (b"authorization", basic("bob", "password")) in upstream_headers(keep, s)


def test_basic_auth_caches_verified_and_refused_values(bcrypt_hash: str) -> None:
    f = build("basic_auth", users=[f"alice:{bcrypt_hash}"])
    verifier = f.users[b"alice"]
    real_check = verifier.check
    calls: list[bytes] = []

    def counting(password: bytes) -> bool:
        calls.append(password)
        return real_check(password)

    verifier.check = counting
    for _ in range(3):
        passes(f, auth_request(basic("alice", "s3cret!")))
    assert calls == [b"s3cret!"], "one bcrypt check, then dict lookups"
    for _ in range(3):
        refused(f, basic("alice", "wrong"))
    assert calls == [b"s3cret!", b"wrong"]


def test_basic_auth_unknown_users_cost_a_check_too() -> None:
    f = build("basic_auth", users=[f"bob:{SHA_PASSWORD}"])
    calls: list[bytes] = []
    real = f.decoy.check

    def counting(password: bytes) -> bool:
        calls.append(password)
        return real(password)

    f.decoy.check = counting
    refused(f, basic("nobody", "password"))
    assert calls == [b"password"]


def test_basic_auth_caches_are_bounded() -> None:
    f = build("basic_auth", users=[f"bob:{SHA_PASSWORD}"])
    for i in range(CACHE_SIZE + 50):
        assert f.authenticate(basic("bob", f"wrong{i}")) is None
    assert len(f.refused.items) == CACHE_SIZE
    assert basic("bob", "wrong0") not in f.refused.items, "the oldest refusal was dropped"
    assert basic("bob", f"wrong{CACHE_SIZE + 49}") in f.refused.items
    variants = [basic("bob", "password").replace(b"Basic", case) for case in (b"Basic", b"basic", b"BASIC")]
    for value in variants:
        assert f.authenticate(value) == "bob"
    assert len(f.verified.items) == 3


def test_basic_auth_refuses_oversized_values_unchecked() -> None:
    f = build("basic_auth", users=[f"bob:{hash_pbkdf2_sha256('p' * 1600, rounds=1000)}"])
    calls: list[bytes] = []
    real = f.decoy.check

    def counting(password: bytes) -> bool:
        calls.append(password)
        return real(password)

    f.decoy.check = counting
    value = basic("bob", "p" * 1600)
    assert len(value) > MAX_AUTHORIZATION
    refused(f, value)
    assert calls == [] and not f.refused.items


def test_basic_auth_bcrypt_needs_the_package(monkeypatch: pytest.MonkeyPatch, bcrypt_hash: str) -> None:
    monkeypatch.setitem(sys.modules, "bcrypt", None)  # as if not installed
    errors = config_errors("basic_auth", {"users": [f"alice:{bcrypt_hash}"]})
    assert errors == [(("users", 0), "Value error, user 'alice': bcrypt hashes need the bcrypt package (pip install bcrypt)")]


@pytest.mark.parametrize(
    ("config", "loc", "message"),
    [
        ({"users": ["alice:secret"]}, ("users", 0), "store a hash"),
        ({"users": [f"bob:{SHA_PASSWORD}", "carol:hunter2"]}, ("users", 1), "user 'carol': not a supported password hash: store a hash"),
        ({"users": ["alice:"]}, ("users", 0), "store a hash"),
        ({"users": ["alice:$apr1$abc$defghijklmnopqrstuvwxy"]}, ("users", 0), "unsupported hash scheme $apr1$"),
        ({"users": ["alice:$6$salt$hash"]}, ("users", 0), "unsupported hash scheme $6$"),
        ({"users": ["alice:{SSHA}abcd"]}, ("users", 0), "unsupported hash scheme {SSHA}"),
        ({"users": ["alice:$2y$10$tooshort"]}, ("users", 0), "malformed bcrypt hash"),
        ({"users": ["alice:{SHA}abcd"]}, ("users", 0), "malformed {SHA} hash"),
        ({"users": ["alice:{SHA}not base64!"]}, ("users", 0), "malformed {SHA} hash"),
        ({"users": ["alice:$pbkdf2-sha256$x$abc$def"]}, ("users", 0), "malformed $pbkdf2-sha256$ hash"),
        ({"users": ["alice:$pbkdf2-sha256$1000$abcd$short"]}, ("users", 0), "malformed $pbkdf2-sha256$ hash"),
        ({"users": ["no-colon"]}, ("users", 0), "is not a \"name:hash\" entry"),
        ({"users": [f":{SHA_PASSWORD}"]}, ("users", 0), "is not a \"name:hash\" entry"),
        ({"users": []}, ("users",), "at least 1 item"),
        ({}, ("users",), "Field required"),
        ({"users": [f"bob:{SHA_PASSWORD}", f"bob:{SHA_PASSWORD}"]}, ("users",), "user 'bob' is listed twice"),
        ({"users": [f"bob:{SHA_PASSWORD}"], "realm": 'a"b'}, ("realm",), "without quotes"),
        ({"users": [f"bob:{SHA_PASSWORD}"], "realm": ""}, ("realm",), "non-empty"),
        ({"users": [f"bob:{SHA_PASSWORD}"], "hide_credentials": 1}, ("hide_credentials",), "valid boolean"),
    ],
)
def test_basic_auth_config_errors(config: dict[str, Any], loc: tuple[Any, ...], message: str) -> None:
    errors = config_errors("basic_auth", config)
    assert any(got_loc == loc and message in msg for got_loc, msg in errors), errors


# cors -----------------------------------------------------------------------------------------
APP = b"https://app.example"


def preflight(f: Any, origin: bytes, method: bytes = b"PUT", requested_headers: bytes | None = None) -> Reply:
    headers = [(b"host", b"api.example"), (b"origin", origin), (b"access-control-request-method", method)]
    if requested_headers is not None:
        headers.append((b"access-control-request-headers", requested_headers))
    s = request(b"/things", headers=headers, method=b"OPTIONS")
    assert f.request_filter(s) is True
    return reply(s)


def test_cors_preflight_from_an_allowed_origin() -> None:
    f = build(
        "cors",
        allow_origins=["https://App.Example", "http://localhost:3000"],
        allow_methods=["get", "PUT"],
        allow_headers=["Content-Type", "X-Token"],
        allow_credentials=True,
        max_age="10m",
    )
    r = preflight(f, APP)
    assert (r.status, r.body) == (204, b"")
    assert r.get(b"access-control-allow-origin") == APP
    assert r.get(b"access-control-allow-methods") == b"GET, PUT"
    assert r.get(b"access-control-allow-headers") == b"content-type, x-token"
    assert r.get(b"access-control-allow-credentials") == b"true"
    assert r.get(b"access-control-max-age") == b"600"
    assert r.get(b"vary") == b"Origin"
    assert preflight(f, b"HTTP://LOCALHOST:3000").get(b"access-control-allow-origin") == b"HTTP://LOCALHOST:3000"


def test_cors_preflight_from_another_origin_gets_no_permission() -> None:
    f = build("cors", allow_origins=["https://app.example"])
    r = preflight(f, b"https://evil.example")
    assert r.status == 204
    assert [k for k, _ in r.headers if k.startswith(b"access-control-")] == []
    assert r.get(b"vary") == b"Origin"


def test_cors_wildcards() -> None:
    f = build("cors", allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    r = preflight(f, b"https://any.example", method=b"PURGE", requested_headers=b"x-a, x-b")
    assert r.get(b"access-control-allow-origin") == b"*"
    assert r.get(b"access-control-allow-methods") == b"PURGE"
    assert r.get(b"access-control-allow-headers") == b"x-a, x-b"
    assert r.get(b"vary") == b"Access-Control-Request-Method, Access-Control-Request-Headers"
    assert r.get(b"access-control-allow-credentials") is None
    assert r.get(b"access-control-max-age") is None


def test_cors_default_methods() -> None:
    r = preflight(build("cors", allow_origins=["*"]), b"https://x.example")
    assert r.get(b"access-control-allow-methods") == b"GET, HEAD, POST, PUT, PATCH, DELETE"
    assert r.get(b"access-control-allow-headers") is None
    assert r.get(b"vary") is None


def test_cors_plain_options_and_other_methods_pass() -> None:
    f = build("cors", allow_origins=["*"])
    passes(f, request(method=b"OPTIONS", headers=[(b"host", b"h"), (b"origin", APP)]))
    passes(f, request(method=b"OPTIONS", headers=[(b"host", b"h"), (b"access-control-request-method", b"GET")]))
    passes(f, request(method=b"POST", headers=[(b"host", b"h"), (b"origin", APP), (b"access-control-request-method", b"GET")]))


def test_cors_actual_response_headers() -> None:
    f = build("cors", allow_origins=["https://app.example"], expose_headers=["X-Request-Id"], allow_credentials=True)
    upstream = [(b"content-type", b"text/plain"), (b"access-control-allow-origin", b"*"), (b"vary", b"Accept-Encoding")]
    s = request(headers=[(b"host", b"h"), (b"origin", APP)])
    passes(f, s)
    out = response_headers(f, s, upstream)
    assert out == [
        (b"content-type", b"text/plain"),
        (b"vary", b"Accept-Encoding"),
        (b"access-control-allow-origin", APP),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-expose-headers", b"x-request-id"),
        (b"vary", b"Origin"),
    ]
    evil = response_headers(f, request(headers=[(b"host", b"h"), (b"origin", b"https://evil.example")]), upstream)
    assert evil == [(b"content-type", b"text/plain"), (b"vary", b"Accept-Encoding"), (b"vary", b"Origin")]
    no_origin = response_headers(f, request(), upstream)
    assert no_origin == [*upstream, (b"vary", b"Origin")], "same-origin requests: the upstream's fields stay"


def test_cors_star_response_has_no_vary() -> None:
    f = build("cors", allow_origins=["*"])
    out = response_headers(f, request(headers=[(b"host", b"h"), (b"origin", APP)]), [])
    assert out == [(b"access-control-allow-origin", b"*")]


@pytest.mark.parametrize(
    ("config", "loc", "message"),
    [
        ({}, ("allow_origins",), "Field required"),
        ({"allow_origins": []}, ("allow_origins",), "at least 1 item"),
        ({"allow_origins": ["*", "https://a.example"]}, ("allow_origins",), "\"*\" must stand alone"),
        ({"allow_origins": ["*"], "allow_credentials": True}, ("allow_credentials",), "browsers refuse credentials"),
        ({"allow_origins": ["https://a.example/"]}, ("allow_origins", 0), "drop the trailing"),
        ({"allow_origins": ["https://a.example/path"]}, ("allow_origins", 0), "is not an origin"),
        ({"allow_origins": ["a.example"]}, ("allow_origins", 0), "is not an origin"),
        ({"allow_origins": ["*"], "allow_methods": ["GET", "*"]}, ("allow_methods",), "must stand alone"),
        ({"allow_origins": ["*"], "allow_methods": ["GE T"]}, ("allow_methods", 0), "not an HTTP method"),
        ({"allow_origins": ["*"], "allow_headers": ["x a"]}, ("allow_headers", 0), "not a header name"),
        ({"allow_origins": ["*"], "expose_headers": ["*", "x"]}, ("expose_headers",), "must stand alone"),
        ({"allow_origins": ["*"], "expose_headers": ["x y"]}, ("expose_headers", 0), "not a header name"),
        ({"allow_origins": ["https://a.example"], "expose_headers": ["*"], "allow_credentials": True}, ("allow_credentials",), "list the headers"),
        ({"allow_origins": ["*"], "max_age": 600}, ("max_age",), "expected a duration string"),
        ({"allow_origins": ["*"], "max_age": "ten"}, ("max_age",), "is not a duration"),
    ],
)
def test_cors_config_errors(config: dict[str, Any], loc: tuple[Any, ...], message: str) -> None:
    errors = config_errors("cors", config)
    assert any(tuple(p for p in got_loc if not str(p).startswith("function")) == loc and message in msg for got_loc, msg in errors), errors


# ratelimit ------------------------------------------------------------------------------------
class Clock:
    """A time source the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **config: Any) -> RateLimitFilter:
    return RateLimitFilter("rl", RateLimitFilter.Config.model_validate(config), clock=clock)


def hit(f: Filter, client: str = "192.0.2.1", headers: Headers | None = None) -> Reply | None:
    s = request(headers=headers, client=(client, 1))
    if f.request_filter(s) is False:
        return None
    return reply(s)


def test_ratelimit_refuses_beyond_rate_plus_burst() -> None:
    clock = Clock()
    f = limiter(clock, rate="2/s", burst=1)
    assert [hit(f) for _ in range(3)] == [None, None, None]
    r = hit(f)
    assert r is not None and r.status == 429
    assert r.get(b"retry-after") == b"1"
    assert r.body == b"429 Too Many Requests\nrate limit exceeded\n"
    assert hit(f, client="192.0.2.2") is None, "another client has its own counter"
    clock.now += 1.5  # the previous window's 3 weigh half: 1.5 estimated, room for two
    assert [hit(f) for _ in range(2)] == [None, None]
    assert hit(f) is not None


def test_ratelimit_retry_after_reaches_into_the_next_window() -> None:
    clock = Clock()
    f = limiter(clock, rate="10/m")
    for _ in range(10):
        assert hit(f) is None
    clock.now += 15
    r = hit(f)
    assert r is not None
    # 10 in this window: room once they start to decay, as the next window begins
    assert r.get(b"retry-after") == b"45"
    clock.now += 45
    assert hit(f) is not None, "at the boundary the estimate is still 10"
    clock.now += 0.5
    assert hit(f) is None


def test_ratelimit_by_header() -> None:
    clock = Clock()
    f = limiter(clock, key="header:X-Api-Key", rate="1/h")
    key_a = [(b"host", b"h"), (b"x-api-key", b"a")]
    assert hit(f, "192.0.2.1", key_a) is None
    r = hit(f, "192.0.2.2", key_a)
    assert r is not None and r.status == 429, "the key, not the client address, is counted"
    assert int(r.get(b"retry-after") or 0) == 3600
    assert hit(f, "192.0.2.1", [(b"host", b"h"), (b"x-api-key", b"b")]) is None
    for _ in range(5):  # no key: not limited (as nginx limit_req)
        assert hit(f) is None


def test_ratelimit_long_header_keys_are_hashed() -> None:
    f = limiter(Clock(), key="header:x-api-key", rate="1/s")
    long_a, long_b = b"k" * 500 + b"a", b"k" * 500 + b"b"
    assert hit(f, headers=[(b"host", b"h"), (b"x-api-key", long_a)]) is None
    assert hit(f, headers=[(b"host", b"h"), (b"x-api-key", long_b)]) is None, "a different key"
    assert hit(f, headers=[(b"host", b"h"), (b"x-api-key", long_a)]) is not None, "the same key"
    assert all(isinstance(key, bytes) and len(key) <= MAX_KEY for key in f.rate.current)


def test_ratelimit_unix_socket_clients_are_not_limited() -> None:
    f = limiter(Clock(), rate="1/s")
    for _ in range(3):
        s = request(client="/run/ferryman.sock")
        passes(f, s)


@pytest.mark.parametrize(
    ("config", "loc", "message"),
    [
        ({}, ("rate",), "Field required"),
        ({"rate": "100"}, ("rate",), "is not a rate"),
        ({"rate": "0/s"}, ("rate",), "is not a rate"),
        ({"rate": "100/d"}, ("rate",), "is not a rate"),
        ({"rate": 100}, ("rate",), "valid string"),
        ({"rate": "1/s", "burst": -1}, ("burst",), "greater than or equal to 0"),
        ({"rate": "1/s", "burst": "5"}, ("burst",), "valid integer"),
        ({"rate": "1/s", "key": "cookie:a"}, ("key",), "must be \"client_ip\" or \"header:NAME\""),
        ({"rate": "1/s", "key": "header:"}, ("key",), "not a header name"),
        ({"rate": "1/s", "key": "header:bad name"}, ("key",), "not a header name"),
    ],
)
def test_ratelimit_config_errors(config: dict[str, Any], loc: tuple[Any, ...], message: str) -> None:
    errors = config_errors("ratelimit", config)
    assert any(got_loc == loc and message in msg for got_loc, msg in errors), errors


def test_ratelimit_header_key_is_case_insensitive() -> None:
    f = limiter(Clock(), key="header:X-API-Key", rate="1/s")
    assert f.header == b"x-api-key"
    assert f.config.key == "header:x-api-key"

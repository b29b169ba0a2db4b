"""Config loading: value types, every error at once with its TOML path, whole-document checks."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from ferryman.config.load import load_file, load_text, toml_path
from ferryman.config.types import parse_duration
from ferryman.errors import ConfigError
from ferryman.net.addr import Address

REPO = Path(__file__).resolve().parents[2]

UPSTREAM = '\n[upstreams.u]\nbackends = ["127.0.0.1:9000"]\n'

FULL = """
[server]
workers = 2
grace_period = "1m30s"
pid_file = "/tmp/ferryman-test.pid"
log_level = "warning"

[demo]
addr = "127.0.0.1:8081"

[listeners.web]
addr = "0.0.0.0:8080"
protocol = "tcp"
upstream = "split"
proxy_protocol = true
proxy_protocol_trusted = ["10.0.0.0/8", "::1"]
proxy_protocol_timeout = "250ms"
max_connections = 1000
idle_timeout = "10m"
termination_delay = "2s"
splice = "never"
backlog = 128
reuse_port = true

[listeners.dns]
addr = "[::1]:5353"
protocol = "udp"
upstream = "dns"
max_sessions = 50
session_timeout = "300ms"

[listeners.sock]
addr = "unix:/tmp/ferryman-test.sock"
upstream = "app"

[upstreams.app]
backends = ["10.0.0.1:8000", "10.0.0.2:8000 weight=2", "[fd00::1]:8000", "unix:/run/app.sock"]
lb = "least_conn"
proxy_protocol = "v2"
connect_timeout = "1.5s"
total_connect_timeout = "4s"
max_tries = 2
nodelay = false
bind_to = "10.0.0.100:0"
tcp_keepalive = { idle = "30s", interval = "5s", count = 4 }
health_check = { kind = "tcp", interval = "2s", timeout = "500ms", rise = 1, fall = 2 }

[upstreams.canary]
backends = ["10.0.1.1:8000"]
connect_proxy = "10.9.9.9:3128"

[upstreams.split]
members = ["app weight=3", "canary"]

[upstreams.dns]
backends = ["10.0.0.53:53", "10.0.0.54:53"]
lb = "consistent_hash"
hash_key = "client_ip"
"""


def errors_of(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_text(text)
    return info.value.errors


def paths_of(text: str) -> list[str]:
    return [path for path, _ in errors_of(text)]


def message_at(text: str, path: str) -> str:
    found = [message for where, message in errors_of(text) if where == path]
    assert len(found) == 1, f"expected one error at {path}, got {errors_of(text)}"
    return found[0]


# --- a valid config -------------------------------------------------------------------


def test_full_config_loads_with_every_value_converted() -> None:
    config = load_text(FULL)
    assert config.server.workers == 2
    assert config.server.grace_period == 90.0
    assert config.server.log_level == "warning"
    assert config.demo is not None and config.demo.addr == Address("127.0.0.1", 8081)

    web = config.listeners["web"]
    assert web.addr == Address("0.0.0.0", 8080)
    assert web.proxy_protocol is True
    assert web.proxy_protocol_trusted == [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")]
    assert web.proxy_protocol_timeout == 0.25
    assert (web.idle_timeout, web.termination_delay) == (600.0, 2.0)
    assert (web.splice, web.backlog, web.reuse_port, web.max_connections) == ("never", 128, True, 1000)

    dns = config.listeners["dns"]
    assert dns.addr == Address("::1", 5353) and dns.addr.family == socket.AF_INET6
    assert (dns.protocol, dns.max_sessions, dns.session_timeout) == ("udp", 50, 0.3)
    assert config.listeners["sock"].addr == Address(path="/tmp/ferryman-test.sock")

    app = config.upstreams["app"]
    assert [(b.key, b.weight) for b in app.backend_objects()] == [
        ("10.0.0.1:8000", 1),
        ("10.0.0.2:8000", 2),
        ("[fd00::1]:8000", 1),
        ("unix:/run/app.sock", 1),
    ]
    assert (app.lb, app.proxy_protocol, app.max_tries, app.nodelay) == ("least_conn", "v2", 2, False)
    assert (app.connect_timeout, app.total_connect_timeout) == (1.5, 4.0)
    assert app.bind_to == Address("10.0.0.100", 0)
    assert app.tcp_keepalive is not None and (app.tcp_keepalive.idle, app.tcp_keepalive.count) == (30.0, 4)
    assert app.health_check is not None and (app.health_check.timeout, app.health_check.rise) == (0.5, 1)
    assert config.upstreams["canary"].connect_proxy == Address("10.9.9.9", 3128)
    assert config.upstreams["split"].members == ["app weight=3", "canary"]
    assert config.upstreams["dns"].lb == "consistent_hash"


def test_defaults_for_an_empty_file() -> None:
    config = load_text("")
    assert config.server.workers >= 1
    assert config.server.grace_period == 5.0
    assert config.listeners == {} and config.upstreams == {} and config.demo is None


def test_config_is_frozen() -> None:
    config = load_text(FULL)
    with pytest.raises(ValueError):
        config.server.workers = 3  # type: ignore[misc]


def test_example_config_loads() -> None:
    config = load_file(REPO / "examples" / "ferryman.toml")
    assert set(config.listeners) == {"web", "http"}
    assert config.listeners["http"].protocol == "http"
    assert config.listeners["web"].upstream in config.upstreams
    assert all(name in config.routes for name in config.listeners["http"].routes)
    assert all(route.upstream in config.upstreams for route in config.routes.values() if route.upstream)
    assert all(f in config.filters for route in config.routes.values() for f in route.filters)


ROUTED = """
[listeners.web]
addr = "127.0.0.1:1"
protocol = "http"
routes = ["api", "nope"]

[routes.api]
host = "~(unclosed"
path = "api"
upstream = "missing"
filters = ["rl", "ghost"]

[filters.rl]
kind = "ratelimit"
rate = "fast"
colour = "red"

[filters.what]
kind = "teleport"

[upstreams.u]
backends = ["127.0.0.1:2"]
"""


def test_route_and_filter_errors_name_their_toml_paths() -> None:
    errors = dict(errors_of(ROUTED))
    assert "no route named 'nope'" in errors["listeners.web.routes[1]"]
    assert "invalid regex" in errors["routes.api.host"]
    assert "/" in errors["routes.api.path"]
    assert "no upstream named 'missing'" in errors["routes.api.upstream"]
    assert "no filter named 'ghost'" in errors["routes.api.filters[1]"]
    assert errors["filters.rl.colour"] == "unknown key"
    assert "filters.rl.rate" in errors
    assert "unknown filter kind 'teleport'" in errors["filters.what.kind"]


def test_listener_targets_are_checked() -> None:
    both = '[listeners.l]\naddr = "127.0.0.1:1"\nprotocol = "http"\nupstream = "u"\nroutes = ["r"]\n[routes.r]\nupstream = "u"\n[upstreams.u]\nbackends = ["127.0.0.1:2"]\n'
    assert ("listeners.l.routes", "give either upstream or routes, not both") in errors_of(both)
    neither = '[listeners.l]\naddr = "127.0.0.1:1"\nprotocol = "http"\n'
    assert ("listeners.l", "an http listener needs an upstream or routes") in errors_of(neither)
    tcp_hash = '[listeners.l]\naddr = "127.0.0.1:1"\nupstream = "u"\n[upstreams.u]\nbackends = ["127.0.0.1:2"]\nlb = "consistent_hash"\nhash_key = "uri"\n'
    assert any(path == "upstreams.u.hash_key" for path, _ in errors_of(tcp_hash))


# --- durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30.0), ("1m30s", 90.0), ("1.5s", 1.5), ("2h", 7200.0), ("1d", 86400.0), ("500us", 0.0005), ("0s", 0.0)],
)
def test_duration_strings(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert load_text(f'[server]\ngrace_period = "{text}"\n').server.grace_period == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5x", "5", "", "ms", "5 s", "-1s", "1e3s", "s5", "1m30"])
def test_bad_duration_strings(text: str) -> None:
    message = message_at(f'[server]\ngrace_period = "{text}"\n', "server.grace_period")
    assert "is not a duration" in message


@pytest.mark.parametrize("value", ["5", "5.0", "true"])
def test_durations_must_be_strings(value: str) -> None:
    message = message_at(f"[server]\ngrace_period = {value}\n", "server.grace_period")
    assert "expected a duration string" in message


# --- addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:8080", Address("127.0.0.1", 8080)),
        ("[::1]:8080", Address("::1", 8080)),
        ("[::]:0", Address("::", 0)),
        ("localhost:65535", Address("localhost", 65535)),
        ("unix:/run/ferryman.sock", Address(path="/run/ferryman.sock")),
    ],
)
def test_listener_addresses(text: str, address: Address) -> None:
    config = load_text(f'[listeners.l]\naddr = "{text}"\nupstream = "u"\n' + UPSTREAM)
    assert config.listeners["l"].addr == address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:99999", "port 99999 is out of range"),
        ("127.0.0.1", "has no port"),
        ("::1:8080", "must be bracketed"),
        ("[::1]", "is not [ipv6]:port"),
        ("[nope]:80", "is not an IPv6 address"),
        ("127.0.0.1:http", "is not a number"),
        ("unix:", "needs a path"),
        (":8080", "has no host"),
    ],
)
def test_bad_listener_addresses(text: str, expected: str) -> None:
    message = message_at(f'[listeners.l]\naddr = "{text}"\nupstream = "u"\n' + UPSTREAM, "listeners.l.addr")
    assert expected in message


def test_address_must_be_a_string() -> None:
    message = message_at('[listeners.l]\naddr = 8080\nupstream = "u"\n' + UPSTREAM, "listeners.l.addr")
    assert "expected an address string" in message


def test_bad_backends_are_reported_by_index() -> None:
    text = '[upstreams.u]\nbackends = ["127.0.0.1:1", "127.0.0.1", "10.0.0.1:0", "10.0.0.1:80 weight=0", "10.0.0.1:80 w=1"]\n'
    errors = dict(errors_of(text))
    assert list(errors) == [f"upstreams.u.backends[{i}]" for i in (1, 2, 3, 4)]
    assert "has no port" in errors["upstreams.u.backends[1]"]
    assert "non-zero port" in errors["upstreams.u.backends[2]"]
    assert "from 1 to 10000" in errors["upstreams.u.backends[3]"]
    assert "expected weight=N" in errors["upstreams.u.backends[4]"]


# --- strict types ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "path"),
    [
        ('[server]\nworkers = "2"', "server.workers"),
        ("[server]\nworkers = true", "server.workers"),
        ("[server]\nworkers = 2.0", "server.workers"),
        ("[server]\nworkers = 0", "server.workers"),
        ('[server]\nlog_level = "loud"', "server.log_level"),
        ('[upstreams.v]\nbackends = ["127.0.0.1:1"]\nnodelay = "yes"', "upstreams.v.nodelay"),
        ('[upstreams.v]\nbackends = ["127.0.0.1:1"]\nlb = "sticky"', "upstreams.v.lb"),
        ('[upstreams.v]\nbackends = ["127.0.0.1:1"]\nproxy_protocol = "v3"', "upstreams.v.proxy_protocol"),
        ('[upstreams.v]\nbackends = "127.0.0.1:1"', "upstreams.v.backends"),
    ],
)
def test_wrong_types_are_errors_not_coercions(line: str, path: str) -> None:
    assert paths_of(line + "\n" + UPSTREAM) == [path]


def test_a_table_where_a_value_is_expected() -> None:
    assert errors_of("listeners = 3\n") == [("listeners", "expected a table")]
    assert errors_of("server = 1\n") == [("server", "expected a table")]


# --- every error at once --------------------------------------------------------------


def test_every_error_is_reported_once_with_its_path() -> None:
    text = """
[server]
workers = 0
grace_period = "5x"

[listeners.web]
addr = "127.0.0.1:99999"
upstream = "missing"

[listeners.dns]
addr = "::1:53"
protocol = "udp"
upstream = "pp"
colour = "blue"

[upstreams.pp]
backends = ["127.0.0.1:9000"]
proxy_protocol = "v2"
connect_timeout = 5

[upstreams.loop]
members = ["loop"]

[upstreams.hc]
backends = ["127.0.0.1:9001"]
health_check = { kind = "tcp", rise = 0 }
"""
    errors = errors_of(text)
    assert sorted(path for path, _ in errors) == sorted(
        [
            "server.workers",
            "server.grace_period",
            "listeners.web.addr",
            "listeners.web.upstream",
            "listeners.dns.addr",
            "listeners.dns.colour",
            "upstreams.pp.connect_timeout",
            "upstreams.pp.proxy_protocol",
            "upstreams.loop.members[0]",
            "upstreams.hc.health_check.rise",
        ]
    )
    found = dict(errors)
    assert "port 99999 is out of range" in found["listeners.web.addr"]
    assert "no upstream named 'missing'" in found["listeners.web.upstream"]
    assert found["listeners.dns.colour"] == "unknown key"
    assert "UDP" in found["upstreams.pp.proxy_protocol"]
    assert "cycle" in found["upstreams.loop.members[0]"]


def test_rendered_errors_name_the_file_and_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[listeners.web]\naddr = "127.0.0.1:99999"\nupstream = "u"\n' + UPSTREAM)
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert str(info.value) == f"{path}: listeners.web.addr: port 99999 is out of range"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_file(tmp_path / "nope.toml")
    assert info.value.errors == [("", "file not found")]


# --- unknown keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("colour = 1\n", "colour"),
        ("[server]\ncolour = 1\n", "server.colour"),
        ('[demo]\naddr = "127.0.0.1:1"\ncolour = 1\n', "demo.colour"),
        ('[listeners.l]\naddr = "127.0.0.1:1"\nupstream = "u"\ncolour = 1\n' + UPSTREAM, "listeners.l.colour"),
        ('[upstreams.v]\nbackends = ["127.0.0.1:1"]\ncolour = 1\n', "upstreams.v.colour"),
        ('[upstreams.v]\nbackends = ["127.0.0.1:1"]\nhealth_check = { colour = 1 }\n', "upstreams.v.health_check.colour"),
        ('[upstreams.v]\nbackends = ["127.0.0.1:1"]\ntcp_keepalive = { colour = 1 }\n', "upstreams.v.tcp_keepalive.colour"),
    ],
)
def test_unknown_keys_at_every_level(text: str, path: str) -> None:
    assert errors_of(text) == [(path, "unknown key")]


def test_missing_required_keys() -> None:
    assert errors_of('[listeners.l]\naddr = "127.0.0.1:1"\n') == [("listeners.l.upstream", "required key is missing")]
    assert errors_of("[demo]\n") == [("demo.addr", "required key is missing")]


# --- references -----------------------------------------------------------------------


def test_listener_referencing_a_missing_upstream() -> None:
    message = message_at('[listeners.l]\naddr = "127.0.0.1:1"\nupstream = "api"\n' + UPSTREAM, "listeners.l.upstream")
    assert message == "no upstream named 'api' (known: u)"


def test_member_referencing_a_missing_upstream() -> None:
    text = '[upstreams.all]\nmembers = ["u", "ghost weight=2"]\n' + UPSTREAM
    assert errors_of(text) == [("upstreams.all.members[1]", "no upstream named 'ghost' (known: all, u)")]


def test_upstream_needs_exactly_one_of_backends_and_members() -> None:
    assert paths_of("[upstreams.v]\n") == ["upstreams.v"]
    assert paths_of('[upstreams.v]\nbackends = ["127.0.0.1:1"]\nmembers = ["u"]\n' + UPSTREAM) == ["upstreams.v"]


def test_bad_member_weight() -> None:
    assert paths_of('[upstreams.v]\nmembers = ["u weight=0"]\n' + UPSTREAM) == ["upstreams.v.members[0]"]


def test_member_cycles() -> None:
    assert paths_of('[upstreams.a]\nmembers = ["a"]\n') == ["upstreams.a.members[0]"]
    text = '[upstreams.a]\nmembers = ["b"]\n[upstreams.b]\nmembers = ["u", "c"]\n[upstreams.c]\nmembers = ["a"]\n' + UPSTREAM
    assert sorted(paths_of(text)) == ["upstreams.a.members[0]", "upstreams.b.members[1]", "upstreams.c.members[0]"]


def test_shared_members_are_not_a_cycle() -> None:
    text = '[upstreams.a]\nmembers = ["b", "u"]\n[upstreams.b]\nmembers = ["u"]\n' + UPSTREAM
    config = load_text(text)
    assert config.upstreams["a"].members == ["b", "u"]


# --- listen addresses -----------------------------------------------------------------


def listeners(*entries: tuple[str, str, str]) -> str:
    out = ""
    for name, addr, protocol in entries:
        out += f'[listeners.{name}]\naddr = "{addr}"\nprotocol = "{protocol}"\nupstream = "u"\n'
    return out + UPSTREAM


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "127.0.0.1:8080"),
        ("127.0.0.1:8080", "0.0.0.0:8080"),
        ("[::]:8080", "[::1]:8080"),
        ("unix:/tmp/f.sock", "unix:/tmp/f.sock"),
    ],
)
def test_clashing_listen_addresses(first: str, second: str) -> None:
    message = message_at(listeners(("a", first, "tcp"), ("b", second, "tcp")), "listeners.b.addr")
    assert "clashes with listeners.a.addr" in message


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("127.0.0.1:8080", "127.0.0.2:8080"),
        ("127.0.0.1:8080", "127.0.0.1:8081"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("0.0.0.0:8080", "[::]:8080"),  # IPv6 listeners are bound V6ONLY
        ("unix:/tmp/a.sock", "unix:/tmp/b.sock"),
    ],
)
def test_distinct_listen_addresses(first: str, second: str) -> None:
    config = load_text(listeners(("a", first, "tcp"), ("b", second, "tcp")))
    assert len(config.listeners) == 2


def test_tcp_and_udp_may_share_a_port() -> None:
    config = load_text(listeners(("t", "127.0.0.1:5353", "tcp"), ("d", "127.0.0.1:5353", "udp")))
    assert {c.protocol for c in config.listeners.values()} == {"tcp", "udp"}
    assert paths_of(listeners(("d1", "127.0.0.1:5353", "udp"), ("d2", "0.0.0.0:5353", "udp"))) == ["listeners.d2.addr"]


def test_demo_origin_address_clashes_with_a_listener() -> None:
    text = '[demo]\naddr = "127.0.0.1:8081"\n' + listeners(("web", "0.0.0.0:8081", "tcp"), ("dns", "127.0.0.1:8081", "udp"))
    assert errors_of(text) == [("listeners.web.addr", "0.0.0.0:8081 (tcp) clashes with demo.addr (127.0.0.1:8081)")]


def test_udp_listener_on_a_unix_socket() -> None:
    assert "need host:port" in message_at(listeners(("d", "unix:/tmp/d.sock", "udp")), "listeners.d.addr")


# --- udp restrictions -----------------------------------------------------------------


def test_proxy_protocol_on_an_upstream_used_by_udp_is_rejected() -> None:
    text = (
        '[listeners.dns]\naddr = "127.0.0.1:53"\nprotocol = "udp"\nupstream = "all"\n'
        '[upstreams.all]\nmembers = ["plain", "pp"]\n'
        '[upstreams.plain]\nbackends = ["10.0.0.1:53"]\n'
        '[upstreams.pp]\nbackends = ["10.0.0.2:53"]\nproxy_protocol = "v1"\n'
    )
    assert errors_of(text) == [("upstreams.pp.proxy_protocol", "not supported for UDP listener listeners.dns")]


def test_proxy_protocol_on_an_upstream_used_by_tcp_only_is_fine() -> None:
    text = '[listeners.web]\naddr = "127.0.0.1:80"\nupstream = "pp"\n[upstreams.pp]\nbackends = ["10.0.0.2:80"]\nproxy_protocol = "v1"\n'
    assert load_text(text).upstreams["pp"].proxy_protocol == "v1"


def test_udp_listener_cannot_accept_proxy_protocol() -> None:
    text = '[listeners.dns]\naddr = "127.0.0.1:53"\nprotocol = "udp"\nupstream = "u"\nproxy_protocol = true\n' + UPSTREAM
    assert paths_of(text) == ["listeners.dns.proxy_protocol"]


def test_udp_listener_cannot_reach_unix_backends() -> None:
    text = '[listeners.dns]\naddr = "127.0.0.1:53"\nprotocol = "udp"\nupstream = "x"\n[upstreams.x]\nbackends = ["unix:/run/x.sock"]\n'
    assert paths_of(text) == ["upstreams.x.backends"]


def test_trusted_sources_need_proxy_protocol() -> None:
    text = '[listeners.l]\naddr = "127.0.0.1:1"\nupstream = "u"\nproxy_protocol_trusted = ["10.0.0.0/8"]\n' + UPSTREAM
    assert paths_of(text) == ["listeners.l.proxy_protocol_trusted"]
    bad = '[listeners.l]\naddr = "127.0.0.1:1"\nupstream = "u"\nproxy_protocol = true\nproxy_protocol_trusted = ["10.0.0.0/33"]\n' + UPSTREAM
    assert paths_of(bad) == ["listeners.l.proxy_protocol_trusted[0]"]


# --- TOML syntax ----------------------------------------------------------------------


def test_invalid_toml_reports_the_line() -> None:
    errors = errors_of('[server]\nworkers = 2\ngrace_period = = "5s"\n')
    assert len(errors) == 1
    path, message = errors[0]
    assert path == ""
    assert message.startswith("invalid TOML") and "line 3" in message


def test_unclosed_table_header_reports_the_line() -> None:
    (error,) = errors_of('[server]\nworkers = 2\n\n[listeners.web\naddr = "x"\n')
    assert "line 4" in error[1]


def test_toml_path() -> None:
    assert toml_path(("upstreams", "api", "backends", 1)) == "upstreams.api.backends[1]"
    assert toml_path(("server",)) == "server"
    assert toml_path(()) == ""


def test_tcp_health_check_on_an_upstream_served_over_udp_is_rejected() -> None:
    text = """
[listeners.dns]
addr = "127.0.0.1:5353"
protocol = "udp"
upstream = "dns"
[upstreams.dns]
backends = ["127.0.0.1:53"]
health_check = { kind = "tcp" }
"""
    with pytest.raises(ConfigError) as info:
        load_text(text)
    assert [path for path, _ in info.value.errors] == ["upstreams.dns.health_check"]


@pytest.mark.parametrize("text, size", [("512", 512), ("10k", 10240), ("1m", 1048576), ("2g", 2 * 1024**3), ("3MB", 3 * 1048576)])
def test_sizes_use_binary_units(text: str, size: int) -> None:
    from ferryman.config.types import parse_size

    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["ten", "1t", "-1", "1.5m", True])
def test_bad_sizes_are_rejected(bad: object) -> None:
    from ferryman.config.types import parse_size

    with pytest.raises(ValueError, match="is not a size"):
        parse_size(bad)


def test_http_listener_accepts_proxy_protocol() -> None:
    text = """
[listeners.web]
addr = "127.0.0.1:8080"
protocol = "http"
upstream = "app"
proxy_protocol = true
proxy_protocol_trusted = ["10.0.0.0/8"]
[upstreams.app]
backends = ["127.0.0.1:9000"]
"""
    assert load_text(text).listeners["web"].proxy_protocol is True


# route edits, member health and sizes (checked at load, so `ferryman check` reports them) ---------
def _errors(text: str) -> str:
    try:
        load_text('[upstreams.u]\nbackends = ["127.0.0.1:1"]\n' + text)
    except ConfigError as exc:
        return str(exc)
    return ""


ROUTE_W = '[listeners.w]\naddr = "127.0.0.1:0"\nprotocol = "http"\nroutes = ["r"]\n'


def test_a_route_redirect_with_an_unknown_variable_is_reported_with_its_path() -> None:
    assert "routes.r.redirect: 'https://x$nosuch': unknown variable $nosuch" in _errors(ROUTE_W + '[routes.r]\nredirect = "https://x$nosuch"')


def test_route_header_edits_and_methods_are_checked_with_their_paths() -> None:
    errors = _errors(ROUTE_W + '[routes.r]\nupstream = "u"\nmethods = ["GE T"]\nrequest_headers = { set = { "content-length" = "1" } }')
    assert "routes.r.methods[0]: 'GE T' is not an HTTP method token" in errors
    assert "routes.r.request_headers.set.content-length:" in errors


def test_health_on_a_members_upstream_is_refused() -> None:
    errors = _errors('[upstreams.p]\nmembers = ["u"]\n[upstreams.p.health_check]\ninterval = "1s"')
    assert "upstreams.p.health_check: set it on the member upstreams" in errors


def test_zero_health_check_interval_is_refused() -> None:
    assert "upstreams.u.health_check.interval: Input should be greater than 0" in _errors('[upstreams.u.health_check]\ninterval = "0s"')


def test_sizes_accept_binary_unit_names() -> None:
    from ferryman.config.types import parse_size

    assert parse_size("10MiB") == parse_size("10m") == parse_size("10 mb") == 10 * 1024**2
    assert parse_size("1GiB") == 1024**3
    with pytest.raises(ValueError):
        parse_size("10 MiBs")

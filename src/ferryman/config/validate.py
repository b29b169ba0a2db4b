"""Whole-document checks: references between named entities and listen-address clashes.

These run on the raw TOML dict, next to the structural validation, so one pass reports
every problem at once even when some tables are also structurally wrong.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from ..net.addr import Address, parse_address
from .model import parse_member


def check_references(data: dict[str, Any]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    listeners = _table(data.get("listeners"))
    upstreams = _table(data.get("upstreams"))
    routes = _table(data.get("routes"))
    filters = _table(data.get("filters"))
    errors += _check_listener_upstreams(listeners, upstreams)
    errors += _check_members(upstreams)
    errors += _check_addresses(listeners, data.get("demo"))
    errors += _check_routes(listeners, routes, upstreams, filters)
    errors += check_filters(filters)
    errors += _check_access_logs(listeners)
    errors += _check_route_edits(routes)
    errors += _check_member_health(upstreams)
    errors += _check_balance(listeners, data.get("server"))
    errors += _check_admin(data.get("admin"))
    errors += _check_log_sinks(listeners, data.get("server"))
    errors += _check_extras(data)
    return errors


def _check_log_sinks(listeners: dict, server: Any) -> list[tuple[str, str]]:
    """A syslog table is only read when its log goes to syslog."""
    errors = []
    for name, listener in listeners.items():
        if "access_log_syslog" in listener and listener.get("access_log") != "syslog":
            errors.append((f"listeners.{name}.access_log_syslog", 'has no effect unless access_log = "syslog"'))
    if isinstance(server, dict) and "error_log_syslog" in server and server.get("error_log") != "syslog":
        errors.append(("server.error_log_syslog", 'has no effect unless error_log = "syslog"'))
    return errors


def _check_extras(data: dict[str, Any]) -> list[tuple[str, str]]:
    """[tracing] and [sentry] need optional packages: say which, and how to install them."""
    from ..observability import sentry, tracing

    errors = []
    for table, module in (("tracing", tracing), ("sentry", sentry)):
        if table in data:
            problem = module.missing_extra()
            if problem:
                errors.append((table, problem))
    return errors


def _check_admin(admin: Any) -> list[tuple[str, str]]:
    """An admin API reachable beyond this host must ask for credentials (a token or users)."""
    if not isinstance(admin, dict) or admin.get("token") or admin.get("users"):
        return []
    addr = admin.get("addr", "127.0.0.1:9180")
    try:
        address = parse_address(addr) if isinstance(addr, str) else None
    except ValueError:
        return []  # reported by the structural pass
    if address is None or address.is_unix:
        return []
    host = address.host
    if host == "localhost" or host.startswith("127.") or host == "::1":
        return []
    return [("admin.token", f"required (or admin.users): the admin API on {addr} is reachable from other hosts")]


def _check_balance(listeners: dict, server: Any) -> list[tuple[str, str]]:
    """``fixed`` names an existing worker; reuseport balancing needs an IP address."""
    workers = server.get("workers") if isinstance(server, dict) else None
    errors = []
    for name, listener in listeners.items():
        worker = listener.get("balance_worker")
        if isinstance(worker, int) and isinstance(workers, int) and worker >= workers:
            errors.append((f"listeners.{name}.balance_worker", f"worker {worker} does not exist: server.workers = {workers} (workers count from 0)"))
        addr = listener.get("addr")
        if listener.get("balance") in ("kernel", "port") and isinstance(addr, str) and addr.startswith("unix:"):
            errors.append((f"listeners.{name}.balance", "kernel and port balancing need an IP address (SO_REUSEPORT), not a Unix socket"))
        if listener.get("balance") == "least_conn" and listener.get("protocol") == "udp":
            errors.append((f"listeners.{name}.balance", "least_conn passes connections to workers: not for udp listeners"))
    return errors


_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _check_route_edits(routes: dict) -> list[tuple[str, str]]:
    """A route's redirect, header edits and methods become filters and matchers at build
    time; check them here so ``ferryman check`` (and a reload) reports them with their path."""
    from ..filters.registry import lookup
    from .load import pydantic_errors

    errors: list[tuple[str, str]] = []
    for name, route in routes.items():
        for index, method in enumerate(route.get("methods") or []):
            if isinstance(method, str) and not _METHOD.fullmatch(method):
                errors.append((f"routes.{name}.methods[{index}]", f"{method!r} is not an HTTP method token"))
        redirect = route.get("redirect")
        if isinstance(redirect, str):
            body = {"to": redirect}
            if isinstance(route.get("redirect_status"), int):
                body["status"] = route["redirect_status"]
            try:
                lookup("redirect").Config.model_validate(body)
            except ValidationError as exc:
                errors.extend((f"routes.{name}.redirect", message) for _, message in pydantic_errors(exc))
        for side in ("request", "response"):
            edits = route.get(f"{side}_headers")
            if not isinstance(edits, dict):
                continue
            body = {f"{side}_{op}": value for op, value in edits.items() if op in ("set", "add", "remove")}
            try:
                lookup("headers").Config.model_validate(body)
            except ValidationError as exc:
                for path, message in pydantic_errors(exc):
                    rest = path.removeprefix(f"{side}_")
                    errors.append((f"routes.{name}.{side}_headers.{rest}", message))
    return errors


def _check_member_health(upstreams: dict) -> list[tuple[str, str]]:
    """Health belongs to the upstreams that list backends; a members upstream uses theirs."""
    errors = []
    for name, upstream in upstreams.items():
        if upstream.get("members"):
            for key in ("health_check", "passive_health"):
                if key in upstream:
                    errors.append((f"upstreams.{name}.{key}", "set it on the member upstreams that list backends; a members upstream uses their health"))
    return errors


def _check_routes(listeners: dict, routes: dict, upstreams: dict, filters: dict) -> list[tuple[str, str]]:
    errors = []
    for name, listener in listeners.items():
        names = listener.get("routes")
        if not isinstance(names, list):
            continue
        for index, route in enumerate(names):
            if isinstance(route, str) and route not in routes:
                errors.append((f"listeners.{name}.routes[{index}]", f"no route named {route!r} (known: {_known(routes)})"))
        if len(set(map(str, names))) != len(names):
            errors.append((f"listeners.{name}.routes", "lists a route twice"))
    for name, route in routes.items():
        target = route.get("upstream")
        if isinstance(target, str) and target not in upstreams:
            errors.append((f"routes.{name}.upstream", f"no upstream named {target!r} (known: {_known(upstreams)})"))
        for index, filter_name in enumerate(route.get("filters") or []):
            if isinstance(filter_name, str) and filter_name not in filters:
                errors.append((f"routes.{name}.filters[{index}]", f"no filter named {filter_name!r} (known: {_known(filters)})"))
    return errors


def check_filters(filters: dict) -> list[tuple[str, str]]:
    """Each filter table: a known ``kind`` and that kind's own typed keys."""
    from pydantic import ValidationError

    from ..filters.registry import lookup
    from .load import pydantic_errors

    errors = []
    for name, body in filters.items():
        kind = body.get("kind")
        if not isinstance(kind, str):
            errors.append((f"filters.{name}.kind", "required: the filter kind (e.g. \"headers\", \"ratelimit\")"))
            continue
        try:
            cls = lookup(kind)
        except ValueError as exc:
            errors.append((f"filters.{name}.kind", str(exc)))
            continue
        options = {key: value for key, value in body.items() if key != "kind"}
        try:
            cls.Config.model_validate(options)
        except ValidationError as exc:
            errors.extend((f"filters.{name}.{path}" if path else f"filters.{name}", message) for path, message in pydantic_errors(exc))
    return errors


def _check_access_logs(listeners: dict) -> list[tuple[str, str]]:
    from ..observability.accesslog import resolve_format

    errors = []
    for name, listener in listeners.items():
        spec = listener.get("access_log_format")
        if spec is None or not isinstance(spec, str | list):
            continue
        try:
            resolve_format(spec)
        except ValueError as exc:
            errors.append((f"listeners.{name}.access_log_format", str(exc)))
    return errors


def _table(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        return {}
    return {name: body for name, body in value.items() if isinstance(body, dict)}


def _check_listener_upstreams(listeners: dict, upstreams: dict) -> list[tuple[str, str]]:
    errors = []
    for name, listener in listeners.items():
        udp = listener.get("protocol") == "udp"
        if udp and listener.get("proxy_protocol") is True:
            errors.append((f"listeners.{name}.proxy_protocol", "not supported for UDP listeners"))
        elif listener.get("proxy_protocol_trusted") and listener.get("proxy_protocol") is not True:
            errors.append((f"listeners.{name}.proxy_protocol_trusted", "has no effect unless proxy_protocol = true"))
        target = listener.get("upstream")
        errors += _check_listener_target(name, listener)
        if not isinstance(target, str):
            continue
        if target not in upstreams:
            errors.append((f"listeners.{name}.upstream", f"no upstream named {target!r} (known: {_known(upstreams)})"))
            continue
        hash_key = upstreams[target].get("hash_key", "client_ip")
        if listener.get("protocol", "tcp") != "http" and hash_key != "client_ip":
            errors.append((f"upstreams.{target}.hash_key", f"{hash_key!r} needs HTTP requests; listeners.{name} is {listener.get('protocol', 'tcp')}"))
        if udp:
            for leaf in sorted(_leaves(target, upstreams)):
                if upstreams[leaf].get("proxy_protocol"):
                    errors.append((f"upstreams.{leaf}.proxy_protocol", f"not supported for UDP listener listeners.{name}"))
                if any(isinstance(b, str) and b.strip().startswith("unix:") for b in upstreams[leaf].get("backends") or []):
                    errors.append((f"upstreams.{leaf}.backends", f"unix sockets cannot receive UDP from listeners.{name}"))
                if upstreams[leaf].get("health_check"):
                    errors.append((f"upstreams.{leaf}.health_check", f"TCP health checks would mark UDP backends of listeners.{name} down; remove it"))
    return errors


def _check_listener_target(name: str, listener: dict) -> list[tuple[str, str]]:
    """tcp/udp listeners name one upstream; http listeners an upstream or routes."""
    protocol = listener.get("protocol", "tcp")
    has_upstream, has_routes = "upstream" in listener, bool(listener.get("routes"))
    if protocol != "http":
        if has_routes:
            return [(f"listeners.{name}.routes", f"routes are for http listeners, not {protocol}")]
        return [] if has_upstream else [(f"listeners.{name}.upstream", "required key is missing")]
    if has_upstream and has_routes:
        return [(f"listeners.{name}.routes", "give either upstream or routes, not both")]
    if not has_upstream and not has_routes:
        return [(f"listeners.{name}", "an http listener needs an upstream or routes")]
    return []


def _check_members(upstreams: dict) -> list[tuple[str, str]]:
    errors = []
    for name, upstream in upstreams.items():
        members = upstream.get("members")
        if not isinstance(members, list):
            continue
        for index, text in enumerate(members):
            try:
                member, _ = parse_member(text) if isinstance(text, str) else (None, 0)
            except ValueError:
                continue  # reported by the structural pass
            if member is None:
                continue
            path = f"upstreams.{name}.members[{index}]"
            if member not in upstreams:
                errors.append((path, f"no upstream named {member!r} (known: {_known(upstreams)})"))
            elif _reaches(member, name, upstreams):
                errors.append((path, f"upstream {member!r} leads back to {name!r}: members must not form a cycle"))
    return errors


def _member_names(upstream: dict) -> list[str]:
    names = []
    for text in upstream.get("members") or []:
        try:
            names.append(parse_member(text)[0])
        except (ValueError, AttributeError):
            pass
    return names


def _reaches(start: str, target: str, upstreams: dict) -> bool:
    seen, stack = set(), [start]
    while stack:
        current = stack.pop()
        if current == target:
            return True
        if current in seen or current not in upstreams:
            continue
        seen.add(current)
        stack.extend(_member_names(upstreams[current]))
    return False


def _leaves(start: str, upstreams: dict) -> set[str]:
    seen, stack, leaves = set(), [start], set()
    while stack:
        current = stack.pop()
        if current in seen or current not in upstreams:
            continue
        seen.add(current)
        members = _member_names(upstreams[current])
        if members:
            stack.extend(members)
        else:
            leaves.add(current)
    return leaves


def _check_addresses(listeners: dict, demo: Any) -> list[tuple[str, str]]:
    errors = []
    bound: list[tuple[str, str, Address]] = []  # (TOML path, transport, address)
    candidates = [(f"listeners.{name}.addr", listener) for name, listener in listeners.items()]
    if isinstance(demo, dict):
        candidates.insert(0, ("demo.addr", demo))  # the demo origin listens on TCP too
    for path, table in candidates:
        text = table.get("addr")
        if not isinstance(text, str):
            continue
        try:
            address = parse_address(text)
        except ValueError:
            continue  # reported by the structural pass
        transport = "udp" if table.get("protocol") == "udp" else "tcp"
        if transport == "udp" and address.is_unix:
            errors.append((path, "UDP listeners need host:port, not a unix socket"))
            continue
        for other, other_transport, other_address in bound:
            if other_transport == transport and _overlap(address, other_address):
                errors.append((path, f"{address} ({transport}) clashes with {other} ({other_address})"))
        bound.append((path, transport, address))
    return errors


_WILDCARDS = {"0.0.0.0", "::", ""}


def _overlap(a: Address, b: Address) -> bool:
    """True when binding both would fail. IPv6 listeners are bound V6ONLY, so an IPv4 and
    an IPv6 address never clash, wildcard or not."""
    if a.is_unix or b.is_unix:
        return a.path == b.path
    if a.port != b.port or a.port == 0 or a.family != b.family:
        return False
    return a.host == b.host or a.host in _WILDCARDS or b.host in _WILDCARDS


def _known(table: dict) -> str:
    return ", ".join(sorted(table)) or "none defined"

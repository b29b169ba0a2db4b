"""HTTP routing, sans-IO: host/path matchers, the priority-ordered route table, path rewrite.

The config layer validates route fields with the ``parse_*`` helpers (each raises
``ValueError`` with a message it prefixes with the TOML path), builds one
:class:`RouteTable` per snapshot, and the HTTP phase driver calls
:meth:`RouteTable.match` once per request.
"""

from __future__ import annotations

from .matchers import (
    HostMatcher,
    PathMatcher,
    ValueMatcher,
    normalize_host,
    parse_header_name,
    parse_host_pattern,
    parse_method,
    parse_path_pattern,
    parse_value_pattern,
)
from .rewrite import PathRewrite
from .table import RouteSpec, RouteTable, parse_query, split_target

__all__ = [
    "HostMatcher",
    "PathMatcher",
    "PathRewrite",
    "RouteSpec",
    "RouteTable",
    "ValueMatcher",
    "normalize_host",
    "parse_header_name",
    "parse_host_pattern",
    "parse_method",
    "parse_path_pattern",
    "parse_query",
    "parse_value_pattern",
    "split_target",
]

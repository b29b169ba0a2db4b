"""Write parsed TOML (what ``tomllib`` returns) back as TOML text: ``tomllib.loads(dumps(d)) == d``.

Used where a config is stored or shown as text it was not read from (etcd keys, ``ferryman
config pull``). Comments and layout of the original are not kept. Sans-IO.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def dumps(doc: Mapping[str, Any], categories: Iterable[str] = ()) -> str:
    """A whole document: plain keys first, then one ``[table]`` per table; a table named in
    ``categories`` is written as one ``[table.name]`` per entry (``[upstreams.api]``)."""
    wanted = set(categories)
    plain = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    parts = [body(plain)] if plain else []
    for name, value in doc.items():
        if not isinstance(value, dict):
            continue
        if name in wanted and value and all(isinstance(entry, dict) for entry in value.values()):
            for entry_name, entry in value.items():
                parts.append(f"[{key(name)}.{key(entry_name)}]\n{body(entry)}")
        else:
            parts.append(f"[{key(name)}]\n{body(value)}")
    return "\n".join(parts)


def body(table: Mapping[str, Any]) -> str:
    """The ``key = value`` lines of one table (nested tables inline)."""
    return "".join(f"{key(name)} = {value(item)}\n" for name, item in table.items())


def key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else string(name)


def string(text: str) -> str:
    out = []
    for char in text:
        escaped = _ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def value(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if math.isnan(item):
            return "nan"
        if math.isinf(item):
            return "inf" if item > 0 else "-inf"
        return repr(item)
    if isinstance(item, str):
        return string(item)
    if isinstance(item, (datetime.datetime, datetime.date, datetime.time)):
        return item.isoformat()
    if isinstance(item, (list, tuple)):
        return "[" + ", ".join(value(x) for x in item) + "]"
    if isinstance(item, Mapping):
        return "{" + ", ".join(f"{key(k)} = {value(v)}" for k, v in item.items()) + "}" if item else "{}"
    raise TypeError(f"cannot write {type(item).__name__} as TOML")

"""How a config is laid out in etcd keys, both ways. Sans-IO.

Under a prefix such as ``/ferryman``:

- ``/ferryman/TABLE`` holds the TOML body of a top-level table (``/ferryman/server``,
  ``/ferryman/admin``);
- ``/ferryman/CATEGORY/NAME`` holds the TOML body of ``[CATEGORY.NAME]``
  (``/ferryman/upstreams/api``, ``/ferryman/listeners/web``).

:func:`merge` turns the keys into one document, :func:`load_keys` validates it with the file
loader's checks and names the etcd key in each error, :func:`split` does the reverse of
:func:`merge` (``ferryman config push``, the admin API's apply).
"""

from __future__ import annotations

import hashlib
import tomllib
import typing
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from . import toml_write
from .load import load_dict
from .model import Config


def _shape() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Top-level tables and categories (tables of named entries), in the model's order."""
    tables: list[str] = []
    categories: list[str] = []
    for name, field in Config.model_fields.items():
        (categories if typing.get_origin(field.annotation) is dict else tables).append(name)
    return tuple(tables), tuple(categories)


TABLES, CATEGORIES = _shape()
Errors = list[tuple[str, str]]


def key_range(prefix: str) -> tuple[bytes, bytes]:
    """The etcd range holding every key under ``prefix`` (``/ferryman/`` up to ``/ferryman0``)."""
    start = (prefix + "/").encode()
    return start, start[:-1] + b"0"  # "0" is the byte after "/"


def fingerprint(entries: Mapping[str, bytes]) -> str:
    """Identifies the content of the keys (not their revisions): equal content, equal print."""
    digest = hashlib.sha256()
    for name in sorted(entries):
        digest.update(len(name.encode()).to_bytes(4, "big") + name.encode())
        digest.update(len(entries[name]).to_bytes(4, "big") + entries[name])
    return digest.hexdigest()


def place(key: str, prefix: str) -> tuple[str, str | None] | str:
    """Where ``key`` goes: ``(table, None)``, ``(category, name)``, or why it fits nowhere."""
    rest = key[len(prefix) + 1:] if key.startswith(prefix + "/") else None
    if not rest:
        return f"not a key under {prefix}/"
    parts = rest.split("/")
    if len(parts) == 1:
        (name,) = parts
        if name in TABLES:
            return name, None
        if name in CATEGORIES:
            return f"{name!r} is a category: give each entry its own key, {prefix}/{name}/NAME"
        return f"unknown table {name!r} (tables: {', '.join(TABLES)}; categories: {', '.join(CATEGORIES)})"
    if len(parts) == 2:
        category, name = parts
        if category in CATEGORIES:
            if not name:
                return f"no entry name after {prefix}/{category}/"
            return category, name
        if category in TABLES:
            return f"{category!r} is a table, not a category: its whole body goes in {prefix}/{category}"
        return f"unknown category {category!r} (categories: {', '.join(CATEGORIES)})"
    return f"too deep: expected {prefix}/TABLE or {prefix}/CATEGORY/NAME"


def merge(entries: Mapping[str, bytes], prefix: str) -> tuple[dict[str, Any], Errors]:
    """One document from the keys (in key order), and every key that could not be used."""
    doc: dict[str, Any] = {}
    errors: Errors = []
    for key in sorted(entries):
        where = place(key, prefix)
        if isinstance(where, str):
            errors.append(("", f"etcd key {key}: {where}"))
            continue
        table, name = where
        path = table if name is None else f"{table}.{name}"  # as load.toml_path writes it
        try:
            body = tomllib.loads(entries[key].decode("utf-8"))
        except UnicodeDecodeError as exc:
            errors.append((path, f"not UTF-8 text: {exc.reason} at byte {exc.start} (etcd key {key})"))
            continue
        except tomllib.TOMLDecodeError as exc:
            errors.append((path, f"invalid TOML: {exc} (etcd key {key})"))
            continue
        if name is None:
            doc[table] = body
        else:
            doc.setdefault(table, {})[name] = body
    if not entries:
        errors.append(("", f"no keys under {prefix}/ (seed them with: ferryman config push FILE URL)"))
    return doc, errors


def key_of(path: str, doc: Mapping[str, Any], prefix: str) -> str | None:
    """The etcd key a TOML path of the merged document came from (None for the root)."""
    head = path.split(".", 1)[0].split("[", 1)[0]
    if head in TABLES:
        return f"{prefix}/{head}" if head in doc else None
    entries = doc.get(head)
    if head not in CATEGORIES or not isinstance(entries, dict):
        return None
    rest = path[len(head) + 1:]
    found = [n for n in entries if rest == n or rest.startswith((n + ".", n + "["))]
    return f"{prefix}/{head}/{max(found, key=len)}" if found else None


def load_keys(entries: Mapping[str, bytes], prefix: str, source: str = "") -> Config:
    """Merge and validate; a ConfigError names each problem's TOML path and etcd key."""
    doc, errors = merge(entries, prefix)
    if errors:
        raise ConfigError(errors, source)
    try:
        return load_dict(doc, source=source)
    except ConfigError as exc:
        raise ConfigError([_with_key(path, message, doc, prefix) for path, message in exc.errors], source) from None


def _with_key(path: str, message: str, doc: Mapping[str, Any], prefix: str) -> tuple[str, str]:
    key = key_of(path, doc, prefix)
    return (path, f"{message} (etcd key {key})") if key is not None else (path, message)


def split(doc: Mapping[str, Any], prefix: str) -> dict[str, bytes]:
    """The keys (and TOML bodies) that hold ``doc``; a ValueError for a name no key can carry."""
    out: dict[str, bytes] = {}
    for table, value in doc.items():
        if not isinstance(value, dict):
            raise ValueError(f"{table}: only tables can be stored in etcd keys")
        if table in CATEGORIES:
            for name, entry in value.items():
                if "/" in name or not name:
                    raise ValueError(f"{table}.{toml_write.key(name)}: an entry name with '/' (or an empty one) cannot be an etcd key")
                if not isinstance(entry, dict):
                    raise ValueError(f"{table}.{toml_write.key(name)}: expected a table")
                out[f"{prefix}/{table}/{name}"] = toml_write.body(entry).encode()
        elif table in TABLES:
            out[f"{prefix}/{table}"] = toml_write.body(value).encode()
        else:
            raise ValueError(f"{table}: unknown table")
    return out


def render(doc: Mapping[str, Any]) -> str:
    """The merged document as TOML text (tables first, then ``[category.name]`` entries)."""
    ordered = {name: doc[name] for name in (*TABLES, *CATEGORIES) if name in doc}
    ordered.update((name, value) for name, value in doc.items() if name not in ordered)
    return toml_write.dumps(ordered, CATEGORIES)

"""Load a TOML file into a validated :class:`Config`, or raise ConfigError with every problem.

Each problem is reported with its TOML path (``listeners.web.addr: port 99999 is out of
range``) so a user can find it without reading a traceback.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError
from .model import Config
from .validate import check_references


def load_file(path: str | Path) -> Config:
    """Read and validate a config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([("", "file not found")], str(path)) from None
    except OSError as exc:
        raise ConfigError([("", f"cannot read: {exc.strerror}")], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"not UTF-8 text: {exc.reason} at byte {exc.start}")], str(path)) from None
    return load_text(text, source=str(path))


def load_text(text: str, source: str = "") -> Config:
    """Parse and validate TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("", f"invalid TOML: {exc}")], source) from None
    return load_dict(data, source=source)


def load_dict(data: dict[str, Any], source: str = "") -> Config:
    """Validate an already-parsed document; collect structural and reference errors together."""
    errors: list[tuple[str, str]] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors.extend(pydantic_errors(exc))
    errors.extend(check_references(data))
    if config is not None and not errors:
        from .tls import check_tls  # reads the certificate files

        errors.extend(check_tls(config))
    if errors:
        raise ConfigError(_dedupe(errors), source)
    assert config is not None
    return config


def toml_path(loc: tuple[int | str, ...]) -> str:
    """``("upstreams", "api", "backends", 1)`` → ``upstreams.api.backends[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def pydantic_errors(exc: ValidationError) -> list[tuple[str, str]]:
    result = []
    for err in exc.errors(include_url=False):
        loc = tuple(part for part in err["loc"] if not _is_union_tag(part))
        result.append((toml_path(loc), _message(err)))
    return result


def _is_union_tag(part: int | str) -> bool:
    # pydantic inserts the branch name of a union or a validator ("function-before[...]")
    return isinstance(part, str) and ("[" in part or part in {"IPv4Network", "IPv6Network"})


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    if kind in {"dict_type", "model_type"}:
        return "expected a table"
    return message


def _dedupe(errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for item in errors:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out

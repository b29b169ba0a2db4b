"""docs/configuration.md stays complete: every config key has a table row in its section.

Walks every pydantic model reachable from :class:`ferryman.config.model.Config` (through
Optional, list and dict fields) and every built-in filter's ``Config``; each field must be a
``| `name` |`` row of a key table in the section for its TOML table, no row may name a key
that does not exist, a default written as a TOML literal must equal the model's, and every
``Literal`` value a key accepts must appear in its row. Access-log variables and formats,
template variables and ``retry_on`` values are checked against the modules' registries.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from ferryman.config.load import load_text
from ferryman.config.model import Config, UpstreamConfig
from ferryman.filters import registry
from ferryman.filters.builtin import headers as headers_filter
from ferryman.observability import accesslog

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


# the document --------------------------------------------------------------------------------
@dataclass
class Section:
    level: int
    title: str
    body: list[str]  # lines up to the next heading of any level
    scope: list[Section]  # this section and the sections nested under it


def parse_sections(text: str) -> list[Section]:
    """Markdown headings (outside code fences) with their bodies and nested scopes."""
    flat: list[Section] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"(#{1,6}) (.*)", line)
        if match:
            flat.append(Section(len(match.group(1)), match.group(2).strip(), [], []))
        elif flat:
            flat[-1].body.append(line)
    for i, section in enumerate(flat):
        section.scope.append(section)
        for later in flat[i + 1 :]:
            if later.level <= section.level:
                break
            section.scope.append(later)
    return flat


def cells(line: str) -> list[str]:
    """The cells of a table row (``\\|`` is a literal bar)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def tables(body: list[str]) -> list[tuple[list[str], list[list[str]]]]:
    """(header cells, row cells) of every table in a section body."""
    out: list[tuple[list[str], list[list[str]]]] = []
    block: list[str] = []
    for line in [*body, ""]:
        if line.lstrip().startswith("|"):  # also tables indented inside a list item
            block.append(line.strip())
            continue
        if len(block) >= 2 and re.fullmatch(r"[|\s:-]+", block[1]):
            out.append((cells(block[0]), [cells(row) for row in block[2:]]))
        block = []
    return out


def row_keys(section: Section, header: str) -> dict[str, list[str]]:
    """First cell (inside backticks) → row, for tables of ``section`` whose first column is
    ``header``. A first cell that is not one backticked name maps under its raw text."""
    rows: dict[str, list[str]] = {}
    for head, body in tables(section.body):
        if head and head[0] == header:
            for row in body:
                match = re.fullmatch(r"`([^`]+)`", row[0]) if row else None
                rows[match.group(1) if match else (row[0] if row else "")] = row
    return rows


def find(sections: list[Section], marker: str) -> Section | None:
    """The first section whose heading contains ``marker``."""
    return next((s for s in sections if marker in s.title), None)


# the models ------------------------------------------------------------------------------------
def nested_models(tp: Any, in_dict: bool = False) -> Iterator[tuple[type[BaseModel], bool]]:
    """Models inside an annotation, each with whether it sits in a dict's values."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        yield tp, in_dict
        return
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return
    if origin is Annotated:
        yield from nested_models(args[0], in_dict)
    elif origin is dict:
        yield from nested_models(args[1], True)
    else:
        for arg in args:
            yield from nested_models(arg, in_dict)


def literal_values(tp: Any) -> list[Any]:
    """Every ``Literal`` value an annotation accepts (not looking into nested models)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return []
    if get_origin(tp) is Literal:
        return list(get_args(tp))
    return [value for arg in get_args(tp) for value in literal_values(arg)]


def config_models() -> list[tuple[str, type[BaseModel]]]:
    """(TOML path, model) of every table below Config: ``server``, ``listeners.NAME``,
    ``upstreams.NAME.health_check``, ``routes.NAME.request_headers`` …"""
    found: list[tuple[str, type[BaseModel]]] = []

    def walk(path: str, model: type[BaseModel]) -> None:
        for name, info in model.model_fields.items():
            for sub, in_dict in nested_models(info.annotation):
                sub_path = f"{path}.{name}" if path else name
                sub_path += ".NAME" if in_dict else ""
                if (sub_path, sub) not in found:
                    found.append((sub_path, sub))
                    walk(sub_path, sub)

    walk("", Config)
    return found


def builtin_filters() -> list[tuple[str, type[BaseModel]]]:
    """(kind, Config model) of every built-in filter kind."""
    out = []
    for kind in registry.kinds():
        cls = registry.lookup(kind)
        if cls.__module__.startswith("ferryman.filters.builtin."):
            out.append((kind, cls.Config))
    return out


def filter_nested(kind_model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """(TOML path, model) of tables inside a filter's options (``filters.NAME.level``)."""
    out = []
    for name, info in kind_model.model_fields.items():
        for sub, in_dict in nested_models(info.annotation):
            out.append((f"filters.NAME.{name}" + (".NAME" if in_dict else ""), sub))
    return out


# checks ----------------------------------------------------------------------------------------
def field_type(info: FieldInfo) -> Any:
    return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


def default_problem(where: str, info: FieldInfo, cell: str) -> str | None:
    """Whether the default column agrees with the model. ``required`` and ``none`` are
    checked; one backticked TOML literal is parsed, validated and compared; prose (such
    as "number of CPUs") is not checked."""
    if cell == "required":
        return None if info.is_required() else f"{where}: documented as required, but it has a default"
    if info.is_required():
        return f"{where}: is required, but documented with the default {cell!r}"
    default = info.get_default(call_default_factory=True)
    if cell == "none":
        return None if default is None else f"{where}: documented default none, model default {default!r}"
    match = re.fullmatch(r"`([^`]*)`", cell)
    if match is None:
        return None
    try:
        value = tomllib.loads("v = " + match.group(1))["v"]
        parsed = TypeAdapter(field_type(info)).validate_python(value, strict=True)
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        return f"{where}: documented default {cell} is not a valid value: {exc}"
    if parsed != default:
        return f"{where}: documented default {cell} is {parsed!r}, the model's is {default!r}"
    return None


def table_problems(section: Section | None, path: str, model: type[BaseModel]) -> list[str]:
    """Every problem of the key table documenting ``model`` (at TOML path ``path``)."""
    if section is None:
        return [f"{path}: no section heading for this table"]
    rows = row_keys(section, "key")
    fields = model.model_fields
    problems = [f"{path}.{name}: no '| `{name}` |' row in section {section.title!r}" for name in fields if name not in rows]
    problems += [f"{path}: row {key!r} in section {section.title!r} is not a key of {model.__name__}" for key in rows if key not in fields]
    for name, info in fields.items():
        row = rows.get(name)
        if row is None:
            continue
        where = f"{path}.{name}"
        if len(row) != 4:
            problems.append(f"{where}: row needs 4 cells (key, type, default, meaning), has {len(row)}")
            continue
        problem = default_problem(where, info, row[2])
        if problem:
            problems.append(problem)
        text = " ".join(row)
        for value in literal_values(info.annotation):
            if f"`{value}`" not in text and f'`"{value}"`' not in text:
                problems.append(f"{where}: accepted value {value!r} is not named in its row")
    return problems


def config_problems(text: str) -> list[str]:
    """Every documentation problem of the config models in ``text``."""
    sections = parse_sections(text)
    problems = []
    for name, info in Config.model_fields.items():
        in_dict = get_origin(info.annotation) is dict
        path = name + (".NAME" if in_dict else "")
        if find(sections, f"`[{path}]`") is None:
            problems.append(f"{path}: no section heading for this table")
    for path, model in config_models():
        problems += table_problems(find(sections, f"`[{path}]`"), path, model)
    return problems


def filter_problems(text: str) -> list[str]:
    """Every documentation problem of the built-in filters' options in ``text``."""
    sections = parse_sections(text)
    common = find(sections, "`[filters.NAME]`")
    problems = []
    if common is None or set(row_keys(common, "key")) != {"kind"}:
        problems.append("filters.NAME: the section needs a key table with exactly the row `kind`")
    for kind, model in builtin_filters():
        section = find(sections, f'`kind = "{kind}"`')
        problems += table_problems(section, f"filters.NAME (kind {kind})", model)
        for path, sub in filter_nested(model):
            scope = section.scope if section is not None else []
            problems += table_problems(find(scope, f"`[{path}]`"), f"{path} (kind {kind})", sub)
    return problems


def named_rows(text: str, heading: str, header: str) -> set[str]:
    section = find(parse_sections(text), heading)
    assert section is not None, f"no section heading containing {heading!r}"
    return set(row_keys(section, header))


def access_log_variables() -> set[str]:
    names = {f"${name}" for name in accesslog.VARIABLES}
    # prefixed families ($http_NAME …): documented as one row each
    names |= {f"${prefix}NAME" for prefix, *_ in getattr(accesslog, "_PREFIXED", ())}
    return names


# tests -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_the_walk_reaches_every_table() -> None:
    """Guards the walker itself: if it stopped recursing, the other tests would pass vacuously."""
    paths = {path for path, _ in config_models()}
    assert {
        "server", "demo", "listeners.NAME", "upstreams.NAME", "upstreams.NAME.tcp_keepalive",
        "upstreams.NAME.health_check", "upstreams.NAME.passive_health", "routes.NAME",
        "routes.NAME.request_headers", "routes.NAME.response_headers",
    } <= paths
    kinds = {kind for kind, _ in builtin_filters()}
    assert {"headers", "redirect", "mock", "request_id", "ip_acl", "basic_auth", "cors", "ratelimit", "compression", "static"} <= kinds


def test_every_config_key_is_documented(doc: str) -> None:
    assert config_problems(doc) == []


def test_every_builtin_filter_key_is_documented(doc: str) -> None:
    assert filter_problems(doc) == []


def test_every_access_log_variable_is_documented(doc: str) -> None:
    assert named_rows(doc, "Access log variables", "variable") == access_log_variables()


def test_every_access_log_format_is_documented(doc: str) -> None:
    section = find(parse_sections(doc), "Access log formats")
    assert section is not None
    assert set(row_keys(section, "name")) == set(accesslog.FORMATS) | {"json"}
    body = "\n".join(section.body)
    for name, template in accesslog.FORMATS.items():
        assert f"{name}:".ljust(10) + template in body, f"the full {name} template is not in the section"
    assert "json:".ljust(10) + " ".join(accesslog.JSON_FIELDS) in body


def test_every_template_variable_is_documented(doc: str) -> None:
    rows = named_rows(doc, "Template variables", "variable")
    assert rows == {f"${name}" for name in headers_filter.VARIABLES}


def test_every_retry_condition_is_documented(doc: str) -> None:
    values = set(literal_values(UpstreamConfig.model_fields["retry_on"].annotation))
    assert values, "retry_on accepts no Literal values any more: update this test"
    assert named_rows(doc, "Retry policy", "value") == values


def test_the_example_at_the_top_is_a_valid_config(doc: str) -> None:
    section = find(parse_sections(doc), "Example")
    assert section is not None
    body = "\n".join(section.body)
    match = re.search(r"```toml\n(.*?)```", body, re.DOTALL)
    assert match is not None
    config = load_text(match.group(1), source="docs/configuration.md")
    assert config.listeners and config.upstreams and config.routes and config.filters


# the checks can fail -----------------------------------------------------------------------------
def _without_row(text: str, heading: str, key: str) -> str:
    """``text`` with the ``| `key` |`` row of the first section containing ``heading`` removed."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and heading in line)
    index = next(i for i in range(start, len(lines)) if lines[i].startswith(f"| `{key}` |"))
    return "\n".join(lines[:index] + lines[index + 1 :])


@pytest.mark.parametrize(
    ("heading", "key", "expected"),
    [
        ("`[server]`", "watch", "server.watch: no '| `watch` |' row"),
        ("`[upstreams.NAME.passive_health]`", "cool_down", "upstreams.NAME.passive_health.cool_down: no"),
        ("`[routes.NAME.request_headers]`", "remove", "routes.NAME.request_headers.remove: no"),
    ],
)
def test_a_missing_config_row_is_reported(doc: str, heading: str, key: str, expected: str) -> None:
    problems = config_problems(_without_row(doc, heading, key))
    assert any(p.startswith(expected) for p in problems), problems


def test_a_missing_filter_row_is_reported(doc: str) -> None:
    problems = filter_problems(_without_row(doc, "`[filters.NAME.level]`", "zstd"))
    assert any(p.startswith("filters.NAME.level (kind compression).zstd: no") for p in problems), problems
    problems = filter_problems(_without_row(doc, '`kind = "cors"`', "max_age"))
    assert any("(kind cors).max_age: no" in p for p in problems), problems


def test_a_stale_row_or_wrong_default_is_reported(doc: str) -> None:
    row = "| `grace_period` | duration | `\"5s\"` |"
    assert row in doc
    problems = config_problems(doc.replace(row, "| `grace_period` | duration | `\"6s\"` |"))
    assert any(p.startswith("server.grace_period: documented default") for p in problems), problems
    problems = config_problems(doc.replace(row, "| `grace_periods` | duration | `\"5s\"` |"))
    assert any("'grace_periods'" in p and "not a key" in p for p in problems), problems


def test_a_missing_access_log_variable_is_noticed(doc: str) -> None:
    assert named_rows(_without_row(doc, "Access log variables", "$upstream_tries"), "Access log variables", "variable") != access_log_variables()

"""The etcd key layout: keys → one document (and back), errors naming TOML path and key, and
the TOML writer the keys' bodies are made with."""

from __future__ import annotations

import datetime
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferryman.config import toml_write
from ferryman.config.etcd_layout import CATEGORIES, TABLES, fingerprint, key_of, key_range, load_keys, merge, place, render, split
from ferryman.errors import ConfigError

P = "/ferryman"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ferryman.toml"


def keys(**bodies: str) -> dict[str, bytes]:
    """``upstreams__api="..."`` → ``{"/ferryman/upstreams/api": b"..."}``."""
    return {f"{P}/{name.replace('__', '/')}": body.encode() for name, body in bodies.items()}


GOOD = keys(
    server='workers = 1\ngrace_period = "2s"\n',
    admin="",
    listeners__web='addr = "127.0.0.1:8080"\nprotocol = "http"\nroutes = ["api"]\n',
    routes__api='path = "/api"\nupstream = "api"\n',
    upstreams__api='backends = ["127.0.0.1:9000", "127.0.0.1:9001 weight=2"]\n',
)


def test_the_model_gives_the_tables_and_categories() -> None:
    assert {"server", "admin", "demo"} <= set(TABLES)
    assert {"listeners", "upstreams", "routes", "filters", "certificates"} <= set(CATEGORIES)
    assert not set(TABLES) & set(CATEGORIES)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("/ferryman/server", ("server", None)),
        ("/ferryman/upstreams/api", ("upstreams", "api")),
        ("/ferryman/upstreams/a.b", ("upstreams", "a.b")),
        ("/ferryman/upstreams", "'upstreams' is a category: give each entry its own key, /ferryman/upstreams/NAME"),
        ("/ferryman/server/workers", "'server' is a table, not a category: its whole body goes in /ferryman/server"),
        ("/ferryman/upstream/api", "unknown category 'upstream'"),
        ("/ferryman/nope", "unknown table 'nope'"),
        ("/ferryman/upstreams/", "no entry name after /ferryman/upstreams/"),
        ("/ferryman/upstreams/api/backends", "too deep: expected /ferryman/TABLE or /ferryman/CATEGORY/NAME"),
        ("/ferryman/", "not a key under /ferryman/"),
    ],
)
def test_place(key: str, expected: object) -> None:
    where = place(key, P)
    if isinstance(expected, str):
        assert isinstance(where, str) and expected in where
    else:
        assert where == expected


def test_merge_builds_one_document() -> None:
    doc, errors = merge(GOOD, P)
    assert errors == []
    assert doc == {
        "server": {"workers": 1, "grace_period": "2s"},
        "admin": {},  # an empty key is an empty table: [admin] with its defaults
        "listeners": {"web": {"addr": "127.0.0.1:8080", "protocol": "http", "routes": ["api"]}},
        "routes": {"api": {"path": "/api", "upstream": "api"}},
        "upstreams": {"api": {"backends": ["127.0.0.1:9000", "127.0.0.1:9001 weight=2"]}},
    }
    config = load_keys(GOOD, P)
    assert config.admin is not None and list(config.upstreams) == ["api"]


def test_merge_reports_every_unusable_key_with_its_name() -> None:
    entries = {**GOOD, **keys(upstreams__bad='backends = ["x"\nlb = 1\n', routes__deep__er="", nope="", upstreams__latin="x = 'é'".encode("latin-1").decode("latin-1"))}
    entries[f"{P}/upstreams/latin"] = "x = '\xe9'".encode("latin-1")
    _, errors = merge(entries, P)
    assert ("", f"etcd key {P}/nope: unknown table 'nope' (tables: {', '.join(TABLES)}; categories: {', '.join(CATEGORIES)})") in errors
    assert any(path == "" and f"etcd key {P}/routes/deep/er: too deep" in message for path, message in errors)
    bad = [m for p, m in errors if p == "upstreams.bad"]
    assert len(bad) == 1 and bad[0].startswith("invalid TOML: ") and "(at line 2, column 1)" in bad[0] and bad[0].endswith(f"(etcd key {P}/upstreams/bad)")
    latin = [m for p, m in errors if p == "upstreams.latin"]
    assert latin and latin[0].startswith("not UTF-8 text") and latin[0].endswith(f"(etcd key {P}/upstreams/latin)")
    with pytest.raises(ConfigError) as caught:
        load_keys(entries, P, source="etcd://h:1/ferryman")
    assert caught.value.errors == errors and caught.value.source == "etcd://h:1/ferryman"


def test_no_keys_at_all_is_an_error() -> None:
    _, errors = merge({}, P)
    assert errors == [("", f"no keys under {P}/ (seed them with: ferryman config push FILE URL)")]


def test_validation_errors_name_the_toml_path_and_the_key() -> None:
    entries = {
        **GOOD,
        **keys(
            server='workers = "2"\n',
            upstreams__api='backends = ["127.0.0.1:99999"]\n',
            routes__api='upstream = "missing"\n',
            **{"upstreams__a.b": 'backends = ["127.0.0.1:1"]\nlb = "fastest"\n'},
        ),
    }
    with pytest.raises(ConfigError) as caught:
        load_keys(entries, P, source="etcd://h:1/ferryman")
    errors = dict(caught.value.errors)
    assert errors["upstreams.api.backends[0]"].endswith(f"(etcd key {P}/upstreams/api)")
    assert "out of range" in errors["upstreams.api.backends[0]"]
    assert errors["server.workers"].endswith(f"(etcd key {P}/server)")
    assert errors["routes.api.upstream"].endswith(f"(etcd key {P}/routes/api)")
    assert errors["upstreams.a.b.lb"].endswith(f"(etcd key {P}/upstreams/a.b)")
    assert caught.value.render().startswith("etcd://h:1/ferryman: ")


def test_key_of_picks_the_longest_entry_name() -> None:
    doc = {"upstreams": {"a": {}, "a.b": {}}, "server": {}}
    assert key_of("upstreams.a.b.lb", doc, P) == f"{P}/upstreams/a.b"
    assert key_of("upstreams.a.lb", doc, P) == f"{P}/upstreams/a"
    assert key_of("upstreams.a", doc, P) == f"{P}/upstreams/a"
    assert key_of("upstreams.a[0]", doc, P) == f"{P}/upstreams/a"
    assert key_of("server.workers", doc, P) == f"{P}/server"
    assert key_of("admin.addr", doc, P) is None  # no such key: nothing to name
    assert key_of("upstreams.zz", doc, P) is None
    assert key_of("", doc, P) is None


def test_split_is_the_reverse_of_merge_on_the_example_config() -> None:
    doc = tomllib.loads(EXAMPLE.read_text())
    entries = split(doc, P)
    assert all(key.startswith(P + "/") for key in entries)
    assert merge(entries, P) == (doc, [])
    assert tomllib.loads(render(doc)) == doc
    assert render(doc).index("[server]") < render(doc).index("[listeners.")  # tables first


def test_split_refuses_what_no_key_can_hold() -> None:
    with pytest.raises(ValueError, match=r"upstreams\.\"a/b\": an entry name with '/'"):
        split({"upstreams": {"a/b": {"backends": []}}}, P)
    with pytest.raises(ValueError, match="only tables"):
        split({"workers": 1}, P)


def test_key_range_and_fingerprint() -> None:
    assert key_range("/ferryman") == (b"/ferryman/", b"/ferryman0")
    a = {"/p/x": b"1", "/p/y": b"2"}
    assert fingerprint(a) == fingerprint(dict(reversed(a.items())))
    assert fingerprint(a) != fingerprint({"/p/x": b"1", "/p/y": b"3"})
    assert fingerprint({"/p/x1": b""}) != fingerprint({"/p/x": b"1"})  # lengths keep key and value apart


# the TOML writer ------------------------------------------------------------------------------
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(),
    st.datetimes(),
    st.dates(),
    st.times(),
)
names = st.text(min_size=0, max_size=8)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4), max_leaves=12)


@given(st.dictionaries(names, values, max_size=6))
def test_a_body_reads_back_as_written(table: dict[str, Any]) -> None:
    assert tomllib.loads(toml_write.body(table)) == table


@given(st.dictionaries(names, st.dictionaries(names, st.dictionaries(names, values, max_size=3), max_size=3), max_size=3))
def test_a_document_with_categories_reads_back_as_written(doc: dict[str, Any]) -> None:
    assert tomllib.loads(toml_write.dumps(doc, categories=list(doc))) == doc


def test_special_values() -> None:
    table = {"inf": math.inf, "ninf": -math.inf, "q": 'say "hi"\n\t\\ \x00\x7f', "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC), "": 1, "a b": {}}
    back = tomllib.loads(toml_write.body(table))
    assert back == table
    assert math.isnan(tomllib.loads(toml_write.body({"n": math.nan}))["n"])
    with pytest.raises(TypeError, match="cannot write set"):
        toml_write.value({1})

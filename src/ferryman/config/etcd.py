"""A config kept in etcd (``-c etcd://HOST:PORT/PREFIX``): read, validate and write its keys.

The keys' layout is in :mod:`.etcd_layout`, the wire in :mod:`.etcd_client`, the watch in
:mod:`.etcd_watch`. Every method here blocks: call it before the event loop runs, or from a
thread.
"""

from __future__ import annotations

import tomllib

from ..errors import ConfigError
from .etcd_client import COMPACTED, EtcdClient, EtcdError, EtcdUnavailable, WriteResult
from .etcd_layout import fingerprint, load_keys, merge, render, split
from .etcd_url import EtcdUrl, is_etcd_url, parse_etcd_url
from .load import load_dict
from .model import Config

__all__ = ["EtcdError", "EtcdSource", "EtcdUnavailable", "EtcdUrl", "WriteResult", "is_etcd_url", "parse_etcd_url"]


class EtcdSource:
    """The keys under one prefix. ``revision`` and ``fingerprint`` describe the content read
    last by :meth:`load` (loaded or refused): the watch compares against them."""

    def __init__(self, url: EtcdUrl, client: EtcdClient | None = None) -> None:
        self.url = url
        self.client = client if client is not None else EtcdClient(url)
        self.revision = 0
        self.fingerprint = ""
        self.pushed = 0  # the revision of this process's last write (the admin API's apply)
        self.text = url.redacted()  # ``-c`` as given (with the password): what a binary upgrade's new master is started with

    @classmethod
    def parse(cls, text: str) -> EtcdSource:
        """From ``-c``'s text; a ValueError says what is wrong with the URL."""
        source = cls(parse_etcd_url(text))
        source.text = text
        return source

    @property
    def name(self) -> str:
        """The URL without the password: what logs, errors and the admin API show."""
        return self.url.redacted()

    @property
    def prefix(self) -> str:
        return self.url.prefix

    def load(self, revision: int | None = None) -> Config:
        """Read the keys (at ``revision``, or the latest) and validate them; a ConfigError
        names each problem's TOML path and etcd key. ``revision`` is where the master read a
        reload (with workers, every process loads the same content); once etcd compacted it
        away, the latest is read."""
        try:
            read, entries = self.client.range_prefix(self.prefix, revision)
        except EtcdError as exc:
            if revision is None or COMPACTED not in str(exc):
                raise
            read, entries = self.client.range_prefix(self.prefix)
        self.revision, self.fingerprint = read, fingerprint(entries)
        return load_keys(entries, self.prefix, source=self.name)

    def pull(self) -> tuple[int, str]:
        """The keys merged into one TOML document, and the revision read (not validated, so
        a config with mistakes can be fetched to be fixed; keys that do not parse are errors)."""
        revision, entries = self.client.range_prefix(self.prefix)
        doc, errors = merge(entries, self.prefix)
        if errors:
            raise ConfigError(errors, self.name)
        return revision, render(doc)

    def push(self, text: str, origin: str) -> WriteResult:
        """Validate TOML ``text`` (errors are named after ``origin``, e.g. the file) with every
        check of a file, then make the keys under the prefix hold exactly it, in one transaction."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([("", f"invalid TOML: {exc}")], origin) from None
        load_dict(doc, source=origin)
        try:
            entries = split(doc, self.prefix)
        except ValueError as exc:
            raise ConfigError([("", str(exc))], origin) from None
        result = self.client.replace_prefix(self.prefix, entries)
        self.pushed = max(self.pushed, result.revision)
        return result

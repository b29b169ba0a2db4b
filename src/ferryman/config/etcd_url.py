"""``etcd://HOST:PORT[,HOST:PORT...]/PREFIX[?timeout=5s&user=U&password=P&ca=PATH...]``:
where a config lives in etcd. Parsed once, when ``-c`` names a URL; every mistake is a
precise error.

TLS: ``ca=PATH`` (the CA bundle that verifies etcd; without it the system's CAs),
``cert=PATH`` + ``key=PATH`` (a client certificate, both or neither) and ``tls=true`` (TLS with
the system's CAs) each switch every endpoint to HTTPS. The files are read when the client is
built (:func:`.etcd_client.tls_context`), not here.

Sans-IO: nothing here talks to etcd or reads a file.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import quote, unquote

from .types import parse_duration

SCHEME = "etcd://"
DEFAULT_PORT = 2379
DEFAULT_TIMEOUT = 5.0
_PARAMS = ("timeout", "user", "password", "ca", "cert", "key", "tls")
_BOOLEANS = {"true": True, "false": False}


def is_etcd_url(text: str) -> bool:
    """Whether ``-c`` names etcd (``etcd:``, or the ``etcds:`` ferryman refuses with a hint,
    in any case) rather than a file."""
    return text[:5].lower() == "etcd:" or text[:6].lower() == "etcds:"


@dataclass(frozen=True, slots=True)
class EtcdUrl:
    """A parsed etcd URL: endpoints in the order they are tried, the key prefix (``/name``,
    no trailing slash), the per-request timeout in seconds, optional credentials and TLS:
    ``tls`` is True whenever the endpoints speak HTTPS (``tls=true`` or any of ``ca``,
    ``cert``, ``key`` given); ``ca``/``cert``/``key`` are file paths as written."""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str
    timeout: float = DEFAULT_TIMEOUT
    user: str | None = None
    password: str | None = None
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def redacted(self) -> str:
        """The URL as it may be logged and shown: never the password (file paths are no
        secret: they are shown)."""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.endpoints)
        query = [] if self.timeout == DEFAULT_TIMEOUT else [f"timeout={self.timeout:g}s"]
        if self.user is not None:
            query.append(f"user={quote(self.user, safe='')}")
        files = [(name, path) for name, path in (("ca", self.ca), ("cert", self.cert), ("key", self.key)) if path is not None]
        query += [f"{name}={quote(path, safe='/')}" for name, path in files]
        if self.tls and not files:
            query.append("tls=true")
        return f"{SCHEME}{hosts}{self.prefix}" + ("?" + "&".join(query) if query else "")

    def __str__(self) -> str:
        return self.redacted()


def parse_etcd_url(text: str) -> EtcdUrl:
    """Parse ``text``; a ValueError says what is wrong and what was expected."""
    if text[:8].lower() == "etcds://":
        raise ValueError(f"no etcds:// scheme: write {SCHEME}HOST:PORT/PREFIX?tls=true (or ?ca=PATH) for TLS")
    if not text.lower().startswith(SCHEME):
        raise ValueError(f"expected {SCHEME}HOST:PORT[,HOST:PORT...]/PREFIX, got {text!r}")
    rest = text[len(SCHEME):]
    rest, _, query = rest.partition("?")
    if "#" in query or "#" in rest:
        raise ValueError("a fragment (#...) has no meaning in an etcd URL")
    hosts, slash, path = rest.partition("/")
    if "@" in hosts:
        raise ValueError("put credentials in the query (?user=NAME&password=SECRET), not before the host")
    endpoints = tuple(_endpoint(part) for part in hosts.split(",")) if hosts else ()
    if not endpoints:
        raise ValueError(f"no etcd endpoint: expected {SCHEME}HOST:PORT/PREFIX")
    if len(set(endpoints)) != len(endpoints):
        raise ValueError("an endpoint is listed twice")
    prefix = _prefix(unquote(path) if slash else "")
    params = _params(query)
    timeout = DEFAULT_TIMEOUT
    if "timeout" in params:
        try:
            timeout = parse_duration(params["timeout"])
        except ValueError as exc:
            raise ValueError(f"timeout: {exc}") from None
        if timeout <= 0:
            raise ValueError("timeout: must be more than 0")
    user, password = params.get("user"), params.get("password")
    if (user is None) != (password is None):
        raise ValueError("user and password go together: give both or neither")
    if user == "":
        raise ValueError("user: must not be empty")
    return EtcdUrl(endpoints, prefix, timeout, user, password, *_tls(params))


def _tls(params: dict[str, str]) -> tuple[bool, str | None, str | None, str | None]:
    """``tls``, ``ca``, ``cert`` and ``key`` checked together: (uses TLS, ca, cert, key)."""
    ca, cert, key = params.get("ca"), params.get("cert"), params.get("key")
    for name, value in (("ca", ca), ("cert", cert), ("key", key)):
        if value is not None and not value.strip():
            raise ValueError(f"{name}: must name a PEM file")
    if (cert is None) != (key is None):
        raise ValueError("cert and key go together (a client certificate and its private key): give both or neither")
    files = ca is not None or cert is not None
    flag = params.get("tls")
    if flag is not None and flag.lower() not in _BOOLEANS:
        raise ValueError(f"tls: expected true or false, got {flag!r}")
    if flag is not None and not _BOOLEANS[flag.lower()] and files:
        raise ValueError("tls=false contradicts ca, cert and key (they mean TLS): leave tls out")
    return files or (flag is not None and _BOOLEANS[flag.lower()]), ca, cert, key


def _endpoint(part: str) -> tuple[str, int]:
    part = part.strip()
    if not part:
        raise ValueError("an empty endpoint (two commas, or one at an end)")
    if part.startswith("["):  # [v6]:port
        host, close, tail = part[1:].partition("]")
        if not close:
            raise ValueError(f"endpoint {part!r}: missing ']' after an IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"endpoint {part!r}: {host!r} is not an IPv6 address") from None
        if tail and not tail.startswith(":"):
            raise ValueError(f"endpoint {part!r}: expected ':PORT' after ']'")
        port_text = tail[1:] if tail else ""
    else:
        host, colon, port_text = part.partition(":")
        if ":" in port_text:
            raise ValueError(f"endpoint {part!r}: write an IPv6 address in brackets, as [::1]:2379")
        if colon and not port_text:
            raise ValueError(f"endpoint {part!r}: empty port")
        if not host or not all(c.isalnum() or c in "-._" for c in host):
            raise ValueError(f"endpoint {part!r}: {host!r} is not a host name or address")
    if not port_text:
        return host, DEFAULT_PORT
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"endpoint {part!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"endpoint {part!r}: port {port} is out of range (1-65535)")
    return host, port


def _prefix(path: str) -> str:
    name = path.strip("/")
    if not name:
        raise ValueError(f"no key prefix: expected {SCHEME}HOST:PORT/PREFIX, e.g. {SCHEME}127.0.0.1:2379/ferryman")
    if "//" in name:
        raise ValueError(f"key prefix /{name}: empty path segment ('//')")
    return "/" + name


def _params(query: str) -> dict[str, str]:
    """``a=1&b=2``, percent-decoded (``+`` stays a plus: passwords keep theirs)."""
    params: dict[str, str] = {}
    if not query:
        return params
    for pair in query.split("&"):
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise ValueError(f"query {query!r}: expected NAME=VALUE pairs joined by '&'")
        name, value = unquote(name), unquote(value)
        if name not in _PARAMS:
            raise ValueError(f"unknown parameter {name!r} (known: {', '.join(_PARAMS)})")
        if name in params:
            raise ValueError(f"parameter {name!r} is given twice")
        params[name] = value
    return params

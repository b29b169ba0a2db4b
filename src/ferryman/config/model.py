"""The validated, frozen configuration model (the public TOML contract).

Shapes follow DESIGN.md: named entities in per-category tables that refer to each other by
name. Structural checks live here (types, ranges, unknown keys); checks that need the whole
document (references, duplicate addresses) live in :mod:`ferryman.config.validate`.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ..net.addr import Address, parse_address
from ..upstream.backend import Backend, parse_backend
from .types import Duration, Network, Size, SocketAddress


PositiveDuration = Annotated[Duration, Field(gt=0)]


class Strict(BaseModel):
    """Base: unknown keys are errors, instances are immutable, and values keep their TOML
    type (strict: ``workers = "2"`` or ``workers = true`` is an error, not a coercion)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _check_syslog_address(text: str) -> str:
    from ..observability.syslog import parse_target

    parse_target(text)
    return text


def _check_syslog_tag(text: str) -> str:
    if not text or len(text) > 48 or not text.isascii() or not text.isprintable() or " " in text:
        raise ValueError(f"{text!r}: expected 1 to 48 printable ASCII characters without spaces")
    return text


SyslogFacility = Literal[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
]


class SyslogConfig(Strict):
    """A syslog server for the access log or the error log."""

    address: Annotated[str, AfterValidator(_check_syslog_address)] = "unix:/dev/log"  # udp:HOST:PORT | tcp:HOST:PORT | unix:/path
    facility: SyslogFacility = "local0"
    tag: Annotated[str, AfterValidator(_check_syslog_tag)] = "ferryman"
    format: Literal["rfc3164", "rfc5424"] = "rfc3164"


class ServerConfig(Strict):
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
    grace_period: Duration = 5.0
    pid_file: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    resolvers: list[SocketAddress] = []  # DNS servers for backend names; empty: the system's (getaddrinfo)
    watch: bool = False  # reload when the config file changes (as well as on SIGHUP)
    error_log: Literal["stderr", "syslog"] = "stderr"  # where the process's log records go
    error_log_syslog: SyslogConfig | None = None  # error_log = "syslog": the server (default: unix:/dev/log)


class DemoConfig(Strict):
    """A built-in demo HTTP origin, so an example config serves something real at once."""

    addr: SocketAddress


_ACME_NAME = re.compile(r"(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _check_acme_name(text: str) -> str:
    name = text.lower().rstrip(".")
    if name.startswith("*."):
        raise ValueError(f"{text!r}: a wildcard needs the dns-01 challenge; http-01 and tls-alpn-01 validate one host name")
    if not _ACME_NAME.fullmatch(name) or name.replace(".", "").isdigit():
        raise ValueError(f"{text!r}: expected a DNS name with a dot, such as www.example.com (letters, digits, '-')")
    return name


def _check_acme_directory(text: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{text!r}: an ACME directory is an https:// URL (RFC 8555 §6.1)")
    return text


def _check_email(text: str) -> str:
    local, at, domain = text.partition("@")
    if not at or not local or "." not in domain or any(c in text for c in " \t\r\n,<>"):
        raise ValueError(f"{text!r}: expected an e-mail address such as ops@example.com")
    return text


class AcmeConfig(Strict):
    """Obtain and renew this certificate from an ACME CA (RFC 8555), e.g. Let's Encrypt."""

    names: Annotated[list[Annotated[str, AfterValidator(_check_acme_name)]], Field(min_length=1, max_length=100)]
    directory: Annotated[str, AfterValidator(_check_acme_directory)] = "https://acme-v02.api.letsencrypt.org/directory"
    email: Annotated[str, AfterValidator(_check_email)] | None = None  # the account's contact
    storage: str = "/var/lib/ferryman/acme"  # account key, certificates, pending challenges (0700)
    challenge: Literal["http-01", "tls-alpn-01"] = "http-01"
    ca: str | None = None  # CA file trusted for the directory's HTTPS; default: the system's
    renew_before: PositiveDuration | None = None  # default: when a third of the lifetime remains
    check_interval: PositiveDuration = 43200.0
    retry_interval: PositiveDuration = 3600.0  # after a failed issuance

    @model_validator(mode="after")
    def _unique(self) -> "AcmeConfig":
        if len(set(self.names)) != len(self.names):
            raise ValueError("names: a name is listed twice")
        return self


class CertificateConfig(Strict):
    """A certificate a listener can serve: PEM chain (leaf first) and unencrypted PEM key,
    or ``acme``: obtained and renewed automatically."""

    cert: str | None = None
    key: str | None = None
    names: list[str] = []  # SNI names it serves ("*.example.com": one label); default: its SAN DNS names
    acme: AcmeConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "CertificateConfig":
        if self.acme is None and (self.cert is None or self.key is None):
            raise ValueError("give cert and key (PEM files), or acme to obtain the certificate automatically")
        if self.acme is not None and (self.cert is not None or self.key is not None or self.names):
            raise ValueError("with acme, leave out cert, key and names: the certificate is stored under acme.storage and serves acme.names")
        return self


class UpstreamTlsConfig(Strict):
    """TLS towards an upstream's backends (http listeners)."""

    verify: bool = True  # check the certificate chain and name
    ca: str | None = None  # CA file; default: the system's trust store
    sni: str | None = None  # name sent and verified; default: the backend's host
    cert: str | None = None  # client certificate (mTLS to the upstream)
    key: str | None = None
    alpn: list[str] = []
    min_version: Literal["1.2", "1.3"] = "1.2"


def _admin_user(entry: str) -> str:
    """An ``[admin] users`` entry, checked like the basic_auth filter's (imported late: the
    filters import this module)."""
    from ..filters.builtin.basic_auth import _check_entry

    return _check_entry(entry)


class AdminConfig(Strict):
    """The admin API (and /metrics): JSON on its own listener, localhost by default."""

    addr: SocketAddress = parse_address("127.0.0.1:9180")
    token: str | None = None  # required as "Authorization: Bearer TOKEN" when set
    users: list[Annotated[str, AfterValidator(_admin_user)]] = []  # "name:HASH": HTTP Basic too

    @model_validator(mode="after")
    def _unique_users(self) -> "AdminConfig":
        names = [entry.strip().partition(":")[0] for entry in self.users]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"admin user {name!r} is listed twice")
        return self


class TcpKeepaliveConfig(Strict):
    idle: Duration = 60.0
    interval: Duration = 10.0
    count: int = Field(default=6, ge=1, le=127)


def _check_probe_path(text: str) -> str:
    if not text.startswith("/") or any(c in text for c in " \r\n\t"):
        raise ValueError(f"{text!r}: expected an origin-form path such as /healthz (no spaces)")
    return text


class HealthCheckConfig(Strict):
    """Active checks: ``tcp`` connects; ``http`` sends a request and checks the status."""

    kind: Literal["tcp", "http"] = "tcp"
    interval: PositiveDuration = 5.0
    timeout: PositiveDuration = 2.0
    rise: int = Field(default=2, ge=1, le=100)
    fall: int = Field(default=3, ge=1, le=100)
    # http
    path: Annotated[str, AfterValidator(_check_probe_path)] = "/"
    method: Literal["GET", "HEAD"] = "GET"
    host: str | None = None  # Host header; default: the backend's address
    expect_status: list[Annotated[int, Field(ge=100, le=999)]] = []  # empty: any 2xx or 3xx
    headers: dict[str, str] = {}


class PassiveHealthConfig(Strict):
    """Eject a backend after ``max_fails`` failures within ``fail_window`` (connect errors,
    timeouts, resets, and 5xx answers when ``count_5xx``) for ``cool_down``; then one probe
    (the active check's kind) decides whether it comes back."""

    max_fails: int = Field(default=3, ge=1, le=10000)
    fail_window: PositiveDuration = 10.0
    cool_down: PositiveDuration = 10.0
    count_5xx: bool = True


def parse_member(text: str) -> tuple[str, int]:
    """``"name weight=N"`` → ``(name, N)``."""
    parts = text.split()
    if not parts:
        raise ValueError("empty member")
    weight = 1
    for option in parts[1:]:
        name, sep, value = option.partition("=")
        if name != "weight" or not sep or not value.isdigit() or not 1 <= int(value) <= 10000:
            raise ValueError(f"member option {option!r} must be weight=N with N from 1 to 10000")
        weight = int(value)
    return parts[0], weight


def _check_backend(text: str) -> str:
    parse_backend(text)
    return text


def _check_member(text: str) -> str:
    parse_member(text)
    return text


def _check_hash_key(text: str) -> str:
    kind, sep, name = text.partition(":")
    if text in ("client_ip", "uri") or (sep and kind in ("header", "cookie") and name.strip() and name == name.strip()):
        return text
    raise ValueError(f"{text!r}: expected client_ip, uri, header:NAME or cookie:NAME")


RetryCondition = Literal["error", "timeout", "http_500", "http_502", "http_503", "http_504", "http_429"]
"""``error``: connect failure, reset or close before the answer; ``timeout``: connect or read
timeout before the answer; ``http_NNN``: that status (only for requests without a body)."""

BackendSpec = Annotated[str, AfterValidator(_check_backend)]
HashKey = Annotated[str, AfterValidator(_check_hash_key)]
MemberSpec = Annotated[str, AfterValidator(_check_member)]


class UpstreamConfig(Strict):
    backends: list[BackendSpec] = []
    members: list[MemberSpec] = []  # nested upstreams: "name weight=N"
    lb: Literal["round_robin", "weighted", "least_conn", "random", "p2c", "consistent_hash"] = "round_robin"
    hash_key: HashKey = "client_ip"  # consistent_hash: client_ip | uri | header:NAME | cookie:NAME
    proxy_protocol: Literal["v1", "v2"] | None = None
    connect_timeout: Duration = 3.0
    total_connect_timeout: Duration | None = None
    max_tries: int = Field(default=3, ge=1, le=100)
    nodelay: bool = True
    tcp_keepalive: TcpKeepaliveConfig | None = None
    bind_to: SocketAddress | None = None
    # with workers: connect from a local port p with p % workers == this worker's index, so a
    # ferryman in front of these backends balancing by `port` keeps the flow on one worker index
    source_port_affinity: bool = False
    connect_proxy: SocketAddress | None = None  # reach backends through an HTTP CONNECT proxy
    health_check: HealthCheckConfig | None = None
    passive_health: PassiveHealthConfig | None = None
    tls: bool | UpstreamTlsConfig = False  # true: verify with the system CAs, SNI = the backend's host
    # backends given as DNS names: resolved at load, then every resolve_interval (0: never again)
    resolve_interval: Duration = 30.0
    ipv4_only: bool = False
    # http upstreams
    protocol: Literal["http1", "h2c", "h2"] = "http1"  # h2c: HTTP/2 cleartext; h2: HTTP/2 over TLS (ALPN h2)
    read_timeout: Duration = 60.0
    pool_size: int = Field(default=128, ge=0)
    pool_idle_timeout: Duration = 60.0
    # when a request may go to the next backend (nginx's proxy_next_upstream)
    retry_on: list[RetryCondition] = ["error", "timeout"]
    retry_non_idempotent: bool = False  # retry POST/PATCH/... after they were sent
    retry_timeout: Duration | None = None  # no new try after this long since the first

    @model_validator(mode="after")
    def _one_source(self) -> "UpstreamConfig":
        if bool(self.backends) == bool(self.members):
            raise ValueError("give either backends (addresses) or members (other upstreams), exactly one")
        if self.protocol == "h2c" and self.tls is not False:
            raise ValueError('protocol = "h2c" is HTTP/2 in cleartext: for HTTP/2 over TLS give protocol = "h2"')
        return self

    def backend_objects(self) -> list[Backend]:
        return [parse_backend(text) for text in self.backends]


def _check_host(text: str) -> str:
    from ..routing import parse_host_pattern

    parse_host_pattern(text)
    return text


def _check_path(text: str) -> str:
    from ..routing import parse_path_pattern

    parse_path_pattern(text)
    return text


def _check_value(text: str) -> str:
    from ..routing import parse_value_pattern

    parse_value_pattern(text)
    return text


def _check_rewrite(text: str) -> str:
    from ..routing import PathRewrite

    parts = text.split()
    if len(parts) != 2:
        raise ValueError('expected "PATTERN REPLACEMENT", e.g. "^/api/(.*)$ /$1"')
    PathRewrite(*parts)
    return text


HostPattern = Annotated[str, AfterValidator(_check_host)]
PathPattern = Annotated[str, AfterValidator(_check_path)]
ValuePattern = Annotated[str, AfterValidator(_check_value)]
Rewrite = Annotated[str, AfterValidator(_check_rewrite)]


class HeaderEdits(Strict):
    """Header changes: ``set`` replaces, ``add`` appends, ``remove`` drops (names any case)."""

    set: dict[str, str] = {}
    add: dict[str, str] = {}
    remove: list[str] = []


class RouteConfig(Strict):
    """One route of an http listener: match conditions, then where and how to proxy."""

    host: HostPattern | None = None  # "example.com", "*.example.com", "~regex"; none: any host
    path: PathPattern | None = None  # "/prefix", "=/exact", "~^/regex"; none: "/"
    methods: list[str] = []
    headers: dict[str, ValuePattern] = {}  # condition: header value (exact or "~regex")
    query: dict[str, ValuePattern] = {}  # condition: query parameter value
    priority: int | None = None  # higher first; overrides the host/path order
    upstream: str | None = None
    filters: list[str] = []
    rewrite: Rewrite | None = None  # "PATTERN REPLACEMENT" on the path, nginx-style ($1...)
    redirect: str | None = None  # answer with a redirect to this URL (no upstream needed)
    redirect_status: Literal[301, 302, 303, 307, 308] = 302
    request_headers: HeaderEdits | None = None
    response_headers: HeaderEdits | None = None
    read_timeout: Duration | None = None  # default: the upstream's
    max_body_size: Size | None = None  # 413 above it (default: the listener's)
    access_log: bool = True

    @model_validator(mode="after")
    def _has_target(self) -> "RouteConfig":
        if self.upstream is None and self.redirect is None and not self.filters:
            raise ValueError("a route needs an upstream, a redirect, or filters that answer")
        if self.upstream is not None and self.redirect is not None:
            raise ValueError("give either upstream or redirect, not both")
        return self


class ListenerConfig(Strict):
    addr: SocketAddress
    protocol: Literal["tcp", "udp", "http"] = "tcp"
    upstream: str | None = None  # tcp/udp, or an http listener with a single upstream
    routes: list[str] = []  # http: route names (their order breaks priority ties)
    proxy_protocol: bool = False
    proxy_protocol_trusted: list[Network] = []  # empty: any source may send a header
    proxy_protocol_timeout: Duration = 5.0
    max_connections: int | None = Field(default=None, ge=1)
    idle_timeout: Duration = 600.0
    termination_delay: Duration | None = None
    splice: Literal["auto", "always", "never"] = "auto"
    backlog: int = Field(default=2048, ge=1)
    reuse_port: bool = False
    # with several workers: which worker accepts a connection (Seastar's choices). shared: one
    # socket, any worker; kernel: one SO_REUSEPORT socket per worker, the kernel hashes;
    # port: the client port modulo workers (a reuseport BPF program); fixed: balance_worker only;
    # least_conn: a balancing process accepts and passes each connection to the least busy worker
    balance: Literal["shared", "kernel", "port", "fixed", "least_conn"] = "shared"
    balance_worker: int = Field(default=0, ge=0)
    # udp
    max_sessions: int = Field(default=10000, ge=1)
    session_timeout: Duration = 30.0
    # http
    header_timeout: Duration = 60.0
    keepalive_timeout: Duration = 75.0
    keepalive_requests: int = Field(default=1000, ge=0)
    body_timeout: Duration = 60.0
    send_timeout: Duration = 60.0
    max_body_size: Size | None = None
    forwarded_headers: bool | Literal["x-forwarded", "forwarded", "both"] = True
    forward_proxy: bool = False  # accept CONNECT host:port (to connect_ports only)
    connect_ports: list[Annotated[int, Field(ge=1, le=65535)]] = [443]
    tunnel_idle_timeout: Duration = 600.0  # WebSocket / CONNECT tunnels
    # TLS termination (http listeners): certificate names, the first the default
    tls: list[str] = []
    tls_default: str | None = None
    tls_strict_sni: bool = False  # refuse unknown or missing SNI instead of serving the default
    tls_min_version: Literal["1.2", "1.3"] = "1.2"
    tls_ciphers: str | None = None  # OpenSSL list for TLS 1.2; default: ECDHE with AEAD only
    tls_session_tickets: bool = True
    tls_alpn: list[str] = ["http/1.1"]
    # HTTP/2 from clients: h2 first in ALPN on TLS, h2c prior knowledge on plain listeners
    # (false: HTTP/1.1 only, ALPN offers no h2)
    http2: bool = True
    tls_client_ca: str | None = None  # mTLS: CA file for client certificates
    tls_client_verify: Literal["none", "optional", "required"] = "none"
    # tcp listeners: route TLS by the ClientHello's server name, without terminating it
    sni_upstreams: dict[str, str] = {}  # "a.example.com" or "*.example.com" → upstream name
    sni_timeout: Duration = 5.0
    access_log: str = "off"  # "stdout", "stderr", "syslog", a file path, or "off"
    access_log_format: str | list[str] = "combined"  # combined|common|main|json, a $template, or JSON fields
    access_log_syslog: SyslogConfig | None = None  # access_log = "syslog": the server (default: unix:/dev/log)



def _check_http_url(text: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r}: expected an http:// or https:// URL")
    return text


def _check_dsn(text: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or not parts.username or not parts.path.rstrip("/").rpartition("/")[2].isdigit():
        raise ValueError(f"{text!r}: expected a Sentry DSN such as https://KEY@sentry.example.com/PROJECT_ID")
    return text


Ratio = Annotated[float, Field(ge=0.0, le=1.0)]


def _header_value(value: str) -> str:
    """An HTTP header value: Latin-1, no CR, LF or NUL (a TOML multi-line string ends in one)."""
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a header value cannot contain CR, LF or NUL")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("a header value must be Latin-1 text") from None
    return value


class TracingConfig(Strict):
    """OpenTelemetry tracing: a span per HTTP request, exported by OTLP/HTTP in batches."""

    endpoint: Annotated[str, AfterValidator(_check_http_url)]  # e.g. http://127.0.0.1:4318/v1/traces
    service_name: str = "ferryman"
    sample_ratio: Ratio = 1.0
    parent_based: bool = True  # a client's traceparent decides sampling (its sampled flag)
    headers: dict[str, Annotated[str, AfterValidator(_header_value)]] = {}  # sent with every export (e.g. an API key)
    timeout: PositiveDuration = 10.0
    flush_interval: PositiveDuration = 5.0
    max_batch: int = Field(default=512, ge=1, le=65536)
    max_queue: int = Field(default=2048, ge=1, le=1048576)
    compression: Literal["none", "gzip"] = "none"


class SentryConfig(Strict):
    """Report unexpected errors (log records with an exception, and errors) to Sentry."""

    dsn: Annotated[str, AfterValidator(_check_dsn)]
    environment: str | None = None
    release: str | None = None
    sample_rate: Ratio = 1.0
    event_level: Literal["warning", "error", "critical"] = "error"


class Config(Strict):
    server: ServerConfig = ServerConfig()
    tracing: TracingConfig | None = None
    sentry: SentryConfig | None = None
    demo: DemoConfig | None = None
    admin: AdminConfig | None = None
    listeners: dict[str, ListenerConfig] = {}
    upstreams: dict[str, UpstreamConfig] = {}
    routes: dict[str, RouteConfig] = {}
    filters: dict[str, dict[str, Any]] = {}
    certificates: dict[str, CertificateConfig] = {}  # kind + the kind's own typed keys (checked in load)


__all__ = [
    "Address",
    "Config",
    "DemoConfig",
    "AdminConfig",
    "CertificateConfig",
    "HealthCheckConfig",
    "PassiveHealthConfig",
    "HeaderEdits",
    "ListenerConfig",
    "RouteConfig",
    "SentryConfig",
    "ServerConfig",
    "SyslogConfig",
    "TcpKeepaliveConfig",
    "TracingConfig",
    "UpstreamConfig",
    "UpstreamTlsConfig",
    "parse_member",
]

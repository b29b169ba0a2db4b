"""The validated, frozen configuration model (the public TOML contract).

Shapes follow DESIGN.md: named entities in per-category tables that refer to each other by
name. Structural checks live here (types, ranges, unknown keys); checks that need the whole
document (references, duplicate addresses) live in :mod:`ferryman.config.validate`.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ..net.addr import Address
from ..upstream.backend import Backend, parse_backend
from .types import Duration, Network, Size, SocketAddress


class Strict(BaseModel):
    """Base: unknown keys are errors, instances are immutable, and values keep their TOML
    type (strict: ``workers = "2"`` or ``workers = true`` is an error, not a coercion)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ServerConfig(Strict):
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
    grace_period: Duration = 5.0
    pid_file: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class DemoConfig(Strict):
    """A built-in demo HTTP origin, so an example config serves something real at once."""

    addr: SocketAddress


class TcpKeepaliveConfig(Strict):
    idle: Duration = 60.0
    interval: Duration = 10.0
    count: int = Field(default=6, ge=1, le=127)


class HealthCheckConfig(Strict):
    kind: Literal["tcp"] = "tcp"
    interval: Duration = 5.0
    timeout: Duration = 2.0
    rise: int = Field(default=2, ge=1, le=100)
    fall: int = Field(default=3, ge=1, le=100)


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


BackendSpec = Annotated[str, AfterValidator(_check_backend)]
MemberSpec = Annotated[str, AfterValidator(_check_member)]


class UpstreamConfig(Strict):
    backends: list[BackendSpec] = []
    members: list[MemberSpec] = []  # nested upstreams: "name weight=N"
    lb: Literal["round_robin", "weighted", "least_conn", "random", "p2c", "consistent_hash"] = "round_robin"
    hash_key: Literal["client_ip"] = "client_ip"
    proxy_protocol: Literal["v1", "v2"] | None = None
    connect_timeout: Duration = 3.0
    total_connect_timeout: Duration | None = None
    max_tries: int = Field(default=3, ge=1, le=100)
    nodelay: bool = True
    tcp_keepalive: TcpKeepaliveConfig | None = None
    bind_to: SocketAddress | None = None
    connect_proxy: SocketAddress | None = None  # reach backends through an HTTP CONNECT proxy
    health_check: HealthCheckConfig | None = None
    # http upstreams
    read_timeout: Duration = 60.0
    pool_size: int = Field(default=128, ge=0)
    pool_idle_timeout: Duration = 60.0

    @model_validator(mode="after")
    def _one_source(self) -> "UpstreamConfig":
        if bool(self.backends) == bool(self.members):
            raise ValueError("give either backends (addresses) or members (other upstreams), exactly one")
        return self

    def backend_objects(self) -> list[Backend]:
        return [parse_backend(text) for text in self.backends]


class ListenerConfig(Strict):
    addr: SocketAddress
    protocol: Literal["tcp", "udp", "http"] = "tcp"
    upstream: str
    proxy_protocol: bool = False
    proxy_protocol_trusted: list[Network] = []  # empty: any source may send a header
    proxy_protocol_timeout: Duration = 5.0
    max_connections: int | None = Field(default=None, ge=1)
    idle_timeout: Duration = 600.0
    termination_delay: Duration | None = None
    splice: Literal["auto", "always", "never"] = "auto"
    backlog: int = Field(default=2048, ge=1)
    reuse_port: bool = False
    # udp
    max_sessions: int = Field(default=10000, ge=1)
    session_timeout: Duration = 30.0
    # http
    header_timeout: Duration = 60.0
    keepalive_timeout: Duration = 75.0
    max_body_size: Size | None = None
    forwarded_headers: bool = True


class Config(Strict):
    server: ServerConfig = ServerConfig()
    demo: DemoConfig | None = None
    listeners: dict[str, ListenerConfig] = {}
    upstreams: dict[str, UpstreamConfig] = {}


__all__ = [
    "Address",
    "Config",
    "DemoConfig",
    "HealthCheckConfig",
    "ListenerConfig",
    "ServerConfig",
    "TcpKeepaliveConfig",
    "UpstreamConfig",
    "parse_member",
]

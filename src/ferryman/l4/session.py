"""Per-connection state handed to every ``ProxyL4`` hook."""

from __future__ import annotations

import time
from typing import Any

from ..errors import ProxyError
from ..protocol.proxy_protocol import ProxyHeader


class L4Session:
    """One downstream TCP connection or UDP session.

    ``client_addr`` is the real client: the PROXY header's source when one was accepted,
    else the socket peer. ``ctx`` is the app's own per-session state from ``new_ctx()``.
    """

    __slots__ = (
        "listener",
        "protocol",
        "client_addr",
        "socket_peer",
        "local_addr",
        "proxy_header",
        "ctx",
        "peer",
        "tries",
        "last_error",
        "start",
        "connected_at",
        "bytes_up",
        "bytes_down",
        "reset_by",
        "timed_out",
        "candidates",
        "sni",
        "alpn",
    )

    def __init__(self, listener: str, protocol: str, socket_peer: Any, local_addr: Any, ctx: Any = None) -> None:
        self.listener = listener
        self.protocol = protocol  # "tcp" | "udp"
        self.socket_peer = socket_peer
        self.client_addr = socket_peer
        self.local_addr = local_addr
        self.proxy_header: ProxyHeader | None = None
        self.ctx = ctx
        self.peer: Any = None  # the Peer finally connected to
        self.tries = 0
        self.last_error: ProxyError | None = None
        self.start = time.monotonic()
        self.connected_at: float | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.reset_by: str | None = None
        self.timed_out = False
        self.candidates: Any = None  # balancer iterator kept across failover tries
        self.sni: str | None = None  # the TLS ClientHello's server name (listeners that peek at it)
        self.alpn: tuple[str, ...] = ()  # the protocols the ClientHello offers

    @property
    def client_ip(self) -> str:
        addr = self.client_addr
        return addr[0] if isinstance(addr, tuple) else ""

    @property
    def duration(self) -> float:
        return time.monotonic() - self.start

    def __repr__(self) -> str:
        return f"L4Session({self.listener} {self.protocol} client={self.client_addr})"

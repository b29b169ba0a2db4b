"""Socket address strings: ``host:port``, ``[v6]:port`` and ``unix:/path``.

Parsed once at config load; the data path only sees :class:`Address` objects.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed endpoint. ``path`` is set for Unix-domain sockets, else host/port."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    @property
    def family(self) -> int:
        if self.path:
            return socket.AF_UNIX
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def sockaddr(self) -> str | tuple[str, int]:
        return self.path if self.path else (self.host, self.port)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_address(text: str, *, default_host: str = "") -> Address:
    """Parse an address string; raise ValueError with a readable message."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError("unix socket address needs a path, as unix:/run/app.sock")
        return Address(path=path)
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"{text!r} is not [ipv6]:port")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} has no port; expected host:port")
        if ":" in host:
            raise ValueError(f"IPv6 address {text!r} must be bracketed, as [::1]:8080")
        host = host or default_host
        if not host:
            raise ValueError(f"{text!r} has no host")
    if not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return Address(host=host, port=port)

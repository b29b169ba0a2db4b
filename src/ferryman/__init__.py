"""ferryman: a programmable, high-performance network proxy and load balancer.

Framework API: subclass :class:`ProxyHttp` (or :class:`ProxyL4`), implement
``upstream_peer``, serve it with a :class:`Server` and an :class:`HttpProxyService`
(:class:`TcpProxyService` / :class:`UdpProxyService`). Route filters: :class:`Filter`.
"""

__version__ = "0.1.0"

from .errors import ErrorKind, ErrorSource, ProxyError
from .filters.base import Filter
from .http.hooks import ProxyHttp
from .http.service import HttpProxyService
from .http.session import Session
from .l4.hooks import ProxyL4
from .l4.session import L4Session
from .l4.tcp import TcpProxyService
from .l4.udp import UdpProxyService
from .net.addr import Address, parse_address
from .net.connect import Connector, HttpConnectProxy, Peer, TcpKeepalive
from .net.listener import bind_socket
from .server import Server

__all__ = [
    "Address",
    "Connector",
    "ErrorKind",
    "ErrorSource",
    "Filter",
    "HttpConnectProxy",
    "HttpProxyService",
    "L4Session",
    "Peer",
    "ProxyError",
    "ProxyHttp",
    "ProxyL4",
    "Server",
    "Session",
    "TcpKeepalive",
    "TcpProxyService",
    "UdpProxyService",
    "bind_socket",
    "compiled_core",
    "parse_address",
]


def compiled_core() -> bool:
    """Whether the per-request HTTP/1.1 modules run compiled (setup.py, ``FERRYMAN_COMPILE=1``)."""
    from .http import exchange

    return not exchange.__file__.endswith(".py")

"""Upstream connections: dial a TCP or Unix peer with timeouts, socket options, a source
address and an optional HTTP CONNECT tunnel.

This runs once per upstream connection, not per read, so it may use ``asyncio.timeout``.
The result is a connected, non-blocking plain socket: the caller wraps it in a transport
(``loop.create_connection(sock=...)``) or splices its fd. Every failure is a
:class:`~ferryman.errors.ProxyError` raised ``from`` the underlying exception.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httptools

from ferryman.errors import ErrorKind, ErrorSource, ProxyError
from ferryman.net.addr import Address
from ferryman.net.reactor import reactor_for
from ferryman.net.source_port import connect_with_port_affinity

if TYPE_CHECKING:
    from ferryman.net.tls import TlsOptions

__all__ = [
    "MAX_CONNECT_HEAD",
    "Connector",
    "HttpConnectProxy",
    "Peer",
    "TcpKeepalive",
    "tune_socket",
]

MAX_CONNECT_HEAD = 16 * 1024
"""Largest CONNECT response head accepted from a proxy, in bytes."""

# Linux value; older Python builds do not export the constant.
IP_BIND_ADDRESS_NO_PORT: int = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

# Linux upper bounds for the keepalive options (larger values fail with EINVAL).
_KEEPALIVE_LIMITS = (("TCP_KEEPIDLE", 32767), ("TCP_KEEPINTVL", 32767), ("TCP_KEEPCNT", 127))
_INET = (socket.AF_INET, socket.AF_INET6)


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    """TCP keepalive: first probe after ``idle`` seconds of silence, then one every
    ``interval`` seconds; the connection dies after ``count`` unanswered probes."""

    idle: float
    interval: float
    count: int


@dataclass(frozen=True, slots=True)
class HttpConnectProxy:
    """Reach the peer through an HTTP proxy: dial ``address``, then ``CONNECT host:port``.

    ``headers`` are sent with the CONNECT request (e.g. ``Proxy-Authorization``).
    """

    address: Address
    host: str
    port: int
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __post_init__(self) -> None:
        if not self.host or any(c in self.host for c in "\r\n\0 /"):
            raise ValueError(f"CONNECT host {self.host!r} is not a valid host")
        if not 0 < self.port <= 65535:
            raise ValueError(f"CONNECT port {self.port} is out of range")
        for name, value in self.headers:
            if not name or any(c in name for c in b"\r\n\0: \t") or any(c in value for c in b"\r\n\0"):
                raise ValueError(f"CONNECT header {name!r}: {value!r} is not a valid header")

    @property
    def authority(self) -> str:
        """``host:port`` as sent in the request line (IPv6 bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def request(self) -> bytes:
        """The CONNECT request head."""
        authority = self.authority.encode("ascii")
        lines = [b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n"]
        lines.extend(name + b": " + value + b"\r\n" for name, value in self.headers)
        lines.append(b"\r\n")
        return b"".join(lines)


PROTOCOLS = ("http1", "h2c", "h2")  # Peer.protocol


@dataclass(frozen=True, slots=True)
class Peer:
    """Where and how to connect upstream.

    ``connect_timeout`` bounds one connect attempt (name resolution included);
    ``total_connect_timeout`` bounds the whole connect, CONNECT tunnel handshake included
    (without it the handshake is not time-bounded). ``bind_to`` is the source address;
    port 0 lets the kernel pick the port at connect time (IP_BIND_ADDRESS_NO_PORT). With
    ``proxy`` set, the socket goes to ``proxy.address`` and ``address`` only names the peer.
    ``name`` (default ``str(address)``) names the peer in errors. ``proxy_protocol`` (1 or
    2) makes the proxy send a PROXY header first on the new connection.
    """

    address: Address
    connect_timeout: float | None = None
    total_connect_timeout: float | None = None
    tcp_keepalive: TcpKeepalive | None = None
    nodelay: bool = True
    bind_to: Address | None = None
    proxy: HttpConnectProxy | None = None
    name: str = field(default="")
    proxy_protocol: int | None = None
    pool_size: int | None = None  # HTTP: idle connections kept for this peer (None: the service's default)
    pool_idle_timeout: float | None = None  # HTTP: how long one may stay idle (None: the service's default)
    port_affinity: tuple[int, int] | None = None  # (worker, workers): a source port p with p % workers == worker
    tls: TlsOptions | None = None  # HTTP: speak TLS to the peer (verification, SNI, ALPN, client cert)
    # HTTP: the upstream's HTTP version: "http1", "h2c" (HTTP/2 cleartext, prior knowledge) or
    # "h2" (HTTP/2 over TLS, ALPN h2; ``tls`` or default TlsOptions). h2/h2c connections are
    # pooled apart and carry many requests at once
    protocol: str = "http1"

    pool_key: str = field(default="", compare=False, repr=False)  # derived: see __post_init__

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", str(self.address))
        # what an HTTP upstream connection to this peer is pooled under: a str, whose hash is
        # cached (a tuple holding the Address dataclass was hashed in Python twice a request)
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"Peer protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}")
        object.__setattr__(self, "pool_key", f"{self.address}|{self.proxy}|{self.proxy_protocol}|{self.tls!r}|{self.protocol}")


def tune_socket(
    sock: socket.socket, *, nodelay: bool = True, keepalive: TcpKeepalive | None = None
) -> None:
    """Apply TCP_NODELAY and keepalive options; Unix-domain sockets are left alone.

    Keepalive times are whole seconds, at least 1 (and at most the Linux limits).
    """
    if sock.family not in _INET:
        return
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    values = (keepalive.idle, keepalive.interval, keepalive.count)
    for (opt_name, limit), value in zip(_KEEPALIVE_LIMITS, values):
        opt = getattr(socket, opt_name, None)
        if opt is not None:
            sock.setsockopt(socket.IPPROTO_TCP, opt, min(limit, max(1, round(value))))


class Connector:
    """Dials upstream peers. Stateless: one instance can serve every service."""

    __slots__ = ()

    async def connect(self, peer: Peer) -> socket.socket:
        """Return a connected non-blocking socket to ``peer``, or raise ProxyError."""
        proxy = peer.proxy
        if proxy is None and peer.total_connect_timeout is None:
            return await _dial(peer.address, peer, peer.name)  # the common case: no extra timer
        label = peer.name if proxy is None else f"proxy {proxy.address} for {peer.name}"
        try:
            async with asyncio.timeout(peer.total_connect_timeout):
                sock = await _dial(proxy.address if proxy else peer.address, peer, label)
                if proxy is not None:
                    try:
                        await _tunnel(sock, proxy)
                    except BaseException:
                        sock.close()
                        raise
                return sock
        except TimeoutError as exc:
            raise ProxyError(
                ErrorKind.CONNECT_TIMEOUT,
                ErrorSource.UPSTREAM,
                retry=True,
                context=f"connecting to {label} took longer than {peer.total_connect_timeout}s",
            ) from exc


async def _dial(target: Address, peer: Peer, label: str) -> socket.socket:
    """Resolve, open, tune, bind and connect one socket within ``connect_timeout``."""
    loop = asyncio.get_running_loop()
    timeout = peer.connect_timeout
    deadline = None if timeout is None else loop.time() + timeout
    try:
        if target.is_unix:
            family, sockaddr = socket.AF_UNIX, target.path
        elif _is_ip(target.host):
            family, sockaddr = target.family, target.sockaddr
        else:
            async with asyncio.timeout(timeout):
                family, sockaddr = await _resolve(loop, target, peer.bind_to)
        if peer.port_affinity is not None and family != socket.AF_UNIX and peer.bind_to is None:
            worker, workers = peer.port_affinity
            return await connect_with_port_affinity(
                loop, sockaddr, worker, workers, timeout=timeout,  # type: ignore[arg-type]
                prepare=lambda s: tune_socket(s, nodelay=peer.nodelay, keepalive=peer.tcp_keepalive),
            )
        sock = _open_socket(family, peer, label)
        try:
            await _sock_connect(loop, sock, sockaddr, deadline)
        except BaseException:
            sock.close()
            raise
    except TimeoutError as exc:
        if exc.errno is not None:  # the kernel gave up (ETIMEDOUT)
            raise _connect_error(exc, target, label) from exc
        raise ProxyError(
            ErrorKind.CONNECT_TIMEOUT,
            ErrorSource.UPSTREAM,
            retry=True,
            context=f"connecting to {label} took longer than {peer.connect_timeout}s",
        ) from exc
    except OSError as exc:
        raise _connect_error(exc, target, label) from exc
    return sock


_IP_CACHE: dict[str, bool] = {}


def _is_ip(host: str) -> bool:
    """Whether ``host`` is an IP literal (cached: it is asked once per connection)."""
    known = _IP_CACHE.get(host)
    if known is None:
        try:
            ipaddress.ip_address(host)
            known = True
        except ValueError:
            known = False
        if len(_IP_CACHE) < 4096:
            _IP_CACHE[host] = known
    return known


async def _sock_connect(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, sockaddr: str | tuple, deadline: float | None
) -> None:
    """Non-blocking connect to an already-resolved address, bounded by ``deadline``.

    ``loop.sock_connect`` on uvloop resolves even numeric addresses through the libuv
    thread pool, and ``add_writer`` creates and destroys a poll handle per connection
    (both measured as a large share of the cost of a new connection); this waits in the
    loop's :class:`~ferryman.net.reactor.Reactor` instead, with one one-shot registration
    that the pump later re-arms.
    """
    err = sock.connect_ex(sockaddr)
    if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EINTR):
        await reactor_for(loop).wait_writable_once(sock.fileno(), deadline)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        reactor_for(loop).forget(sock.fileno())
        raise OSError(err, os.strerror(err))


async def _resolve(
    loop: asyncio.AbstractEventLoop, addr: Address, bind_to: Address | None
) -> tuple[int, str | tuple]:
    """The socket family and address to connect to; host names are resolved here."""
    # A name: take the first answer, in the source address's family when one is set.
    family = bind_to.family if bind_to is not None else socket.AF_UNSPEC
    infos = await loop.getaddrinfo(addr.host, addr.port, family=family, type=socket.SOCK_STREAM)
    if not infos:
        raise socket.gaierror(f"{addr.host} has no address")
    info = infos[0]
    return info[0], info[4]


def _open_socket(family: int, peer: Peer, label: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        tune_socket(sock, nodelay=peer.nodelay, keepalive=peer.tcp_keepalive)
        if peer.bind_to is not None:
            _bind(sock, peer.bind_to, label)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind(sock: socket.socket, source: Address, label: str) -> None:
    if source.family != sock.family:
        raise ProxyError(
            ErrorKind.BIND_ERROR,
            ErrorSource.UPSTREAM,
            retry=False,
            context=f"source address {source} is not in the address family of {label}",
        )
    try:
        if sock.family in _INET and source.port == 0:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind(source.sockaddr)
    except OSError as exc:
        raise ProxyError(
            ErrorKind.BIND_ERROR,
            ErrorSource.UPSTREAM,
            retry=False,
            context=f"cannot bind source address {source} to connect to {label}",
        ) from exc


def _connect_error(exc: OSError, target: Address, label: str) -> ProxyError:
    """Map a connect OSError to a ProxyError (the caller chains ``from exc``)."""
    kind, context = ErrorKind.CONNECT_ERROR, f"cannot connect to {label}"
    if isinstance(exc, ConnectionRefusedError):
        kind, context = ErrorKind.CONNECT_REFUSED, f"{label} refused the connection"
    elif isinstance(exc, TimeoutError):
        kind, context = ErrorKind.CONNECT_TIMEOUT, f"connecting to {label} timed out"
    elif isinstance(exc, socket.gaierror):
        context = f"cannot resolve {target.host} to connect to {label}"
    elif target.is_unix and isinstance(exc, FileNotFoundError):
        context = f"unix socket path {target.path} does not exist (connecting to {label})"
    return ProxyError(kind, ErrorSource.UPSTREAM, retry=True, context=context)


def _proxy_failure(context: str) -> ProxyError:
    return ProxyError(ErrorKind.PROXY_FAILURE, ErrorSource.UPSTREAM, retry=True, context=context)


async def _tunnel(sock: socket.socket, proxy: HttpConnectProxy) -> None:
    """Send CONNECT and accept only a bodiless 2xx; leave the tunnel's bytes unread."""
    where = f"CONNECT to {proxy.authority} via {proxy.address}"
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, proxy.request())
        head = await _read_head(loop, sock, where)
    except OSError as exc:
        raise _proxy_failure(f"{where} failed") from exc
    _check_head(head, where)


async def _read_head(loop: asyncio.AbstractEventLoop, sock: socket.socket, where: str) -> bytes:
    """Read exactly the response head: peek, then consume only up to the blank line."""
    head = bytearray()
    while True:
        try:
            data = sock.recv(MAX_CONNECT_HEAD - len(head), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            await _readable(loop, sock)
            continue
        if not data:
            raise _proxy_failure(f"{where}: the proxy closed the connection mid response head")
        carry = min(3, len(head))  # the blank line may straddle two reads
        end = (bytes(head[len(head) - carry :]) + data).find(b"\r\n\r\n")
        take = len(data) if end < 0 else end + 4 - carry
        head += _recv_exactly(sock, take)
        if end >= 0:
            return bytes(head)
        if len(head) >= MAX_CONNECT_HEAD:
            raise _proxy_failure(f"{where}: response head exceeds {MAX_CONNECT_HEAD} bytes")


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Consume ``size`` bytes already seen with MSG_PEEK (they are queued)."""
    out = bytearray()
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        if not chunk:
            raise ConnectionResetError("peeked bytes vanished")
        out += chunk
    return bytes(out)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fd = sock.fileno()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class _Head:
    """httptools callbacks collecting a response head."""

    __slots__ = ("reason", "headers", "complete")

    def __init__(self) -> None:
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_status(self, data: bytes) -> None:
        self.reason += data

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.complete = True


def _check_head(head: bytes, where: str) -> None:
    result = _Head()
    parser = httptools.HttpResponseParser(result)
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
        raise _proxy_failure(f"{where}: malformed response head") from exc
    if not result.complete:
        raise _proxy_failure(f"{where}: incomplete response head")
    status = parser.get_status_code()
    reason = result.reason.decode("latin-1").strip()[:128]
    if not 200 <= status < 300:
        raise _proxy_failure(f"{where} refused: {status} {reason}".rstrip())
    for name, value in result.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            raise _proxy_failure(
                f"{where}: {status} {reason} carries {name.decode('latin-1')}: "
                f"{value.decode('latin-1')[:64]}, but a CONNECT tunnel has no body"
            )

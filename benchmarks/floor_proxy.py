#!/usr/bin/env python3
"""The floor of a Python HTTP/1.1 reverse proxy on this interpreter: a benchmark tool, not a
product.

It exists so the benchmark tables show how far ferryman's features cost above what any
Python proxy built on the same parts must spend: uvloop, asyncio Protocols, httptools
(llhttp) request and response parsers and one keep-alive upstream pool (a LIFO list of idle
upstream connections). No hooks, no routing, no filters, no timeouts, no logging, no
validation beyond llhttp's; nothing is printed per request.

What it does, and no more than the benchmark needs:

- request heads are rebuilt from the parsed method, URL and header lines (copied as received,
  except ``Connection``/``Keep-Alive``: the upstream connection is always kept alive);
  request bodies are streamed (chunked ones re-chunked, trailers dropped);
- response bytes are passed through as received (content-length, chunked, read-until-close);
  the parser only finds where a response ends;
- a client that asked for ``Connection: close`` (or spoke HTTP/1.0 without keep-alive) gets
  ``Connection: close`` in the response head and is closed after it; a response that says
  ``close`` closes the client too and its upstream connection is not pooled;
- pipelined requests wait (client reading paused) until the response before them is done;
- HEAD, CONNECT and upgrades are answered 501: a pass-through parser cannot frame them.

With ``--cert`` and ``--key`` it terminates TLS (Python's ``ssl`` module through uvloop's
``create_server(ssl=...)``: TLS 1.2 and 1.3, the ``ssl`` module's default ciphers, ALPN
offering ``h2`` and ``http/1.1``, as ferryman does) and proxies in plain HTTP/1.1 as above. A
client that chose ``h2`` is served by ``floor_h2.py`` (the ``h2`` library, each stream
forwarded as HTTP/1.1 over a pool of its own). That mode exists so the TLS tables show the
least a Python proxy spends per TLS handshake, per TLS request and per HTTP/2 request here.

With ``--workers N`` (N > 1) it forks N worker processes, each with its own SO_REUSEPORT
listening socket on the same address (bound by the parent before forking: the kernel spreads
new connections over them, as nginx's and ferryman's ``balance = "kernel"`` workers do), its
own event loop and its own upstream pool. The parent only waits: on SIGTERM/SIGINT, or when a
worker exits, it stops the workers by PID (SIGTERM) and waits for them; a worker gets SIGTERM
from the kernel if the parent dies (``PR_SET_PDEATHSIG``). That mode exists so the two-worker
tables show how close any two-process Python proxy comes to nginx with two workers here.

Usage::

    python benchmarks/floor_proxy.py --listen 127.0.0.1:8080 --origin 127.0.0.1:8000
    python benchmarks/floor_proxy.py --listen 127.0.0.1:8080 --origin 127.0.0.1:8000 \
        --workers 2
    python benchmarks/floor_proxy.py --listen 127.0.0.1:8443 --origin 127.0.0.1:8000 \
        --cert cert.pem --key key.pem
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import re
import signal
import socket
import ssl
import sys
import traceback

import httptools
import uvloop

HOP = frozenset((b"connection", b"keep-alive"))
CONN_LINES = re.compile(rb"\r\n(?:connection|keep-alive):[^\r\n]*", re.IGNORECASE)
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
NOT_IMPLEMENTED = (
    b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)
MAX_IDLE = 1024  # idle upstream connections kept


class Refused(Exception):
    """Raised from a parser callback to stop parsing a request that was answered 501."""


class Pool:
    """Idle upstream connections to one origin, most recently used first out."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop, self.host, self.port = loop, host, port
        self.idle: list[Upstream] = []

    def take(self) -> Upstream | None:
        while self.idle:
            up = self.idle.pop()
            if not up.closed:
                return up
        return None

    def put(self, up: Upstream) -> None:
        if up.closed or len(self.idle) >= MAX_IDLE:
            up.transport.close()
        else:
            self.idle.append(up)


class Upstream(asyncio.Protocol):
    """One connection to the origin; serves one client request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: Client | None = None
        self.closed = False
        self.done = False  # the current response is complete
        self.keep_alive = True
        self.sent = False  # bytes of the current response went to the client
        self.rewrite: bytes | None = None  # head being buffered to add `Connection: close`

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def attach(self, client: Client) -> None:
        self.client, self.done, self.sent = client, False, False
        self.rewrite = b"" if client.close_after else None
        if client.write_paused:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:  # nothing asked: the origin is out of step
            self.transport.close()
            return
        out = data if self.rewrite is None else self.rewrite_head(data)
        if out:
            client.transport.write(out)
            self.sent = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.client = None
            self.transport.close()
            client.lost_upstream(self.sent)
            return
        if self.done:
            self.client = None
            client.response_done(self, self.keep_alive)

    def rewrite_head(self, data: bytes) -> bytes:
        """Buffer the response head until complete; then its ``Connection`` lines replaced."""
        head = self.rewrite + data  # type: ignore[operator]
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self.rewrite = head
            return b""
        self.rewrite = None
        return CONN_LINES.sub(b"", head[:end]) + b"\r\nConnection: close\r\n\r\n" + head[end + 4 :]

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() >= 200:  # a 1xx is followed by the final response
            self.done = True
            self.keep_alive = self.parser.should_keep_alive()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        client, self.client = self.client, None
        if client is not None:  # mid-response: its end (read-until-close) or a failure
            client.lost_upstream(self.sent)


class Client(asyncio.Protocol):
    """One client connection: parses its requests and hands each to an upstream connection
    (or, when ALPN chose ``h2``, hands the connection to ``floor_h2.H2Client``)."""

    def __init__(self, pool: Pool, h2_pool: Pool | None = None) -> None:
        self.pool = pool
        self.h2_pool = h2_pool  # TLS: the upstream pool of HTTP/2 clients
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.up: Upstream | None = None  # serving the request in flight
        self.busy = False  # a request is in flight (its response not complete)
        self.pending: list[bytes] = []  # request bytes waiting for a new upstream connection
        self.waiting: list[tuple[bool, list[bytes]]] = []  # pipelined: (close_after, bytes)
        self.url = b""
        self.headers: list[bytes] = []
        self.chunked = False
        self.close_after = False  # close after the response in flight
        self.write_paused = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.h2_pool is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                from floor_h2 import H2Client

                H2Client(self.h2_pool).start(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:  # also what on_headers_complete raises to refuse
            self.fail(BAD_REQUEST)

    # ------------------------------------------------------------------ request parsing

    def on_message_begin(self) -> None:
        self.url, self.headers, self.chunked = b"", [], False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname in HOP:
            return
        if lname == b"transfer-encoding" and b"chunked" in value.lower():
            self.chunked = True
        self.headers.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        method = self.parser.get_method()
        if method == b"HEAD" or self.parser.should_upgrade():  # CONNECT or Upgrade
            self.fail(NOT_IMPLEMENTED)
            raise Refused(method.decode("latin-1"))
        head = b"%s %s HTTP/1.1\r\n%s\r\n" % (method, self.url, b"".join(self.headers))
        close_after = not self.parser.should_keep_alive()
        if self.busy or self.waiting:  # pipelined behind the request in flight
            self.waiting.append((close_after, [head]))
            self.transport.pause_reading()
        else:
            self.dispatch(close_after, [head])

    def on_body(self, body: bytes) -> None:
        if self.chunked:
            body = b"%x\r\n%s\r\n" % (len(body), body)
        self.send(body)

    def on_message_complete(self) -> None:
        if self.chunked:
            self.send(b"0\r\n\r\n")

    def send(self, data: bytes) -> None:
        """Request bytes of the message being parsed: to its upstream, or queued."""
        if self.waiting:
            self.waiting[-1][1].append(data)
        elif self.up is not None:
            self.up.transport.write(data)
        else:
            self.pending.append(data)

    # ------------------------------------------------------------------ upstream side

    def dispatch(self, close_after: bool, data: list[bytes]) -> None:
        self.busy, self.close_after = True, close_after
        up = self.pool.take()
        if up is None:
            self.pending = data
            self.pool.loop.create_task(self.connect())
        else:
            self.up = up
            up.attach(self)
            up.transport.writelines(data)

    async def connect(self) -> None:
        try:
            _, up = await self.pool.loop.create_connection(
                lambda: Upstream(self.pool), self.pool.host, self.pool.port
            )
        except OSError:
            self.fail(BAD_GATEWAY)
            return
        if self.closed:  # the client left meanwhile: the fresh connection is still clean
            self.pool.put(up)
            return
        self.up = up
        up.attach(self)
        up.transport.writelines(self.pending)
        self.pending = []

    def response_done(self, up: Upstream, reusable: bool) -> None:
        """``up`` delivered the whole response: pool it, then close or go on."""
        self.up, self.busy = None, False
        if self.write_paused:
            up.transport.resume_reading()
        if reusable:
            self.pool.put(up)
        else:
            up.transport.close()
        if self.close_after or not reusable:
            self.transport.close()
        elif self.waiting:
            close_after, data = self.waiting.pop(0)
            if not self.waiting:
                self.transport.resume_reading()
            self.dispatch(close_after, data)

    def lost_upstream(self, sent: bool) -> None:
        """The upstream connection ended or broke mid-response."""
        self.up = None
        if sent:  # the client has part of it: closing is the only signal left
            self.closed = True
            self.transport.close()
        else:
            self.fail(BAD_GATEWAY)

    def fail(self, response: bytes) -> None:
        """Answer ``response`` and close (done with this client from now on)."""
        if self.closed:
            return
        self.closed = True
        up, self.up = self.up, None
        if up is not None:
            up.client = None
            up.transport.close()
        self.transport.write(response)
        self.transport.close()

    # ------------------------------------------------------------------ flow control

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.up is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.up is not None:
            self.up.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        up, self.up = self.up, None
        if up is not None:  # mid-response: the connection cannot be reused
            up.client = None
            up.transport.close()


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def tls_context(cert: str, key: str, h2: bool = False) -> ssl.SSLContext:
    """The server context of ``--cert``/``--key``: TLS 1.2+, ALPN ``http/1.1`` (and ``h2``
    first, for the proxy: ``tls_bare.py`` speaks HTTP/1.1 only)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2", "http/1.1"] if h2 else ["http/1.1"])
    return ctx


async def serve(
    listen: tuple[str, int], origin: tuple[str, int], tls: ssl.SSLContext | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Proxy until SIGTERM/SIGINT: on ``listen``, or on the bound ``sock`` (a worker's)."""
    loop = asyncio.get_running_loop()
    pool = Pool(loop, *origin)
    h2_pool = Pool(loop, *origin) if tls is not None else None  # holds floor_h2's upstreams
    where = {"sock": sock} if sock is not None else {"host": listen[0], "port": listen[1]}
    server = await loop.create_server(lambda: Client(pool, h2_pool), backlog=4096, ssl=tls, **where)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    if sock is None:
        scheme = "https" if tls else "http"
        print(f"floor proxy on {scheme}://{listen[0]}:{listen[1]} -> {origin[0]}:{origin[1]}",
              flush=True)
    async with server:
        await stop


def run(listen: tuple[str, int], origin: tuple[str, int], tls: ssl.SSLContext | None,
        sock: socket.socket | None = None) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(listen, origin, tls, sock))


# --------------------------------------------------------------------------- --workers


class Stop(Exception):
    """Raised by the parent's SIGTERM/SIGINT handler: stop the workers."""


def reuseport_sockets(listen: tuple[str, int], n: int) -> list[socket.socket]:
    """``n`` listening SO_REUSEPORT sockets on ``listen`` (port 0: the first one's port)."""
    host, port = listen
    family, _, _, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    socks: list[socket.socket] = []
    for _ in range(n):
        sock = socket.socket(family, socket.SOCK_STREAM)
        socks.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(4096)
        sock.setblocking(False)
        addr = sock.getsockname()  # port 0: the others join the first one's port
    return socks


def die_with_parent(parent: int) -> None:
    """In a worker: SIGTERM from the kernel when the parent dies (``PR_SET_PDEATHSIG``)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def run_workers(listen: tuple[str, int], origin: tuple[str, int],
                tls: ssl.SSLContext | None, n: int) -> int:
    """Fork ``n`` workers, one socket each; wait; stop them all. 0 if stopped by a signal,
    1 if a worker exited by itself."""
    socks = reuseport_sockets(listen, n)
    host, port = socks[0].getsockname()[:2]
    parent, pids = os.getpid(), []
    for sock in socks:
        pid = os.fork()
        if pid == 0:  # worker: default signal dispositions until its loop takes them
            code = 1
            try:
                die_with_parent(parent)
                for other in socks:
                    if other is not sock:
                        other.close()
                run(listen, origin, tls, sock)
                code = 0
            except BaseException:  # noqa: BLE001 - a worker's end: reported, then _exit
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    for sock in socks:  # the workers hold them
        sock.close()

    def stop(signum: int, frame: object) -> None:
        raise Stop(signum)

    code = 0
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
        scheme = "https" if tls else "http"
        print(f"floor proxy on {scheme}://{host}:{port} -> {origin[0]}:{origin[1]}, "
              f"{n} workers (pids {', '.join(map(str, pids))})", flush=True)
        pid, _ = os.wait()  # a worker exited by itself: stop the others too
        pids.remove(pid)
        print(f"worker {pid} exited; stopping the others", file=sys.stderr, flush=True)
        code = 1
    except Stop:
        pass
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in pids:
            os.waitpid(pid, 0)
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=host_port, required=True, help="HOST:PORT to accept on")
    p.add_argument("--origin", type=host_port, required=True, help="HOST:PORT to proxy to")
    p.add_argument("--cert", metavar="FILE", help="PEM certificate chain: terminate TLS")
    p.add_argument("--key", metavar="FILE", help="PEM private key of --cert")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes, each with its own SO_REUSEPORT socket (default 1)")
    args = p.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        p.error("--cert and --key go together")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    try:
        tls = tls_context(args.cert, args.key, h2=True) if args.cert else None
    except (OSError, ssl.SSLError) as exc:
        p.error(f"--cert {args.cert} / --key {args.key}: {exc}")
    if args.workers > 1:
        return run_workers(args.listen, args.origin, tls, args.workers)
    run(args.listen, args.origin, tls)
    return 0


if __name__ == "__main__":
    sys.exit(main())

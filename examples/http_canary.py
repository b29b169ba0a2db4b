"""ferryman as a library: a canary router, sending some clients to a second origin.

``CanaryRouter`` is a :class:`ferryman.http.hooks.ProxyHttp` with two hooks:

- ``upstream_peer`` picks the origin once per request. A request carrying ``x-canary: 1``
  (or the cookie ``canary=1``) goes to ``--canary``, one with ``x-canary: 0`` (or
  ``canary=0``) to ``--origin``; any other goes to the canary when its client IP falls in
  the ``--canary-percent`` share: ``crc32(ip) % 100 < percent``. The hash is stable, so a
  client keeps its origin across requests, connections and restarts (sticky);
- ``logging`` writes one line per request: client, request, the choice and why, status.

Run it from the repository root (or ``pip install .`` and drop ``PYTHONPATH``)::

    PYTHONPATH=src python examples/http_canary.py --listen 127.0.0.1:6190 \\
        --origin 127.0.0.1:8081 --canary 127.0.0.1:8082 --canary-percent 10

``--listen 127.0.0.1:0`` picks a free port; the address actually bound is logged as
``listening on HOST:PORT``. SIGTERM or Ctrl-C drains in-flight requests and exits.
"""

from __future__ import annotations

import argparse
import logging
import sys
import zlib
from dataclasses import dataclass

from ferryman import HttpProxyService, Peer, ProxyError, ProxyHttp, Server, Session, bind_socket, parse_address
from ferryman.net.listener import BindError

log = logging.getLogger("canary")


@dataclass(frozen=True, slots=True)
class Choice:
    """Where one request goes, and why (kept in ``session.ctx`` for the log line)."""

    name: str  # "canary" | "stable"
    peer: Peer
    reason: str  # "header" | "cookie" | "client-hash"


def ip_bucket(ip: str) -> int:
    """The client's sticky bucket, 0..99: the same for one IP in every process, every run."""
    return zlib.crc32(ip.encode()) % 100


def cookie_value(cookie: bytes | None, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in a ``Cookie`` header, or None."""
    for part in (cookie or b"").split(b";"):
        key, sep, value = part.strip().partition(b"=")
        if sep and key == name:
            return value
    return None


class CanaryRouter(ProxyHttp):
    """Route a share of clients (or the ones who ask) to the canary origin."""

    def __init__(self, stable: Peer, canary: Peer, percent: int) -> None:
        self.stable = stable
        self.canary = canary
        self.percent = percent

    def choose(self, session: Session) -> Choice:
        for reason, flag in (("header", session.header(b"x-canary")),
                             ("cookie", cookie_value(session.header(b"cookie"), b"canary"))):
            if flag in (b"0", b"1"):
                return self._choice(flag == b"1", reason)
        return self._choice(ip_bucket(session.client_ip) < self.percent, "client-hash")

    def _choice(self, canary: bool, reason: str) -> Choice:
        return Choice("canary", self.canary, reason) if canary else Choice("stable", self.stable, reason)

    async def upstream_peer(self, session: Session) -> Peer:
        if session.ctx is None:  # decided once: a retry goes to the same origin
            session.ctx = self.choose(session)
        return session.ctx.peer

    async def logging(self, session: Session, error: ProxyError | None) -> None:
        choice: Choice | None = session.ctx
        route = f"{choice.name} ({choice.reason})" if choice is not None else "-"
        if error is not None:
            log.warning("%s %s %s -> %s failed: %s", session.client_ip, session.method_str, session.target_str, route, error)
        else:
            log.info("%s %s %s -> %s %d", session.client_ip, session.method_str, session.target_str, route, session.response_status)


def percent(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{value} is not a percentage (0..100)")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:6190", help="address to listen on (host:port, [v6]:port, unix:/path)")
    parser.add_argument("--origin", required=True, help="the stable origin's address")
    parser.add_argument("--canary", required=True, help="the canary origin's address")
    parser.add_argument("--canary-percent", type=percent, default=0, help="share of client IPs sent to the canary (0..100)")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds to drain in-flight requests on shutdown")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        stable = Peer(parse_address(args.origin), connect_timeout=3.0)
        canary = Peer(parse_address(args.canary), connect_timeout=3.0)
        listen = parse_address(args.listen)
    except ValueError as exc:
        parser.error(str(exc))
    app = CanaryRouter(stable, canary, args.canary_percent)

    try:
        sock = bind_socket(listen)
    except BindError as exc:
        print(f"http_canary: {exc.strerror}", file=sys.stderr)
        return 1
    bound = sock.getsockname()
    server = Server(grace_period=args.grace)
    server.add_service(HttpProxyService("canary", sock, app))
    server.on_started.append(lambda: log.info("listening on %s", f"{bound[0]}:{bound[1]}" if isinstance(bound, tuple) else bound))
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

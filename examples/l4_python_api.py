"""ferryman as a library: a TCP proxy whose routing is Python code.

``ClientIpRouter`` is a :class:`ferryman.ProxyL4`: clients whose IP is in ``--canary-net``
go to the second backend, everyone else to the first, and every connection is logged with
its byte counts when it closes. It is served by a :class:`ferryman.Server` with one
:class:`ferryman.TcpProxyService`; SIGTERM or Ctrl-C drains live connections and exits.

Run it from the repository root (or ``pip install .`` and drop ``PYTHONPATH``)::

    PYTHONPATH=src python examples/l4_python_api.py --listen 127.0.0.1:6190 \\
        --backend 127.0.0.1:8081 --backend 127.0.0.1:8082 --canary-net 127.0.0.2/32

``--listen 127.0.0.1:0`` picks a free port; the address actually bound is logged as
``listening on HOST:PORT``.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from ferryman import L4Session, Peer, ProxyError, ProxyL4, Server, TcpProxyService, bind_socket, parse_address
from ferryman.net.listener import BindError

log = logging.getLogger("l4_example")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientIpRouter(ProxyL4):
    """Route by client IP: ``canary_net`` → ``canary``, everyone else → ``default``."""

    max_tries = 1  # each client has exactly one backend: no failover

    def __init__(self, default: Peer, canary: Peer | None = None, canary_net: Network | None = None) -> None:
        self.default = default
        self.canary = canary
        self.canary_net = canary_net

    async def upstream_peer(self, session: L4Session) -> Peer:
        if self.canary is not None and self.canary_net is not None and session.client_ip:
            if ipaddress.ip_address(session.client_ip) in self.canary_net:
                return self.canary
        return self.default

    async def logging(self, session: L4Session, error: ProxyError | None) -> None:
        client = "%s:%s" % session.client_addr[:2] if isinstance(session.client_addr, tuple) else str(session.client_addr)
        backend = session.peer.name if session.peer is not None else "-"
        if error is not None:
            log.warning("client %s -> %s failed: %s", client, backend, error)
            return
        log.info(
            "client %s -> %s: %d bytes up, %d bytes down, %.3fs",
            client, backend, session.bytes_up, session.bytes_down, session.duration,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:6190", help="address to listen on (host:port, [v6]:port, unix:/path)")
    parser.add_argument("--backend", action="append", required=True, help="backend address; give it twice for default + canary")
    parser.add_argument("--canary-net", type=ipaddress.ip_network, help="clients in this network go to the second backend")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds to drain live connections on shutdown")
    args = parser.parse_args(argv)
    if len(args.backend) > 2:
        parser.error("give one or two --backend addresses")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        peers = [Peer(parse_address(text), connect_timeout=3.0) for text in args.backend]
        listen = parse_address(args.listen)
    except ValueError as exc:
        parser.error(str(exc))
    app = ClientIpRouter(peers[0], peers[1] if len(peers) > 1 else None, args.canary_net)

    try:
        sock = bind_socket(listen)
    except BindError as exc:
        print(f"l4_python_api: {exc.strerror}", file=sys.stderr)
        return 1
    bound = sock.getsockname()
    server = Server(grace_period=args.grace)
    server.add_service(TcpProxyService("example", sock, app))
    server.on_started.append(lambda: log.info("listening on %s", f"{bound[0]}:{bound[1]}" if isinstance(bound, tuple) else bound))
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ferryman as a library: an HTTP reverse proxy that edits requests and responses in Python.

``HeaderRewriter`` is a :class:`ferryman.http.hooks.ProxyHttp` with three hooks:

- ``upstream_peer`` sends every request to ``--origin``;
- ``upstream_request_filter`` edits what the origin receives: it sets ``x-proxy: ferryman``,
  drops ``cookie`` from requests under ``--no-cookie`` paths (static files need none) and
  maps the path prefix of ``--rewrite /api=/v2`` (``/api/users?x=1`` → ``/v2/users?x=1``)
  through ``session.upstream_target``; the client's request itself is left untouched;
- ``response_filter`` edits what the client receives: it adds ``x-served-by`` and drops
  ``server`` (no need to advertise the origin's software).

Run it from the repository root (or ``pip install .`` and drop ``PYTHONPATH``)::

    PYTHONPATH=src python examples/http_header_rewrite.py --listen 127.0.0.1:6190 \\
        --origin 127.0.0.1:8080 --rewrite /api=/v2 --no-cookie /static/

``--listen 127.0.0.1:0`` picks a free port; the address actually bound is logged as
``listening on HOST:PORT``. SIGTERM or Ctrl-C drains in-flight requests and exits.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ferryman import HttpProxyService, Peer, ProxyHttp, Server, Session, bind_socket, parse_address
from ferryman.net.listener import BindError

log = logging.getLogger("header_rewrite")

Headers = list[tuple[bytes, bytes]]


def rewrite_prefix(target: bytes, old: bytes, new: bytes) -> bytes | None:
    """``target`` with the path prefix ``old`` replaced by ``new``, or None if it does not match.

    ``/api`` matches ``/api``, ``/api/x`` and ``/api?q``, never ``/apix``.
    """
    if not target.startswith(old):
        return None
    rest = target[len(old):]
    if old.endswith(b"/") or not rest or rest[:1] in (b"/", b"?"):
        return new + rest
    return None


class HeaderRewriter(ProxyHttp):
    """Forward to one origin, editing heads on the way in and out."""

    def __init__(
        self, origin: Peer, *, rewrites: list[tuple[bytes, bytes]], no_cookie: list[bytes], served_by: bytes
    ) -> None:
        self.origin = origin
        self.rewrites = rewrites
        self.no_cookie = no_cookie
        self.served_by = served_by

    async def upstream_peer(self, session: Session) -> Peer:
        return self.origin

    async def upstream_request_filter(self, session: Session, headers: Headers) -> None:
        path = session.request.target  # what the client asked for, before any rewrite
        drop = {b"x-proxy"}
        if any(path.startswith(prefix) for prefix in self.no_cookie):
            drop.add(b"cookie")
        headers[:] = [(name, value) for name, value in headers if name not in drop]
        headers.append((b"x-proxy", b"ferryman"))
        for old, new in self.rewrites:
            target = rewrite_prefix(session.upstream_target, old, new)
            if target is not None:
                session.upstream_target = target
                break  # the first matching prefix wins

    async def response_filter(self, session: Session, headers: Headers) -> None:
        headers[:] = [(name, value) for name, value in headers if name not in (b"server", b"x-served-by")]
        headers.append((b"x-served-by", self.served_by))


def parse_rewrite(text: str) -> tuple[bytes, bytes]:
    """``/old=/new`` → (b"/old", b"/new")."""
    old, sep, new = text.partition("=")
    if not sep or not old.startswith("/") or not new.startswith("/"):
        raise argparse.ArgumentTypeError(f"expected /OLD=/NEW (two paths), got {text!r}")
    return old.encode(), new.encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:6190", help="address to listen on (host:port, [v6]:port, unix:/path)")
    parser.add_argument("--origin", required=True, help="origin server address")
    parser.add_argument("--rewrite", type=parse_rewrite, action="append", default=[], metavar="/OLD=/NEW",
                        help="map a path prefix before proxying (repeatable; the first match wins)")
    parser.add_argument("--no-cookie", action="append", default=[], metavar="PREFIX",
                        help="drop the cookie header of requests whose path starts with PREFIX (repeatable)")
    parser.add_argument("--served-by", default="ferryman", help="value of the x-served-by response header")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds to drain in-flight requests on shutdown")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        origin = Peer(parse_address(args.origin), connect_timeout=3.0)
        listen = parse_address(args.listen)
    except ValueError as exc:
        parser.error(str(exc))
    app = HeaderRewriter(
        origin, rewrites=args.rewrite, no_cookie=[p.encode() for p in args.no_cookie], served_by=args.served_by.encode()
    )

    try:
        sock = bind_socket(listen)
    except BindError as exc:
        print(f"http_header_rewrite: {exc.strerror}", file=sys.stderr)
        return 1
    bound = sock.getsockname()
    server = Server(grace_period=args.grace)
    server.add_service(HttpProxyService("header-rewrite", sock, app))
    server.on_started.append(lambda: log.info("listening on %s", f"{bound[0]}:{bound[1]}" if isinstance(bound, tuple) else bound))
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ferryman as a library: a bearer-token gate in front of an origin that trusts ``x-user``.

``AuthGate`` is a :class:`ferryman.http.hooks.ProxyHttp` with three hooks:

- ``request_filter`` reads ``Authorization: Bearer TOKEN`` and looks the token up among the
  ``--token USER:TOKEN`` options (compared in constant time). Without a valid one it answers
  ``401`` with ``WWW-Authenticate: Bearer realm="..."`` itself (``session.respond``) and the
  request never reaches the origin;
- ``upstream_request_filter`` removes the token (the origin never sees it) and any
  ``x-user`` the client sent, then adds ``x-user: USER`` for the origin to trust;
- ``upstream_peer`` sends every admitted request to ``--origin``.

Run it from the repository root (or ``pip install .`` and drop ``PYTHONPATH``)::

    PYTHONPATH=src python examples/http_auth_gate.py --listen 127.0.0.1:6190 \\
        --origin 127.0.0.1:8080 --token alice:s3cret --token bob:hunter2

``--listen 127.0.0.1:0`` picks a free port; the address actually bound is logged as
``listening on HOST:PORT``. SIGTERM or Ctrl-C drains in-flight requests and exits.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import sys

from ferryman import HttpProxyService, Peer, ProxyHttp, Server, Session, bind_socket, parse_address
from ferryman.net.listener import BindError

log = logging.getLogger("auth_gate")

Headers = list[tuple[bytes, bytes]]


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The token of an ``Authorization: Bearer TOKEN`` value (scheme case-insensitive)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token or b" " in token:
        return None
    return token


class AuthGate(ProxyHttp):
    """Admit requests with a known bearer token; tell the origin who the user is."""

    def __init__(self, origin: Peer, tokens: dict[bytes, bytes], realm: str) -> None:
        self.origin = origin
        self.tokens = list(tokens.items())  # (token, user)
        self.challenge = f'Bearer realm="{realm}"'.encode()

    def user_for(self, token: bytes) -> bytes | None:
        """The user owning ``token``; every token is compared, so timing does not tell which matched."""
        user = None
        for known, owner in self.tokens:
            if hmac.compare_digest(known, token):
                user = owner
        return user

    async def request_filter(self, session: Session) -> bool:
        token = bearer_token(session.header(b"authorization"))
        user = self.user_for(token) if token is not None else None
        if user is None:
            challenge = self.challenge if token is None else self.challenge + b', error="invalid_token"'
            session.respond(401, b"401 Unauthorized\n", [(b"www-authenticate", challenge), (b"cache-control", b"no-store")])
            return True  # answered: not proxied
        session.ctx = user
        return False

    async def upstream_peer(self, session: Session) -> Peer:
        return self.origin

    async def upstream_request_filter(self, session: Session, headers: Headers) -> None:
        headers[:] = [(name, value) for name, value in headers if name not in (b"authorization", b"x-user")]
        headers.append((b"x-user", session.ctx))


def token_option(text: str) -> tuple[bytes, bytes]:
    """``USER:TOKEN`` → (token, user)."""
    user, sep, token = text.partition(":")
    if not sep or not user or not token or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"expected USER:TOKEN without spaces, got {text!r}")
    return token.encode(), user.encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:6190", help="address to listen on (host:port, [v6]:port, unix:/path)")
    parser.add_argument("--origin", required=True, help="origin server address")
    parser.add_argument("--token", type=token_option, action="append", required=True, metavar="USER:TOKEN",
                        help="a user and their bearer token (repeatable)")
    parser.add_argument("--realm", default="ferryman", help="realm named in the WWW-Authenticate challenge")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds to drain in-flight requests on shutdown")
    args = parser.parse_args(argv)
    if any(c in args.realm for c in '"\\\r\n'):
        parser.error("--realm must not contain quotes, backslashes or line breaks")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        origin = Peer(parse_address(args.origin), connect_timeout=3.0)
        listen = parse_address(args.listen)
    except ValueError as exc:
        parser.error(str(exc))
    app = AuthGate(origin, dict(args.token), args.realm)

    try:
        sock = bind_socket(listen)
    except BindError as exc:
        print(f"http_auth_gate: {exc.strerror}", file=sys.stderr)
        return 1
    bound = sock.getsockname()
    server = Server(grace_period=args.grace)
    server.add_service(HttpProxyService("auth-gate", sock, app))
    server.on_started.append(lambda: log.info("listening on %s", f"{bound[0]}:{bound[1]}" if isinstance(bound, tuple) else bound))
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

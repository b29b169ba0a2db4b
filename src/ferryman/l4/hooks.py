"""``ProxyL4``: the programmable TCP/UDP proxy, Pingora-style.

Subclass it, override the hooks you need (only :meth:`upstream_peer` is required) and serve
it with :class:`ferryman.server.Server`. Hooks run in this order for every connection
(for UDP: every new client session):

``new_ctx`` → ``connection_filter`` → (``upstream_peer`` → connect → ``fail_to_connect`` on
error, repeated for failover) → ``connected_to_upstream`` → bytes flow → ``logging``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ProxyError
from ..net.connect import Peer
from .session import L4Session


class ProxyL4:
    """Base class of L4 proxy apps. Defaults are safe: accept all, no retry beyond the error's own."""

    #: upper bound on upstream_peer/connect attempts per connection
    max_tries: int = 3

    def new_ctx(self) -> Any:
        """Called when a connection is accepted; returns the per-session ``ctx``. Default: None."""
        return None

    async def connection_filter(self, session: L4Session) -> bool:
        """Called before anything is read or dialled; return False to close the connection.

        ``session.client_addr`` is already the PROXY-protocol source when one was accepted.
        Default: accept.
        """
        return True

    async def upstream_peer(self, session: L4Session) -> Peer:
        """Required. Called for each connect attempt; returns the :class:`Peer` to dial.

        ``session.tries`` counts earlier failed attempts and ``session.last_error`` holds the
        last failure, so failover can pick another backend.
        """
        raise NotImplementedError("ProxyL4 subclasses must implement upstream_peer()")

    def fail_to_connect(self, session: L4Session, peer: Peer, error: ProxyError) -> ProxyError:
        """Called when dialling ``peer`` failed; return the error with the retry decision set.

        Default: keep the error's own ``retry`` (True for timeouts and refusals).
        """
        return error

    async def connected_to_upstream(self, session: L4Session, peer: Peer) -> None:
        """Called once the upstream connection is up, before any byte is relayed. Default: nothing."""

    async def logging(self, session: L4Session, error: ProxyError | None) -> None:
        """Called last, after both sides closed or the connection failed. Default: nothing."""


def overrides(app: object, name: str, base: type = ProxyL4) -> bool:
    """True when ``app`` overrides hook ``name``: a hook nobody overrides is never called."""
    return getattr(type(app), name) is not getattr(base, name)

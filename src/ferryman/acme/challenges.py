"""Answering ACME challenges where the CA looks for them, in every worker.

The process that runs the ACME client (worker 0) writes each challenge's answer into the
certificate's ``storage`` (see :mod:`ferryman.acme.storage`); the validation connection may
reach any worker, so every worker answers from those files:

* :class:`Http01Responder` — ``GET /.well-known/acme-challenge/TOKEN`` on every http
  listener, before routing and for any Host (RFC 8555 §8.3). An unknown token falls
  through to the routes (a backend may run its own ACME client).
* :class:`TlsAlpnResponder` — asked by :class:`~ferryman.net.tls.CertStore` when a
  ClientHello offers ALPN ``acme-tls/1`` (RFC 8737): the context serving the validation
  certificate for that name, or None when no challenge is pending.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import TYPE_CHECKING, Any

from .storage import HTTP01, TLS_ALPN01, Storage, valid_host, valid_token

if TYPE_CHECKING:
    from ..config.model import Config, ListenerConfig

log = logging.getLogger(__name__)

__all__ = ["CHALLENGE_PREFIX", "Http01Responder", "TlsAlpnResponder", "http01_responder", "tls_alpn_responder"]

CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"
ACME_TLS_1 = "acme-tls/1"


class Http01Responder:
    """Key authorizations of pending HTTP-01 challenges, read from the storages."""

    __slots__ = ("storages",)

    def __init__(self, storages: tuple[Storage, ...]) -> None:
        self.storages = storages

    def key_authorization(self, token: str) -> bytes | None:
        if not valid_token(token):
            return None
        for storage in self.storages:
            try:
                return storage.http01_path(token).read_bytes()
            except OSError:
                continue
        return None

    def respond(self, session: Any) -> bool:
        """Answer a request for ``/.well-known/acme-challenge/TOKEN`` (True) if the token
        is pending; False lets the request go on to the routes."""
        request = session.request
        if request.method not in (b"GET", b"HEAD"):
            return False
        token = request.target[len(CHALLENGE_PREFIX):].partition(b"?")[0].decode("latin-1")
        body = self.key_authorization(token)
        if body is None:
            return False
        session.respond(200, body, [(b"content-type", b"application/octet-stream"), (b"cache-control", b"no-store")])
        return True


class TlsAlpnResponder:
    """``responder(server_name)``: the validation context for a name with a pending
    TLS-ALPN-01 challenge (built once per challenge file), else None."""

    __slots__ = ("_cache", "by_name")

    def __init__(self, by_name: dict[str, Storage]) -> None:
        self.by_name = by_name
        self._cache: dict[str, tuple[tuple[int, int], ssl.SSLContext]] = {}

    def __call__(self, server_name: str) -> ssl.SSLContext | None:
        name = server_name.lower().rstrip(".")
        storage = self.by_name.get(name)
        if storage is None or not valid_host(name):
            return None
        path = storage.tls_alpn_path(name)
        try:
            stat = os.stat(path)
        except OSError:
            self._cache.pop(name, None)
            return None
        version = (stat.st_mtime_ns, stat.st_ino)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(path, path)
        except (OSError, ssl.SSLError) as exc:
            log.error("acme: cannot load the TLS-ALPN-01 certificate %s: %s", path, exc)
            return None
        context.set_alpn_protocols([ACME_TLS_1])
        self._cache[name] = (version, context)
        return context


def _acme_certificates(config: Config, challenge: str) -> dict[str, Any]:
    return {
        name: cert.acme for name, cert in config.certificates.items()
        if cert.acme is not None and cert.acme.challenge == challenge
    }


def http01_responder(config: Config) -> Http01Responder | None:
    """The HTTP-01 responder every http listener of ``config`` uses (None: no such certificate)."""
    roots = dict.fromkeys(acme.storage for acme in _acme_certificates(config, HTTP01).values())
    return Http01Responder(tuple(Storage(root) for root in roots)) if roots else None


def tls_alpn_responder(config: Config, listener: ListenerConfig) -> TlsAlpnResponder | None:
    """The TLS-ALPN-01 responder of one TLS listener: the names of its tls-alpn-01
    certificates (None when it serves none)."""
    managed = _acme_certificates(config, TLS_ALPN01)
    by_name = {
        host: Storage(managed[cert].storage)
        for cert in listener.tls if cert in managed
        for host in managed[cert].names
    }
    return TlsAlpnResponder(by_name) if by_name else None

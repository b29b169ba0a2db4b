"""The ACME protocol over HTTPS (RFC 8555): account, order, challenges, finalize, download.

:meth:`AcmeClient.issue` runs one issuance from start to end:

1. ``newAccount`` with ``termsOfServiceAgreed`` (an existing account for the key is
   returned as is); its URL becomes the ``kid`` of every later request.
2. ``newOrder`` for the names; each pending authorization gets its challenge answered
   (``publish`` makes the answer visible, ``withdraw`` removes it afterwards), then the
   challenge is triggered and the authorization polled until valid or invalid.
3. ``finalize`` with a CSR for a fresh key, poll the order until valid, download the
   chain (``application/pem-certificate-chain``).

Every POST carries a fresh nonce (from the last response, else ``newNonce``); a
``badNonce`` error is retried with the nonce that came with it (RFC 8555 §6.5). Polls wait
as long as a ``Retry-After`` header asks (bounded by the issuance deadline), else back off
from 0.25s to 5s. A problem document becomes an :class:`AcmeError` carrying it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from . import certs, jws
from .http import HttpsClient, Response, TransportError
from .messages import (
    BAD_NONCE,
    PROBLEM_TYPE,
    AcmeError,
    Authorization,
    Directory,
    Order,
    Problem,
    parse_retry_after,
)

log = logging.getLogger(__name__)

__all__ = ["AcmeClient", "AcmeError", "Issued", "TransportError"]

MAX_BAD_NONCE = 20  # retries of one request after badNonce answers
POLL_FIRST, POLL_MAX = 0.25, 5.0
JOSE = [("content-type", "application/jose+json")]

Publish = Callable[[str, str, str], Awaitable[None] | None]  # (challenge type, identifier, key authorization or token)


@dataclass(frozen=True, slots=True)
class Issued:
    """The result of an issuance: the stored file's bytes (key, then chain) and the order."""

    pem: bytes
    order_url: str


class AcmeClient:
    """One ACME account at one directory. ``contact``: e.g. ``["mailto:ops@example.com"]``."""

    def __init__(self, directory_url: str, account_key: ec.EllipticCurvePrivateKey, *, http: HttpsClient,
                 contact: list[str] | None = None, account_url: str | None = None) -> None:
        self.directory_url = directory_url
        self.key = account_key
        self.http = http
        self.contact = contact or []
        self.account_url = account_url
        self.thumbprint = jws.thumbprint(account_key)
        self.bad_nonces = 0  # badNonce answers retried so far (observable in tests and logs)
        self._directory: Directory | None = None
        self._nonce: str | None = None

    # transport -----------------------------------------------------------------------------
    async def directory(self) -> Directory:
        if self._directory is None:
            response = await self.http.request("GET", self.directory_url)
            self._directory = Directory.from_json(self._json(response, "the directory"))
        return self._directory

    async def _fresh_nonce(self) -> str:
        directory = await self.directory()
        response = await self.http.request("HEAD", directory.new_nonce)
        nonce = response.header("replay-nonce")
        if not nonce:
            raise AcmeError(f"newNonce answered {response.status} without a Replay-Nonce")
        return nonce

    async def post(self, url: str, payload: Any, *, use_jwk: bool = False, accept: str | None = None) -> Response:
        """A signed POST (``payload`` None: POST-as-GET). Retries on badNonce; raises
        AcmeError for an error status."""
        for _ in range(MAX_BAD_NONCE + 1):
            nonce = self._nonce or await self._fresh_nonce()
            self._nonce = None
            kid = None if use_jwk else self.account_url
            if kid is None and not use_jwk:
                raise AcmeError("no account yet: call account() first")
            body = jws.sign(self.key, url, nonce, payload, kid=kid)
            headers = JOSE + ([("accept", accept)] if accept else [])
            response = await self.http.request("POST", url, body, headers)
            self._nonce = response.header("replay-nonce")
            if response.status < 400:
                return response
            problem = self._problem(response)
            if problem.type == BAD_NONCE:
                self.bad_nonces += 1
                log.debug("acme: badNonce from %s, retrying with a new nonce", url)
                continue
            raise AcmeError(f"POST {url} answered {response.status}", problem, retry_after=parse_retry_after(response.header("retry-after")))
        raise AcmeError(f"POST {url}: still badNonce after {MAX_BAD_NONCE} retries")

    @staticmethod
    def _problem(response: Response) -> Problem:
        kind = (response.header("content-type") or "").split(";")[0].strip()
        try:
            doc = json.loads(response.body) if response.body else None
        except ValueError:
            doc = None
        if kind == PROBLEM_TYPE or isinstance(doc, dict) and "type" in doc:
            return Problem.from_json(doc, response.status)
        text = response.body[:200].decode("utf-8", "replace")
        return Problem("about:blank", f"HTTP {response.status} {text}".strip(), response.status)

    @staticmethod
    def _json(response: Response, what: str) -> Any:
        if response.status >= 400:
            raise AcmeError(f"{what} answered {response.status}", AcmeClient._problem(response))
        try:
            return json.loads(response.body)
        except ValueError as exc:
            raise AcmeError(f"{what} is not JSON: {response.body[:100]!r}") from exc

    # account ---------------------------------------------------------------------------------
    async def account(self) -> str:
        """Register (or find) the account of our key; its URL (``kid``)."""
        if self.account_url is not None:
            return self.account_url
        directory = await self.directory()
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if self.contact:
            payload["contact"] = self.contact
        response = await self.post(directory.new_account, payload, use_jwk=True)
        location = response.header("location")
        if not location:
            raise AcmeError(f"newAccount answered {response.status} without a Location")
        doc = self._json(response, "the account")
        if isinstance(doc, dict) and doc.get("status") not in (None, "valid"):
            raise AcmeError(f"account {location} is {doc.get('status')}")
        self.account_url = location
        log.info("acme: account %s at %s (%s)", location, self.directory_url, "created" if response.status == 201 else "existing")
        return location

    # issuance --------------------------------------------------------------------------------
    async def issue(self, names: tuple[str, ...], challenge: str, publish: Publish, withdraw: Publish,
                    *, key: ec.EllipticCurvePrivateKey | None = None, deadline: float = 600.0) -> Issued:
        """Order, validate and download a certificate for ``names`` with ``challenge``
        ("http-01" or "tls-alpn-01"). ``publish(type, name, key_authorization)`` makes an
        answer visible (``withdraw`` is called the same way once the authorization is
        decided). ``deadline``: seconds for the whole issuance."""
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline
        await self.account()
        directory = await self.directory()
        response = await self.post(directory.new_order, {"identifiers": [{"type": "dns", "value": n} for n in names]})
        location = response.header("location")
        if not location:
            raise AcmeError("newOrder answered without a Location")
        order = Order.from_json(location, self._json(response, "the new order"))
        if order.status == "invalid":
            raise AcmeError(f"order {location} is invalid", order.error)
        for url in order.authorizations:
            await self._authorize(url, challenge, publish, withdraw, until)
        order = await self._poll_order(order.url, ("ready", "valid"), until)
        key = key or certs.generate_key()
        if order.status == "ready":
            response = await self.post(order.finalize, {"csr": jws.b64url(certs.make_csr(key, names))})
            order = Order.from_json(order.url, self._json(response, "finalize"))
            if order.status != "valid":
                order = await self._poll_order(order.url, ("valid",), until)
        if order.certificate is None:
            raise AcmeError(f"order {order.url} is valid but names no certificate")
        response = await self.post(order.certificate, None, accept="application/pem-certificate-chain")
        return Issued(certs.bundle(key, response.body, names), order.url)

    async def _authorize(self, url: str, challenge_type: str, publish: Publish, withdraw: Publish, until: float) -> None:
        authz = await self._authorization(url)
        if authz.status == "valid":
            return
        if authz.status != "pending":
            raise AcmeError(f"authorization for {authz.identifier} is {authz.status}", authz.failure())
        challenge = authz.challenge(challenge_type)
        if challenge is None:
            offered = ", ".join(c.type for c in authz.challenges) or "none"
            raise AcmeError(f"the server offers no {challenge_type} challenge for {authz.identifier} (offered: {offered})")
        key_authz = jws.key_authorization(challenge.token, self.thumbprint)
        answer = challenge.token if challenge_type == "http-01" else authz.identifier
        await _maybe_await(publish(challenge_type, answer, key_authz))
        try:
            if challenge.status == "pending":
                await self.post(challenge.url, {})
            authz = await self._poll_authorization(url, until)
        finally:
            await _maybe_await(withdraw(challenge_type, answer, key_authz))
        if authz.status != "valid":
            problem = authz.failure()
            raise AcmeError(f"{challenge_type} validation of {authz.identifier} failed ({authz.status})", problem)

    async def _authorization(self, url: str) -> Authorization:
        response = await self.post(url, None)
        return Authorization.from_json(url, self._json(response, f"authorization {url}"))

    async def _poll_authorization(self, url: str, until: float) -> Authorization:
        delay = POLL_FIRST
        while True:
            response = await self.post(url, None)
            authz = Authorization.from_json(url, self._json(response, f"authorization {url}"))
            if authz.status not in ("pending", "processing"):
                return authz
            delay = await self._wait(response, delay, until, f"authorization of {authz.identifier}")

    async def _poll_order(self, url: str, done: tuple[str, ...], until: float) -> Order:
        delay = POLL_FIRST
        while True:
            response = await self.post(url, None)
            order = Order.from_json(url, self._json(response, f"order {url}"))
            if order.status in done:
                return order
            if order.status == "invalid":
                raise AcmeError(f"order {url} became invalid", order.error)
            delay = await self._wait(response, delay, until, f"order {url} ({order.status})")

    @staticmethod
    async def _wait(response: Response, delay: float, until: float, what: str) -> float:
        """Sleep as Retry-After asks (else ``delay``); the next default delay."""
        loop = asyncio.get_running_loop()
        asked = parse_retry_after(response.header("retry-after"))
        pause = asked if asked is not None else delay
        if loop.time() + pause > until:
            raise AcmeError(f"gave up waiting for the {what}: the issuance deadline passed")
        await asyncio.sleep(pause)
        return min(delay * 2, POLL_MAX)


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result


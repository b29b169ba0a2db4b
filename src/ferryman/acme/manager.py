"""Obtaining and renewing the ``acme`` certificates of a config, in one process.

With workers, worker 0 runs the :class:`AcmeManager` (as it runs the health checks): one
account, one issuance at a time, challenge answers written where every worker serves them
from (:mod:`ferryman.acme.challenges`). A certificate is (re)issued when none is stored,
when its names differ from the config, or when renewal is due (``renew_before`` ahead of
expiry, else with a third of its lifetime left); otherwise it is looked at again at the
renewal time and at least every ``check_interval``. A failed issuance is logged with the
CA's problem document (type and detail) and retried after ``retry_interval``; meanwhile
the listeners keep serving what they served (the placeholder or the previous certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from . import certs
from .client import AcmeClient
from .http import HttpsClient, TransportError
from .messages import AcmeError
from .schedule import next_check, reason_to_issue
from .storage import HTTP01, Storage

if TYPE_CHECKING:
    from ..config.model import Config

log = logging.getLogger(__name__)

__all__ = ["AcmeManager", "Managed", "managed_certificates"]

ISSUE_DEADLINE = 600.0  # seconds for one whole issuance (order to download)


@dataclass(frozen=True, slots=True)
class Managed:
    """One ``[certificates.NAME]`` with ``acme``, as the manager needs it."""

    name: str
    names: tuple[str, ...]
    directory: str
    email: str | None
    storage: str
    challenge: str
    ca: str | None
    renew_before: float | None
    check_interval: float
    retry_interval: float

    @property
    def account(self) -> tuple[str, str, str | None, str | None]:
        return (self.directory, self.storage, self.ca, self.email)


def managed_certificates(config: Config) -> dict[str, Managed]:
    out = {}
    for name, cert in config.certificates.items():
        acme = cert.acme
        if acme is not None:
            out[name] = Managed(
                name, tuple(acme.names), acme.directory, acme.email, acme.storage, acme.challenge, acme.ca,
                acme.renew_before, acme.check_interval, acme.retry_interval,
            )
    return out


class AcmeManager:
    """Background service: issue and renew the managed certificates. ``on_issued(name)`` is
    called after a new certificate was stored (to swap it into the listeners)."""

    name = "acme"

    def __init__(self, on_issued: Callable[[str], None] | None = None, *, deadline: float = ISSUE_DEADLINE) -> None:
        self.on_issued = on_issued
        self.deadline = deadline
        self.managed: dict[str, Managed] = {}
        self.next: dict[str, datetime] = {}  # when each certificate is looked at again
        self.issued = 0  # successful issuances (tests and logs)
        self.failed = 0
        self._clients: dict[tuple[str, str, str | None, str | None], AcmeClient] = {}
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # configuration -----------------------------------------------------------------------------
    def configure(self, managed: dict[str, Managed]) -> None:
        """A new config generation: new or changed certificates are looked at now."""
        for name in list(self.next):
            if self.managed.get(name) != managed.get(name):
                del self.next[name]
        self.managed = dict(managed)
        self._wake.set()

    def ready(self) -> None:
        """The listeners serve: challenges can be answered, issuance may start."""
        self._ready.set()

    # service -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.http.close()

    async def _run(self) -> None:
        await self._ready.wait()
        while True:
            self._wake.clear()
            try:
                pause = await self.check()
            except Exception:  # a bug must not stop renewals for good
                log.exception("acme: checking certificates failed")
                pause = 60.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    async def check(self) -> float | None:
        """Issue what is due now; seconds until the next certificate needs a look (None:
        no certificate is managed)."""
        for name, managed in list(self.managed.items()):
            due = self.next.get(name)
            if due is not None and datetime.now(timezone.utc) < due:
                continue
            when = await self._check(managed)
            if self.managed.get(name) == managed:  # not reconfigured meanwhile
                self.next[name] = when
        if not self.next:
            return None
        now = datetime.now(timezone.utc)
        return max(0.0, min((due - now).total_seconds() for due in self.next.values()))

    async def _check(self, managed: Managed) -> datetime:
        storage = Storage(managed.storage)
        info = storage.issued(managed.name)
        reason = reason_to_issue(info, managed.names, datetime.now(timezone.utc), managed.renew_before)
        if reason is None:
            return next_check(datetime.now(timezone.utc), info, managed.renew_before, managed.check_interval)
        names = ", ".join(managed.names)
        log.info("acme: certificate %r (%s): requesting one from %s (%s)", managed.name, names, managed.directory, reason)
        try:
            pem = await self.issue(managed, storage)
        except (AcmeError, TransportError, OSError, ValueError) as exc:
            self.failed += 1
            serving = "the placeholder" if info is None or info.placeholder else f"the certificate valid until {info.not_after:%Y-%m-%d %H:%M}Z"
            wait = max(managed.retry_interval, getattr(exc, "retry_after", None) or 0.0)  # a rate limit's Retry-After
            log.error("acme: certificate %r (%s) not issued: %s; still serving %s, retrying in %gs",
                      managed.name, names, exc, serving, wait)
            return datetime.now(timezone.utc) + timedelta(seconds=wait)
        path = storage.save_certificate(managed.name, pem)
        new = certs.inspect(pem)
        self.issued += 1
        log.info("acme: certificate %r (%s) issued: serial %x, valid until %s, stored in %s",
                 managed.name, names, new.serial, f"{new.not_after:%Y-%m-%d %H:%M}Z", path)
        if self.on_issued is not None:
            try:
                self.on_issued(managed.name)
            except Exception:
                log.exception("acme: swapping in certificate %r failed", managed.name)
        return next_check(datetime.now(timezone.utc), new, managed.renew_before, managed.check_interval)

    async def issue(self, managed: Managed, storage: Storage) -> bytes:
        """One issuance for ``managed``: the stored file's bytes (key, then chain)."""
        client = await self._client(managed, storage)

        def path(kind: str, answer: str) -> Path:  # answer: the token (http-01) or the host name
            return storage.http01_path(answer) if kind == HTTP01 else storage.tls_alpn_path(answer)

        def publish(kind: str, answer: str, key_authorization: str) -> None:
            data = key_authorization.encode("ascii") if kind == HTTP01 else certs.tls_alpn_certificate(answer, key_authorization)
            storage.publish(path(kind, answer), data)

        def withdraw(kind: str, answer: str, _key_authorization: str) -> None:
            storage.withdraw(path(kind, answer))

        issued = await client.issue(managed.names, managed.challenge, publish, withdraw, deadline=self.deadline)
        return issued.pem

    async def _client(self, managed: Managed, storage: Storage) -> AcmeClient:
        client = self._clients.get(managed.account)
        if client is None:
            storage.prepare()
            account = storage.account(managed.directory)
            contact = [f"mailto:{managed.email}"] if managed.email else []
            known = account.get("url") if account.get("contact", []) == contact else None
            client = AcmeClient(
                managed.directory, storage.account_key(managed.directory), http=HttpsClient(ca_file=managed.ca),
                contact=contact, account_url=known if isinstance(known, str) else None,
            )
            self._clients[managed.account] = client
        if client.account_url is None:
            url = await client.account()
            storage.save_account(managed.directory, {"url": url, "contact": client.contact, "directory": managed.directory})
        return client

"""ACME resources and errors as plain values (RFC 8555 §7.1, §6.7). Sans-IO.

The client hands the JSON it received to these parsers and acts on typed values; a missing
or mistyped member is a :class:`AcmeError` saying which resource and member, so a server
that answers something odd is reported precisely instead of failing with a KeyError.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "BAD_NONCE",
    "AcmeError",
    "Authorization",
    "Challenge",
    "Directory",
    "Order",
    "Problem",
    "parse_retry_after",
]

ERROR_PREFIX = "urn:ietf:params:acme:error:"
BAD_NONCE = ERROR_PREFIX + "badNonce"
PROBLEM_TYPE = "application/problem+json"


@dataclass(frozen=True, slots=True)
class Problem:
    """An RFC 7807 problem document as ACME uses it (§6.7): ``type``, ``detail``, the HTTP
    ``status`` and, for orders with several names, ``subproblems`` per identifier."""

    type: str
    detail: str = ""
    status: int | None = None
    identifier: str | None = None
    subproblems: tuple[Problem, ...] = ()

    @classmethod
    def from_json(cls, doc: Any, status: int | None = None) -> Problem:
        if not isinstance(doc, dict):
            return cls("about:blank", f"unexpected error document {str(doc)[:200]!r}", status)
        ident = doc.get("identifier")
        subs = doc.get("subproblems")
        return cls(
            type=str(doc.get("type") or "about:blank"),
            detail=str(doc.get("detail") or ""),
            status=doc.get("status") if isinstance(doc.get("status"), int) else status,
            identifier=str(ident.get("value")) if isinstance(ident, dict) and ident.get("value") else None,
            subproblems=tuple(cls.from_json(s) for s in subs) if isinstance(subs, list) else (),
        )

    def __str__(self) -> str:
        text = f"{self.type}: {self.detail}" if self.detail else self.type
        if self.identifier:
            text = f"{self.identifier}: {text}"
        if self.subproblems:
            text += " (" + "; ".join(str(s) for s in self.subproblems) + ")"
        return text


class AcmeError(Exception):
    """An ACME operation failed; ``problem`` is the server's problem document when it sent one."""

    def __init__(self, message: str, problem: Problem | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(f"{message}: {problem}" if problem is not None else message)
        self.problem = problem
        self.retry_after = retry_after  # seconds the server asked to wait (rateLimited, 503)


def _member(doc: Any, name: str, kind: type, what: str) -> Any:
    if not isinstance(doc, dict):
        raise AcmeError(f"{what} is not a JSON object")
    value = doc.get(name)
    if not isinstance(value, kind):
        raise AcmeError(f"{what} has no {name!r} {kind.__name__}")
    return value


@dataclass(frozen=True, slots=True)
class Directory:
    """The server's resource URLs (§7.1.1) and its terms of service."""

    new_nonce: str
    new_account: str
    new_order: str
    terms_of_service: str | None = None

    @classmethod
    def from_json(cls, doc: Any) -> Directory:
        meta = doc.get("meta") if isinstance(doc, dict) else None
        terms = meta.get("termsOfService") if isinstance(meta, dict) else None
        return cls(
            new_nonce=_member(doc, "newNonce", str, "the directory"),
            new_account=_member(doc, "newAccount", str, "the directory"),
            new_order=_member(doc, "newOrder", str, "the directory"),
            terms_of_service=terms if isinstance(terms, str) else None,
        )


@dataclass(frozen=True, slots=True)
class Challenge:
    type: str
    url: str
    status: str
    token: str = ""
    error: Problem | None = None

    @classmethod
    def from_json(cls, doc: Any) -> Challenge:
        error = doc.get("error") if isinstance(doc, dict) else None
        token = doc.get("token") if isinstance(doc, dict) else None
        return cls(
            type=_member(doc, "type", str, "a challenge"),
            url=_member(doc, "url", str, "a challenge"),
            status=_member(doc, "status", str, "a challenge"),
            token=token if isinstance(token, str) else "",
            error=Problem.from_json(error) if error is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Authorization:
    """One identifier's authorization (§7.1.4): ``pending`` until a challenge is done."""

    url: str
    identifier: str
    status: str
    challenges: tuple[Challenge, ...] = ()
    wildcard: bool = False

    @classmethod
    def from_json(cls, url: str, doc: Any) -> Authorization:
        ident = _member(doc, "identifier", dict, f"authorization {url}")
        return cls(
            url=url,
            identifier=_member(ident, "value", str, f"the identifier of authorization {url}"),
            status=_member(doc, "status", str, f"authorization {url}"),
            challenges=tuple(Challenge.from_json(c) for c in doc.get("challenges") or ()),
            wildcard=doc.get("wildcard") is True,
        )

    def challenge(self, kind: str) -> Challenge | None:
        return next((c for c in self.challenges if c.type == kind), None)

    def failure(self) -> Problem | None:
        """Why an invalid authorization failed: the first challenge error it carries."""
        return next((c.error for c in self.challenges if c.error is not None), None)


@dataclass(frozen=True, slots=True)
class Order:
    """An order for a certificate (§7.1.3)."""

    url: str
    status: str
    authorizations: tuple[str, ...]
    finalize: str
    certificate: str | None = None
    error: Problem | None = None
    identifiers: tuple[str, ...] = field(default=())

    @classmethod
    def from_json(cls, url: str, doc: Any) -> Order:
        what = f"order {url}"
        authorizations = _member(doc, "authorizations", list, what)
        error = doc.get("error")
        certificate = doc.get("certificate")
        return cls(
            url=url,
            status=_member(doc, "status", str, what),
            authorizations=tuple(str(a) for a in authorizations),
            finalize=_member(doc, "finalize", str, what),
            certificate=certificate if isinstance(certificate, str) else None,
            error=Problem.from_json(error) if error is not None else None,
            identifiers=tuple(
                str(i.get("value")) for i in doc.get("identifiers") or () if isinstance(i, dict)
            ),
        )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delta-seconds or an HTTP date (RFC 9110
    §10.2.3). None when absent or unreadable; never negative."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())

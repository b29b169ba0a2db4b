"""When a managed certificate needs issuing or renewing. Sans-IO: values in, decisions out."""

from __future__ import annotations

from datetime import datetime, timedelta

from .certs import CertInfo

__all__ = ["next_check", "reason_to_issue", "renew_at"]


def renew_at(info: CertInfo, renew_before: float | None) -> datetime:
    """The moment renewal is due: ``renew_before`` seconds ahead of expiry, or by default
    when a third of the lifetime remains (60 days into a 90-day certificate)."""
    margin = timedelta(seconds=renew_before) if renew_before is not None else info.lifetime / 3
    return info.not_after - margin


def reason_to_issue(info: CertInfo | None, names: tuple[str, ...], now: datetime, renew_before: float | None) -> str | None:
    """Why a certificate must be (re)issued now, or None while the stored one is good."""
    if info is None:
        return "no certificate issued yet"
    if info.placeholder:
        return "only the placeholder is served"
    if set(info.names) != set(names):
        return f"the stored certificate names {', '.join(info.names)}, the config {', '.join(names)}"
    due = renew_at(info, renew_before)
    if now >= due:
        return f"renewal due since {due:%Y-%m-%d %H:%M:%S}Z (expires {info.not_after:%Y-%m-%d %H:%M:%S}Z)"
    return None


def next_check(now: datetime, info: CertInfo | None, renew_before: float | None, check_interval: float) -> datetime:
    """When to look again after a check found nothing to do (or an issuance succeeded):
    at the renewal time, but at least every ``check_interval`` (the file may change, a
    clock may jump)."""
    regular = now + timedelta(seconds=check_interval)
    if info is None or info.placeholder:
        return regular
    return max(now, min(regular, renew_at(info, renew_before)))

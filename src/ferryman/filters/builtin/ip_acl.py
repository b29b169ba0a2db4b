"""``ip_acl``: allow or deny clients by IP address (IPv4 and IPv6 CIDRs).

```toml
[filters.office]
kind = "ip_acl"
allow = ["10.0.0.0/8", "2001:db8::/32"]
deny = ["10.0.13.0/24"]
```

The rule (deny always wins; the order of entries does not matter, unlike nginx's
first-match ``allow``/``deny`` lines):

1. the client matches a ``deny`` entry → 403;
2. else ``allow`` is non-empty and the client matches none of it → 403;
3. else the request passes.

The client is the address of the downstream connection (the PROXY protocol source when the
listener takes one). An IPv4-mapped IPv6 client (``::ffff:10.1.2.3``, from a dual-stack
listener) is also checked against the IPv4 entries. A client without an IP address (a unix
socket) matches no entry. A single address (``"192.0.2.7"``) is a /32 (or /128).

Entries are grouped by prefix length at load, so a check costs one address parse and a set
lookup per distinct prefix length; verdicts of recent client addresses are remembered
(:data:`VERDICT_CACHE` of them, then the memory starts over), so a returning client costs
one dict lookup.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import model_validator

from ...config.model import Strict
from ...config.types import Network
from ..base import Filter
from ..registry import register

if TYPE_CHECKING:
    from ...http.session import Session

_Table = tuple[tuple[int, frozenset[int]], ...]
VERDICT_CACHE = 4096


def _table(networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network], bits: int) -> _Table:
    by_length: dict[int, set[int]] = {}
    for net in networks:
        shift = bits - net.prefixlen
        by_length.setdefault(shift, set()).add(int(net.network_address) >> shift)
    return tuple((shift, frozenset(values)) for shift, values in sorted(by_length.items()))


def _in(table: _Table, value: int) -> bool:
    for shift, values in table:
        if value >> shift in values:
            return True
    return False


class NetworkSet:
    """A set of CIDRs; ``ip in nets`` costs one address parse plus one shift and set lookup
    per distinct prefix length, whatever the number of entries."""

    __slots__ = ("empty", "v4", "v6")

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        nets = list(networks)
        self.v4 = _table([n for n in nets if n.version == 4], 32)
        self.v6 = _table([n for n in nets if n.version == 6], 128)
        self.empty = not nets

    def __contains__(self, ip: str) -> bool:
        try:
            if ":" in ip:
                value = int.from_bytes(socket.inet_pton(socket.AF_INET6, ip.partition("%")[0]), "big")
                if self.v6 and _in(self.v6, value):
                    return True
                return value >> 32 == 0xFFFF and bool(self.v4) and _in(self.v4, value & 0xFFFFFFFF)
            return bool(self.v4) and _in(self.v4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big"))
        except OSError:  # not an IP address ("" for a unix socket client)
            return False


@register
class IpAclFilter(Filter):
    """Refuse clients with 403 in ``request_filter`` (rule in the module docstring)."""

    kind = "ip_acl"

    class Config(Strict):
        allow: list[Network] = []
        deny: list[Network] = []

        @model_validator(mode="after")
        def _not_empty(self) -> Any:
            if not self.allow and not self.deny:
                raise ValueError("give allow and/or deny (lists of CIDRs); an empty ip_acl lets everyone in")
            return self

    def __init__(self, name: str, config: IpAclFilter.Config) -> None:
        super().__init__(name, config)
        self.allow = NetworkSet(config.allow)
        self.deny = NetworkSet(config.deny)
        self.verdicts: dict[str, bool] = {}  # recent clients: a repeat costs one dict lookup

    def allowed(self, ip: str) -> bool:
        verdict = self.verdicts.get(ip)
        if verdict is None:
            verdict = self.decide(ip)
            if len(self.verdicts) >= VERDICT_CACHE:
                self.verdicts.clear()  # bounded: start over rather than track recency
            self.verdicts[ip] = verdict
        return verdict

    def decide(self, ip: str) -> bool:
        """The rule of the module docstring, uncached."""
        if not self.deny.empty and ip in self.deny:
            return False
        return self.allow.empty or ip in self.allow

    def request_filter(self, session: Session) -> bool:
        if self.allowed(session.client_ip):
            return False
        session.respond_error(403)
        return True

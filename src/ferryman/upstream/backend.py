"""A backend: one address an upstream can send traffic to, with its live state.

Selections and balancers share these objects, so health and connection counts seen by
one algorithm are seen by all (and by the health checker) without copying.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..net.addr import Address, parse_address


@dataclass(eq=False, slots=True)
class Backend:
    """One backend address with its weight and live state.

    ``active``: HTTP requests in flight (always counted), TCP connections open (counted
    for least_conn and p2c, which choose by it); ``requests`` and ``failures`` count attempts sent to it and those that failed
    (connect errors, errors while proxying); ``healthy`` is written by the health checker;
    ``key`` is the stable identity used for hashing.
    """

    address: Address
    weight: int = 1
    healthy: bool = True
    active: int = 0
    key: str = field(default="")
    passive: Any = field(default=None, repr=False)  # the owning upstream's PassiveHealth, if any
    verdict: bool = True  # health's view (active and passive checks); ``healthy`` also needs not disabled
    disabled: bool = False  # taken out by an operator (admin API: disable / drain)
    requests: int = 0  # HTTP requests (L4: connections) sent to it, retries included
    failures: int = 0  # of those, the ones that failed to connect or failed while proxying

    def __post_init__(self) -> None:
        if not self.key:
            self.key = str(self.address)
        if not self.healthy:  # Backend(..., healthy=False): down by its health
            self.verdict = False

    def set_health(self, up: bool) -> None:
        """A health verdict (active check, passive ejection or readmission)."""
        self.verdict = up
        self.healthy = up and not self.disabled

    def set_disabled(self, disabled: bool) -> None:
        """An operator's decision: a disabled backend gets no new connections or requests
        (those in progress finish); enabling it gives it back to its health verdict."""
        self.disabled = disabled
        self.healthy = self.verdict and not disabled

    def __repr__(self) -> str:
        return f"Backend({self.key} weight={self.weight}{'' if self.healthy else ' down'})"


def parse_backend(text: str) -> Backend:
    """Parse ``"host:port [weight=N]"``; raise ValueError naming what is wrong."""
    parts = text.split()
    if not parts:
        raise ValueError("empty backend")
    address = parse_address(parts[0])
    weight = 1
    for option in parts[1:]:
        name, sep, value = option.partition("=")
        if name != "weight" or not sep:
            raise ValueError(f"unknown backend option {option!r}; expected weight=N")
        if not value.isdigit() or not 1 <= int(value) <= 10000:
            raise ValueError(f"weight {value!r} must be an integer from 1 to 10000")
        weight = int(value)
    if not address.is_unix and address.port == 0:
        raise ValueError(f"backend {parts[0]!r} needs a non-zero port")
    return Backend(address, weight)

"""Value types used in the TOML config: durations, sizes, addresses, CIDRs.

Each is an ``Annotated`` pydantic type whose validator turns the user's string into the
value the runtime needs, with an error message that says what was expected.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import BeforeValidator

from ..net.addr import Address, parse_address

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|s|m|h|d)")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """``"30s"``, ``"250ms"``, ``"1m30s"`` → seconds (float)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a duration string such as \"30s\" or \"250ms\", got {value!r}")
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{value!r} is not a duration; use a number with a unit: us, ms, s, m, h, d (\"30s\", \"1m30s\")")
    return total


_SIZE_UNITS = {
    "": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1024**3, "gib": 1024**3,
}


def parse_size(value: object) -> int:
    """``"10m"``, ``"512k"``, ``"1g"`` or a plain integer → bytes (binary units, as nginx)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        number = text.rstrip("kmgib")
        unit = text[len(number):]
        number = number.rstrip()
        if number.isdigit() and unit in _SIZE_UNITS:
            return int(number) * _SIZE_UNITS[unit]
    raise ValueError(f"{value!r} is not a size; use bytes or a number with k, m or g (\"10m\", \"10MiB\")")


def _to_address(value: object) -> Address:
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected an address string such as \"127.0.0.1:8080\", got {value!r}")
    return parse_address(value)


def _to_network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR string such as \"10.0.0.0/8\", got {value!r}")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR") from None


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
SocketAddress = Annotated[Address, BeforeValidator(_to_address)]
Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_to_network)]

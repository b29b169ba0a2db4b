"""nginx-style path rewrite (``rewrite ^/api/(.*)$ /$1``), sans-IO.

Built once per route from config text; :meth:`PathRewrite.apply` runs per request on the
raw request target. The regex is searched in the path only (query string excluded); on a
match the whole path becomes the replacement, with ``$1``..``$9`` (or ``\\1``..``\\9``)
replaced by the captures (``$0`` is the whole match; a group that took no part is
empty). The original query string is appended unless the replacement has its own ``?``
(a replacement ending in ``?`` drops the query). No match leaves the target untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .matchers import decode, quote

__all__ = ["PathRewrite"]

_LITERAL_RE = re.compile(r"[\x21-\x7e]*")  # printable ASCII, no space


def _parse_replacement(replacement: str, groups: int, pattern: str) -> tuple[str | int, ...]:
    """Split a replacement into literal text and capture numbers, checking every reference."""
    parts: list[str | int] = []
    literal: list[str] = []
    i, n = 0, len(replacement)
    while i < n:
        c = replacement[i]
        nxt = replacement[i + 1] if i + 1 < n else ""
        if c in "$\\" and nxt.isdigit() and nxt.isascii():
            number = int(nxt)
            if number > groups:
                raise ValueError(
                    f"rewrite replacement {quote(replacement)} refers to {c}{number} but the "
                    f"pattern {quote(pattern)} has {groups} capture group(s)"
                )
            if literal:
                parts.append("".join(literal))
                literal.clear()
            parts.append(number)
            i += 2
            continue
        if c == "$" and nxt and (nxt.isalpha() or nxt in "_{"):
            raise ValueError(
                f"rewrite replacement {quote(replacement)}: variables like '${nxt}…' are not "
                "supported, only captures $1..$9"
            )
        literal.append(c)
        i += 1
    if literal:
        parts.append("".join(literal))
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class PathRewrite:
    """``rewrite PATTERN REPLACEMENT``; equal when pattern and replacement are equal."""

    pattern: str
    replacement: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _parts: tuple[str | int, ...] = field(init=False, repr=False, compare=False)
    _own_query: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern, replacement = self.pattern, self.replacement
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("rewrite pattern is empty")
        if not isinstance(replacement, str) or not replacement:
            raise ValueError("rewrite replacement is empty")
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid rewrite regex {quote(pattern)}: {exc}") from None
        parts = _parse_replacement(replacement, regex.groups, pattern)
        if not _LITERAL_RE.fullmatch(replacement) or "#" in replacement:
            raise ValueError(
                f"rewrite replacement {quote(replacement)} may only contain printable ASCII without "
                "spaces or '#': percent-encode other characters"
            )
        first = parts[0]
        if isinstance(first, str) and not first.startswith("/"):
            raise ValueError(
                f"rewrite replacement {quote(replacement)} must start with '/' or a capture"
            )
        object.__setattr__(self, "_regex", regex)
        object.__setattr__(self, "_parts", parts)
        object.__setattr__(self, "_own_query", any(isinstance(p, str) and "?" in p for p in parts))

    def apply(self, target: bytes) -> bytes:
        """The rewritten request target, or ``target`` itself when the pattern does not match."""
        q = target.find(b"?")
        path = target if q < 0 else target[:q]
        m = self._regex.search(decode(path))
        if m is None:
            return target
        out = "".join(p if isinstance(p, str) else (m.group(p) or "") for p in self._parts)
        if not out.startswith("/"):
            out = "/" + out  # a capture-only replacement that captured no leading slash
        new = out.encode("utf-8", "surrogateescape")
        if self._own_query:
            return new[:-1] if new.endswith(b"?") else new
        return new if q < 0 else new + target[q:]

"""``basic_auth``: HTTP Basic authentication against htpasswd-style ``name:hash`` entries.

```toml
[filters.staff]
kind = "basic_auth"
realm = "staff"                 # default "restricted"
users = [
  "alice:$2y$10$...",           # bcrypt            (htpasswd -nbB alice PASSWORD)
  "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",   # SHA-1, base64 (htpasswd -nbs bob PASSWORD)
  "carol:$pbkdf2-sha256$600000$SALT$HASH",   # PBKDF2-HMAC-SHA256 (see below)
]
hide_credentials = true         # default: the upstream never sees Authorization
```

Hash formats:

- bcrypt ``$2a$`` / ``$2b$`` / ``$2y$`` (needs the ``bcrypt`` package);
- ``{SHA}`` + base64(SHA-1(password)) as ``htpasswd -s`` writes it (unsalted: prefer the others);
- ``$pbkdf2-sha256$ROUNDS$SALT$HASH``, passlib's format: SALT and HASH (32 bytes) in
  "adapted base64" (standard base64 with ``.`` for ``+``, no ``=`` padding). Make one with
  :func:`hash_pbkdf2_sha256` or passlib's ``pbkdf2_sha256.hash``.

A plain-text password (anything else) is refused at load ("store a hash"); so are MD5-crypt
(``$apr1$``, ``$1$``) and SHA-crypt (``$5$``, ``$6$``) hashes.

Missing or wrong credentials get ``401`` with ``WWW-Authenticate: Basic realm="…"``. Hashes
are compared in constant time, and an unknown user costs the same hash as a known one.
Checking bcrypt or PBKDF2 takes milliseconds on the event loop, so each verified
``Authorization`` value is remembered (LRU, :data:`CACHE_SIZE` entries): a returning client
costs a dict lookup. Refused values are remembered too, in a second LRU of the same bound,
so a client repeating wrong credentials does not cost a hash each time. An ``Authorization``
value over :data:`MAX_AUTHORIZATION` bytes is refused without a check. The user's name is
put in ``session.vars["remote_user"]``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, Field, field_validator

from ...config.model import Strict
from ..base import Filter, Headers
from ..registry import register

if TYPE_CHECKING:
    from ...http.session import Session

CACHE_SIZE = 1024
#: longer Authorization values are refused unchecked (and so never cached): a Basic value
#: of a real user is far shorter, and the caches stay within CACHE_SIZE * 2 KiB * 2
MAX_AUTHORIZATION = 2048
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_AB64 = re.compile(r"[./A-Za-z0-9]+")
_WEAK = ("$apr1$", "$1$", "$5$", "$6$", "{SSHA}", "$md5")


def _ab64_decode(text: str) -> bytes:
    if not _AB64.fullmatch(text):
        raise ValueError(f"{text!r} is not adapted base64")
    text = text.replace(".", "+")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _ab64_encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=").replace("+", ".")


def hash_pbkdf2_sha256(password: str, rounds: int = 600_000, salt: bytes | None = None) -> str:
    """``$pbkdf2-sha256$ROUNDS$SALT$HASH`` for ``password`` (passlib-compatible)."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, rounds)
    return f"$pbkdf2-sha256${rounds}${_ab64_encode(salt)}${_ab64_encode(digest)}"


class Verifier:
    """Checks a password against one stored hash."""

    __slots__ = ("check",)

    def __init__(self, stored: str) -> None:
        """Parse ``stored``; ValueError with the reason when it is not a supported hash."""
        if stored.startswith("$2"):
            if not _BCRYPT.fullmatch(stored):
                raise ValueError("malformed bcrypt hash (expected $2y$NN$ and 53 characters)")
            try:
                import bcrypt
            except ImportError:
                raise ValueError("bcrypt hashes need the bcrypt package (pip install bcrypt)") from None
            hashed = stored.encode("ascii")

            def check_bcrypt(password: bytes) -> bool:
                try:
                    return bcrypt.checkpw(password, hashed)
                except ValueError:  # bcrypt 5 refuses passwords over 72 bytes
                    return False

            self.check = check_bcrypt
        elif stored.startswith("{SHA}"):
            try:
                want = base64.b64decode(stored[5:], validate=True)
            except binascii.Error:
                want = b""
            if len(want) != 20:
                raise ValueError("malformed {SHA} hash (expected base64 of a 20-byte SHA-1 digest)")
            self.check = lambda password: hmac.compare_digest(hashlib.sha1(password).digest(), want)
        elif stored.startswith("$pbkdf2-sha256$"):
            parts = stored.split("$")
            try:
                if len(parts) != 5 or not parts[2].isdigit():
                    raise ValueError
                rounds, salt, digest = int(parts[2]), _ab64_decode(parts[3]), _ab64_decode(parts[4])
                if not 1 <= rounds <= 100_000_000 or not salt or len(digest) != 32:
                    raise ValueError
            except (ValueError, binascii.Error):
                raise ValueError("malformed $pbkdf2-sha256$ hash (expected $pbkdf2-sha256$ROUNDS$SALT$HASH)") from None
            self.check = lambda password: hmac.compare_digest(
                hashlib.pbkdf2_hmac("sha256", password, salt, rounds), digest
            )
        elif stored.startswith(_WEAK):
            scheme = "$" + stored.split("$")[1] + "$" if stored.startswith("$") else stored[: stored.find("}") + 1]
            raise ValueError(f"unsupported hash scheme {scheme} (weak); use bcrypt (htpasswd -B)")
        else:
            raise ValueError(
                "not a supported password hash: store a hash (bcrypt \"$2y$...\" from htpasswd -B, "
                "\"{SHA}...\" from htpasswd -s, or \"$pbkdf2-sha256$...\"), not the password itself"
            )


def _split_entry(entry: str) -> tuple[str, str]:
    name, sep, stored = entry.strip().partition(":")
    if not sep or not name:
        raise ValueError(f"{entry!r} is not a \"name:hash\" entry")
    return name, stored


def _check_entry(entry: str) -> str:
    name, stored = _split_entry(entry)
    try:
        Verifier(stored)
    except ValueError as exc:
        raise ValueError(f"user {name!r}: {exc}") from None
    return entry


def _check_realm(realm: str) -> str:
    if not realm or any(c in realm for c in '"\\') or any(ord(c) < 0x20 or ord(c) == 0x7F for c in realm):
        raise ValueError(f"realm {realm!r} must be non-empty, without quotes, backslashes or control characters")
    return realm


UserEntry = Annotated[str, AfterValidator(_check_entry)]


class _Lru:
    """A bounded LRU set of byte strings (oldest dropped when full)."""

    __slots__ = ("items", "size")

    def __init__(self, size: int) -> None:
        self.items: OrderedDict[bytes, str] = OrderedDict()
        self.size = size

    def get(self, key: bytes) -> str | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: bytes, value: str) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        if len(self.items) > self.size:
            self.items.popitem(last=False)


@register
class BasicAuthFilter(Filter):
    """Refuse requests without valid credentials (401) in ``request_filter``."""

    kind = "basic_auth"

    class Config(Strict):
        users: list[UserEntry] = Field(min_length=1)
        realm: Annotated[str, AfterValidator(_check_realm)] = "restricted"
        hide_credentials: bool = True

        @field_validator("users")
        @classmethod
        def _unique(cls, users: list[str]) -> list[str]:
            seen: set[str] = set()
            for entry in users:
                name = _split_entry(entry)[0]
                if name in seen:
                    raise ValueError(f"user {name!r} is listed twice")
                seen.add(name)
            return users

    def __init__(self, name: str, config: BasicAuthFilter.Config) -> None:
        super().__init__(name, config)
        self.users: dict[bytes, Verifier] = {}
        for entry in config.users:
            user, stored = _split_entry(entry)
            self.users[user.encode("utf-8")] = Verifier(stored)
        self.decoy = next(iter(self.users.values()))  # checked for unknown users: same cost
        self.hide = config.hide_credentials
        self.challenge = [
            (b"www-authenticate", b'Basic realm="%s", charset="UTF-8"' % config.realm.encode("utf-8")),
            (b"cache-control", b"no-store"),
        ]
        self.verified = _Lru(CACHE_SIZE)
        self.refused = _Lru(CACHE_SIZE)

    def authenticate(self, authorization: bytes | None) -> str | None:
        """The user name for an ``Authorization`` value, or None."""
        if authorization is None or len(authorization) > MAX_AUTHORIZATION:
            return None
        user = self.verified.get(authorization)
        if user is not None:
            return user
        if self.refused.get(authorization) is not None:
            return None
        user = self.verify(authorization)
        if user is None:
            self.refused.put(authorization, "")
        else:
            self.verified.put(authorization, user)
        return user

    def cached(self, authorization: bytes) -> tuple[bool, str | None]:
        """(known, user) from the caches alone: no hashing. Unknown when not seen yet."""
        if len(authorization) > MAX_AUTHORIZATION:
            return True, None
        user = self.verified.get(authorization)
        if user is not None:
            return True, user
        return self.refused.get(authorization) is not None, None

    def remember(self, authorization: bytes, user: str | None) -> None:
        """Cache a verdict of :meth:`verify` (on the loop's thread: the caches are not locked)."""
        (self.verified if user is not None else self.refused).put(authorization, user or "")

    def verify(self, authorization: bytes) -> str | None:
        """Check the credentials against the stored hash (slow by design; no cache; safe to
        run in a worker thread: bcrypt and PBKDF2 release the GIL)."""
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"basic":
            return None
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except binascii.Error:
            return None
        name, sep, password = decoded.partition(b":")
        if not sep:
            return None
        verifier = self.users.get(name)
        ok = (verifier or self.decoy).check(password)
        if not ok or verifier is None:
            return None
        return name.decode("utf-8", "replace")

    def request_filter(self, session: Session) -> bool:
        user = self.authenticate(session.header(b"authorization"))
        if user is None:
            session.respond(401, b"401 Unauthorized\n", self.challenge)
            return True
        session.vars["remote_user"] = user
        return False

    def upstream_request_filter(self, session: Session, headers: Headers) -> None:
        if self.hide:
            for pair in headers:
                if pair[0] == b"authorization":
                    headers[:] = [h for h in headers if h[0] != b"authorization"]
                    break

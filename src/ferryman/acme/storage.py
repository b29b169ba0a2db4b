"""Where ACME state lives on disk, with safe permissions (directories 0700, files 0600).

Layout under ``storage``::

    accounts/HOST-HASH/key.pem       the account key (EC P-256), one per directory URL
    accounts/HOST-HASH/account.json  the account URL the server gave it
    certificates/NAME.pem            an issued certificate: its key, then the chain
    certificates/NAME.placeholder.pem  self-signed, served until the first issuance
    challenges/http-01/TOKEN         key authorizations being validated (any worker serves them)
    challenges/tls-alpn-01/HOST.pem  TLS-ALPN-01 validation certificates

Every file is written to a temporary name, synced, then renamed over the old one: a reader
(another worker) sees the old file or the new one, never a mixture. No asyncio here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import certs
from .certs import CertInfo

log = logging.getLogger(__name__)

__all__ = ["Storage", "check_storage", "safe_name"]

_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
_HOST = re.compile(r"[a-z0-9-](?:[a-z0-9.-]{0,251}[a-z0-9])?")
HTTP01, TLS_ALPN01 = "http-01", "tls-alpn-01"


def safe_name(name: str) -> str:
    """``name`` if it can be a file name here (letters, digits, ``_.-``, not leading ``.``)."""
    if not _SAFE.fullmatch(name) or ".." in name:
        raise ValueError(f"{name!r} cannot name a file: use letters, digits, '_', '.' and '-' (not leading '.')")
    return name


def valid_token(token: str) -> bool:
    return _TOKEN.fullmatch(token) is not None


def valid_host(name: str) -> bool:
    return _HOST.fullmatch(name) is not None and ".." not in name


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _private_dir(path: Path, *, ours: bool = True) -> None:
    """Create ``path`` 0700. An existing folder of ours is tightened to 0700; the configured
    root, which may be shared (e.g. /etc/ferryman), keeps its mode with a warning when
    others can enter it (what ferryman writes inside is 0700 and 0600 anyway)."""
    try:
        path.mkdir(mode=0o700, parents=True)
        path.chmod(0o700)  # mkdir's mode is masked by the umask
        return
    except FileExistsError:
        pass
    if path.stat().st_mode & 0o077:
        if ours:
            path.chmod(0o700)
        else:
            log.warning("acme: storage %s can be entered by other users; its folders and keys are private, but 0700 is safer", path)


def check_storage(root: str) -> str | None:
    """Why ``root`` cannot hold ACME state (for ``ferryman check``), or None. Creates nothing."""
    path = Path(root)
    if not path.is_absolute():
        return f"{root!r} must be an absolute path"
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    return None


class Storage:
    """One ``storage`` directory (created 0700 on first use; its sub-folders always 0700)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def prepare(self) -> None:
        _private_dir(self.root, ours=False)
        for sub in ("accounts", "certificates", f"challenges/{HTTP01}", f"challenges/{TLS_ALPN01}"):
            _private_dir(self.root / sub)

    # certificates --------------------------------------------------------------------------
    def certificate_path(self, name: str) -> Path:
        return self.root / "certificates" / f"{safe_name(name)}.pem"

    def placeholder_path(self, name: str) -> Path:
        return self.root / "certificates" / f"{safe_name(name)}.placeholder.pem"

    def issued(self, name: str) -> CertInfo | None:
        """The stored certificate of ``name`` (None when none was issued or it is unreadable)."""
        path = self.certificate_path(name)
        try:
            return certs.inspect(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("acme: stored certificate %s is unreadable (%s); it will be issued again", path, exc)
            return None

    def save_certificate(self, name: str, pem: bytes) -> Path:
        self.prepare()
        path = self.certificate_path(name)
        write_private(path, pem)
        return path

    def serving_file(self, name: str, names: tuple[str, ...]) -> str:
        """The file to serve for ``name`` now: the issued certificate, else a placeholder for
        ``names`` (made when missing, expiring or for other names)."""
        if self.issued(name) is not None:
            return str(self.certificate_path(name))
        path = self.placeholder_path(name)
        try:
            info = certs.inspect(path.read_bytes())
            fresh = info.not_after - datetime.now(timezone.utc) > timedelta(days=1)
            if info.placeholder and set(info.names) == set(names) and fresh:
                return str(path)
        except (OSError, ValueError):
            pass
        self.prepare()
        write_private(path, certs.placeholder(names))
        return str(path)

    # accounts ------------------------------------------------------------------------------
    def account_dir(self, directory: str) -> Path:
        host = urlsplit(directory).hostname or "acme"
        digest = hashlib.sha256(directory.encode()).hexdigest()[:12]
        return self.root / "accounts" / f"{safe_name(host)}-{digest}"

    def account_key(self, directory: str) -> ec.EllipticCurvePrivateKey:
        """The account key for ``directory`` (made and stored at first use)."""
        folder = self.account_dir(directory)
        path = folder / "key.pem"
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            self.prepare()
            _private_dir(folder)
            key = ec.generate_private_key(ec.SECP256R1())
            write_private(path, certs.key_pem(key))
            return key
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"account key {path} is not an EC key")
        return key

    def account(self, directory: str) -> dict[str, Any]:
        try:
            data = json.loads((self.account_dir(directory) / "account.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_account(self, directory: str, data: dict[str, Any]) -> None:
        folder = self.account_dir(directory)
        _private_dir(folder)
        write_private(folder / "account.json", json.dumps(data, indent=2).encode())

    # challenges ----------------------------------------------------------------------------
    def http01_path(self, token: str) -> Path:
        if not valid_token(token):
            raise ValueError(f"invalid HTTP-01 token {token!r}")
        return self.root / "challenges" / HTTP01 / token

    def tls_alpn_path(self, host: str) -> Path:
        if not valid_host(host):
            raise ValueError(f"invalid TLS-ALPN-01 host {host!r}")
        return self.root / "challenges" / TLS_ALPN01 / f"{host}.pem"

    def publish(self, path: Path, data: bytes) -> None:
        self.prepare()
        write_private(path, data)

    @staticmethod
    def withdraw(path: Path) -> None:
        path.unlink(missing_ok=True)

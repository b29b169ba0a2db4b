"""The web UI's files (``ferryman/admin/ui/``, shipped as package data), served by the
admin listener at ``/`` and ``/ui/NAME``.

The files are read once, when the admin API is built, and served from memory with their
content type, an ETag and ``Cache-Control: no-cache``: a browser revalidates them on each
load (a 304 costs nothing) and so never runs a stale UI after an upgrade. The page's
Content-Security-Policy allows nothing but this origin: no CDN, no external fetch, no
inline script. The files hold no data, so they are served without the token; every data
endpoint requires it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

__all__ = ["Asset", "UiFiles", "CSP"]

TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
}
CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
INDEX = "index.html"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    etag: bytes
    headers: tuple[tuple[bytes, bytes], ...]


def _asset(name: str, body: bytes) -> Asset:
    etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'
    suffix = name[name.rfind("."):] if "." in name else ""
    headers = [
        (b"content-type", TYPES.get(suffix, b"application/octet-stream")),
        (b"cache-control", b"no-cache"),
        (b"etag", etag),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]
    if suffix == ".html":
        headers += [(b"content-security-policy", CSP), (b"x-frame-options", b"DENY")]
    return Asset(body, etag, tuple(headers))


class UiFiles:
    """Every file of the UI folder by URL path; ``/`` and ``/ui/`` are the page itself."""

    def __init__(self, package: str = "ferryman.admin", folder: str = "ui") -> None:
        root = resources.files(package).joinpath(folder)
        self.assets: dict[bytes, Asset] = {}
        for entry in root.iterdir():
            if entry.is_file() and not entry.name.startswith("."):
                self.assets[f"/ui/{entry.name}".encode()] = _asset(entry.name, entry.read_bytes())
        index = self.assets.get(f"/ui/{INDEX}".encode())
        if index is None:
            raise FileNotFoundError(f"the admin UI has no {INDEX} in {package}/{folder} (is the package data installed?)")
        for alias in (b"/", b"/ui", b"/ui/"):
            self.assets[alias] = index

    def find(self, path: bytes) -> Asset | None:
        return self.assets.get(path)

    @staticmethod
    def fresh(asset: Asset, if_none_match: bytes | None) -> bool:
        """True when the client's copy (``If-None-Match``) is this version: answer 304."""
        if not if_none_match:
            return False
        tags = [t.strip().removeprefix(b"W/") for t in if_none_match.split(b",")]
        return asset.etag in tags or b"*" in tags

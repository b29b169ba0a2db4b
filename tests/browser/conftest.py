"""Browser tests of the admin web UI: a real ``ferryman run`` process in front of real
origins, driven by headless Chromium through Playwright.

Chromium is part of the test set-up: if it is missing the tests fail, they never skip.
Each test gets a fresh browser profile (user-data-dir) in its tmp_path.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from support.process import LOCAL, Running, free_port, http_get

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TOKEN = "ui-test-token"
USER, PASSWORD = "ops", "ops-secret"  # an [admin] user: HTTP Basic instead of the token
USER_HASH = "$pbkdf2-sha256$1000$MDEyMzQ1Njc4OWFiY2RlZg$..sSXOQvlvzODycSc6GAGIcbeKpiQNbp5fLZMu.m23U"
TIMEOUT_MS = 15_000  # Playwright's waits (expect, clicks): bounded, and generous for 2 busy cores


class NamedOrigin:
    """A threaded HTTP origin answering ``origin NAME`` and counting the requests it got."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with lock:
                    origin.hits += 1
                body = f"origin {origin.name}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer((LOCAL, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.address = f"{LOCAL}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def site_config(admin: int, web: int, a: NamedOrigin, b: NamedOrigin, refused: int, extra: str = "") -> str:
    return f"""[server]
workers = 1
grace_period = "1s"

[admin]
addr = "{LOCAL}:{admin}"
token = "{TOKEN}"
users = ["{USER}:{USER_HASH}"]

[listeners.web]
addr = "{LOCAL}:{web}"
protocol = "http"
routes = ["ping", "broken", "app"]

[routes.ping]
path = "=/ping"
filters = ["pong"]

[routes.broken]
path = "/broken"
upstream = "gone"

[routes.app]
upstream = "app"

[filters.pong]
kind = "mock"
body = "pong"

[upstreams.app]
backends = ["{a.address}", "{b.address}"]

[upstreams.gone]
backends = ["{LOCAL}:{refused}"]
connect_timeout = "1s"
{extra}"""


@dataclass
class Site:
    """A running ferryman with an admin listener, a web listener and two origins."""

    proc: Running
    path: Path
    admin: int
    web: int
    a: NamedOrigin
    b: NamedOrigin
    extra: dict[str, Any] = field(default_factory=dict)
    token: str = TOKEN

    @property
    def url(self) -> str:
        return f"http://{LOCAL}:{self.admin}/"

    def api(self, method: str, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
        """Call the admin API directly (to check what the UI did)."""
        request = urllib.request.Request(f"http://{LOCAL}:{self.admin}{path}", method=method, data=b"" if method == "POST" else None)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())

    def get(self, path: str) -> tuple[int, bytes]:
        """A request through the proxy."""
        return http_get(self.web, path)

    def backend(self, upstream: str, address: str) -> dict[str, Any]:
        status, body = self.api("GET", "/api/v1/upstreams")
        assert status == 200, body
        return next(b for b in body["upstreams"][upstream]["backends"] if b["address"] == address)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    a, b = NamedOrigin("a"), NamedOrigin("b")
    admin, web, refused = free_port(), free_port(), free_port()  # nothing listens on `refused`
    path = tmp_path / "ferryman.toml"
    path.write_text(site_config(admin, web, a, b, refused))
    proc = Running(path)
    try:
        proc.wait_ready("web")
        yield Site(proc, path, admin, web, a, b, {"refused": refused})
    finally:
        proc.close()
        a.close()
        b.close()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    """A page in a fresh Chromium profile. No Chromium: the test fails here."""
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: the browser tests need Chromium (the test set-up installs it)"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1360, "height": 900},
        )
        try:
            context.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()


@pytest.fixture
def ui(page: Page, site: Site) -> Page:
    """The page, signed in to ``site``'s admin UI."""
    page.goto(site.url)
    page.fill("#token", TOKEN)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#generation")).to_have_text("generation 1")
    return page

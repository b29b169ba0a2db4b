"""Browser tests of the admin web UI: a real ``ferryman run`` process in front of real
origins, driven by headless Chromium through Playwright.

Chromium is part of the test set-up: if it is missing the tests fail, they never skip.
Each test gets a fresh browser profile (user-data-dir) in its tmp_path.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from support.process import LOCAL, HttpOrigin, Running, free_port, http_get

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TOKEN = "ui-test-token"
USER, PASSWORD = "ops", "ops-secret"  # an [admin] user: HTTP Basic instead of the token
USER_HASH = "$pbkdf2-sha256$1000$MDEyMzQ1Njc4OWFiY2RlZg$..sSXOQvlvzODycSc6GAGIcbeKpiQNbp5fLZMu.m23U"
TIMEOUT_MS = 15_000  # Playwright's waits (expect, clicks): bounded, and generous for 2 busy cores


def named_origin(name: str) -> HttpOrigin:
    """An origin answering ``origin NAME`` over kept-alive connections, counting its requests."""
    return HttpOrigin(f"origin {name}", keep_alive=True)


def site_config(admin: int, web: int, a: HttpOrigin, b: HttpOrigin, refused: int, extra: str = "") -> str:
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
backends = ["{a.addr}", "{b.addr}"]

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
    a: HttpOrigin
    b: HttpOrigin
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
    a, b = named_origin("a"), named_origin("b")
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

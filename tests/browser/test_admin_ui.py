"""The admin web UI, clicked through in headless Chromium against a running ferryman:
sign-in, live stats, backend drain/disable/enable, config validation, apply, rollback and
the reload history."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from playwright.sync_api import Page, expect

from support.process import wait_until
from tests.browser.conftest import PASSWORD, USER

AUTH_KEY = "ferryman.admin.authorization"  # the Authorization value the tab keeps


@contextmanager
def traffic(send: Callable[[], object], limit: float = 60.0) -> Iterator[None]:
    """Requests sent one after another on a thread while the block runs (at most ``limit`` s)."""
    stop = threading.Event()

    def run() -> None:
        deadline = time.monotonic() + limit
        while not stop.is_set() and time.monotonic() < deadline:
            send()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=15)


POSITIVE = re.compile(r"^(?!0$)(?!-)[0-9.e+-]+$")  # a data-value above zero
# (the page's CSP has no 'unsafe-eval': Playwright's wait_for_function cannot run there)


def test_the_ui_asks_for_the_token_once_and_refuses_a_wrong_one(page: Page, site) -> None:
    page.goto(site.url)
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.locator("#tabs")).to_be_hidden()

    page.fill("#token", "not-the-token")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("refused")
    expect(page.locator("#view-overview")).to_be_hidden()
    assert page.evaluate(f"sessionStorage.getItem({AUTH_KEY!r})") is None

    page.fill("#token", site.token)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#view-overview")).to_be_visible()
    expect(page.locator("#generation")).to_have_text("generation 1")
    assert page.evaluate(f"sessionStorage.getItem({AUTH_KEY!r})") == f"Bearer {site.token}"

    page.reload()  # asked once: the tab keeps it
    expect(page.locator("#generation")).to_have_text("generation 1")
    expect(page.locator("#login-form")).to_be_hidden()

    page.click("#logout")
    expect(page.locator("#login-form")).to_be_visible()
    assert page.evaluate(f"sessionStorage.getItem({AUTH_KEY!r})") is None
    assert site.api("GET", "/api/v1/stats", token=None)[0] == 401  # the data never goes without it
    assert site.api("GET", "/api/v1/stats", token="not-the-token")[0] == 401


def test_an_admin_user_signs_in_with_a_password_and_changes_are_logged_with_the_name(page: Page, site) -> None:
    page.goto(site.url)
    page.fill("#token", f"{USER}:wrong-password")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("refused")

    page.fill("#token", f"{USER}:{PASSWORD}")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#view-overview")).to_be_visible()
    assert page.evaluate(f"sessionStorage.getItem({AUTH_KEY!r})").startswith("Basic ")
    page.click("#tabs a[data-tab=upstreams]")
    row = page.locator(f'[data-upstream="app"] tr[data-backend="{site.b.addr}"]')
    row.locator("button[data-action=disable]").click()
    expect(row).to_have_attribute("data-state", "disabled")
    site.proc.wait_for(rf"admin: \S+ \(user {USER}\): disable backend {re.escape(site.b.addr)}")
    row.locator("button[data-action=enable]").click()
    expect(row).to_have_attribute("data-state", "healthy")


def test_the_request_and_error_rates_rise_with_traffic(ui: Page, site) -> None:
    expect(ui.locator("#kpi-rps")).to_have_attribute("data-value", "0")  # a first sample, before any traffic
    with traffic(lambda: (site.get("/"), site.get("/broken"))):
        expect(ui.locator("#kpi-rps")).to_have_attribute("data-value", POSITIVE)
        expect(ui.locator("#kpi-eps")).to_have_attribute("data-value", POSITIVE)  # /broken: 502, its upstream refuses
        expect(ui.locator('#stats-table tr[data-name="app"] td[data-field=rps]')).not_to_have_text(re.compile(r"^(0|–)$"))
        expect(ui.locator('#stats-table tr[data-name="broken"] td[data-field=eps]')).not_to_have_text(re.compile(r"^(0|–)$"))
        expect(ui.locator('#chart-rps polyline[data-series="app"]')).to_have_count(1)
        ui.click("#group button[data-group=upstreams]")
        expect(ui.locator("#stats-name")).to_have_text("Upstream")
        expect(ui.locator('#stats-table tr[data-name="gone"] td[data-field=eps]')).not_to_have_text(re.compile(r"^(0|–)$"))
    expect(ui.locator("#kpi-p95")).not_to_have_text("–")
    assert site.a.hits + site.b.hits > 0


def test_a_backend_is_drained_disabled_and_enabled_with_the_buttons(ui: Page, site) -> None:
    ui.click("#tabs a[data-tab=upstreams]")
    row_a = ui.locator(f'[data-upstream="app"] tr[data-backend="{site.a.addr}"]')
    row_b = ui.locator(f'[data-upstream="app"] tr[data-backend="{site.b.addr}"]')
    expect(row_b).to_have_attribute("data-state", "healthy")

    row_b.locator("button[data-action=drain]").click()
    expect(row_b).to_have_attribute("data-state", "disabled")
    assert site.backend("app", site.b.addr)["disabled"] is True
    before = site.b.hits
    for _ in range(8):
        assert site.get("/")[1] == b"origin a"
    assert site.b.hits == before  # no new requests

    row_b.locator("button[data-action=enable]").click()
    expect(row_b).to_have_attribute("data-state", "healthy")
    assert site.backend("app", site.b.addr)["disabled"] is False
    answers = {site.get("/")[1] for _ in range(6)}
    assert answers == {b"origin a", b"origin b"}

    row_a.locator("button[data-action=disable]").click()
    expect(row_a).to_have_attribute("data-state", "disabled")
    assert site.backend("app", site.a.addr)["disabled"] is True
    before = site.a.hits
    assert {site.get("/")[1] for _ in range(6)} == {b"origin b"}
    assert site.a.hits == before
    row_a.locator("button[data-action=enable]").click()
    expect(row_a).to_have_attribute("data-state", "healthy")
    assert site.backend("app", site.a.addr)["disabled"] is False


def test_a_config_with_errors_shows_them_inline_with_their_paths_and_applies_nothing(ui: Page, site) -> None:
    ui.click("#tabs a[data-tab=config]")
    editor = ui.locator("#editor")
    expect(editor).to_have_value(site.path.read_text())
    original = site.path.read_text()
    broken = original.replace('body = "pong"', 'body = "pong"\ncolour = "red"').replace(f":{site.web}\"", ':99999"')
    editor.fill(broken)

    ui.click("#cfg-apply")
    expect(ui.locator("#cfg-result")).to_contain_text("Not applied")
    colour = ui.locator('#cfg-errors li[data-path="filters.pong.colour"]')
    expect(colour).to_contain_text("unknown key")
    expect(colour.locator(".line")).to_have_text(re.compile(r"line \d+"))
    expect(ui.locator('#cfg-errors li[data-path="listeners.web.addr"]')).to_contain_text("99999")
    colour.click()  # points at the line in the editor
    assert ui.evaluate("(e => e.value.slice(e.selectionStart, e.selectionEnd))(document.getElementById('editor'))") == 'colour = "red"'

    assert site.path.read_text() == original  # nothing written, nothing reloaded
    assert site.api("GET", "/api/v1/status")[1]["generation"] == 1
    assert site.get("/ping")[1] == b"pong"
    ui.click("#cfg-validate")  # the same errors, without applying
    expect(ui.locator("#cfg-errors li")).to_have_count(2)
    expect(ui.locator("#generation")).to_have_text("generation 1")


def test_apply_rollback_and_the_history(ui: Page, site) -> None:
    ui.click("#tabs a[data-tab=config]")
    editor = ui.locator("#editor")
    expect(editor).to_have_value(site.path.read_text())
    ui.click("#cfg-rollback")  # the API answers 409: the page says why
    expect(ui.locator("#cfg-result")).to_contain_text("no previous config to roll back to")

    assert site.get("/hello")[1] != b"hello, generation 2"
    text = editor.input_value().replace('routes = ["ping", "broken", "app"]', 'routes = ["hello", "ping", "broken", "app"]')
    text += '\n[routes.hello]\npath = "=/hello"\nfilters = ["hello"]\n\n[filters.hello]\nkind = "mock"\nbody = "hello, generation 2"\n'
    editor.fill(text)
    ui.click("#cfg-apply")
    expect(ui.locator("#cfg-result")).to_have_text("Applied: now serving generation 2.")
    expect(ui.locator("#generation")).to_have_text("generation 2")
    assert site.get("/hello") == (200, b"hello, generation 2")

    ui.click("#tabs a[data-tab=history]")
    newest = ui.locator("#history-table tbody tr").first
    expect(newest).to_have_attribute("data-action", "apply")
    expect(newest).to_have_attribute("data-ok", "true")
    expect(newest.locator("td").nth(1)).to_have_text("2")
    expect(newest).to_contain_text("127.0.0.1 (token)")
    expect(ui.locator('#history-table tr[data-action="start"]')).to_have_count(1)

    ui.click("#tabs a[data-tab=config]")
    ui.click("#cfg-rollback")
    expect(ui.locator("#cfg-result")).to_have_text("Rolled back: now serving generation 3.")
    expect(editor).not_to_have_value(re.compile(r"routes\.hello"))
    assert site.get("/hello")[1] != b"hello, generation 2"
    ui.click("#tabs a[data-tab=history]")
    newest = ui.locator("#history-table tbody tr").first
    expect(newest).to_have_attribute("data-action", "rollback")
    expect(newest.locator("td").nth(1)).to_have_text("3")
    expect(ui.locator("#history-table tbody tr")).to_have_count(3)


def test_a_reload_by_signal_is_in_the_history_and_a_dead_api_is_shown(ui: Page, site) -> None:
    ui.click("#tabs a[data-tab=history]")
    expect(ui.locator("#history-table tbody tr")).to_have_count(1)
    good = site.path.read_text()
    site.path.write_text(good.replace('body = "pong"', 'body = "pong"\ncolour = "red"'))
    os.kill(site.proc.pid, signal.SIGHUP)
    newest = ui.locator("#history-table tbody tr").first
    expect(newest).to_have_attribute("data-action", "signal")
    expect(newest).to_have_attribute("data-ok", "false")
    expect(newest).to_contain_text("filters.pong.colour: unknown key")
    assert site.get("/ping")[1] == b"pong"

    site.path.write_text(good.replace('body = "pong"', 'body = "pong again"'))
    os.kill(site.proc.pid, signal.SIGHUP)
    expect(ui.locator("#history-table tbody tr")).to_have_count(3)
    expect(newest).to_have_attribute("data-ok", "true")
    expect(ui.locator("#generation")).to_have_text("generation 2")
    wait_until(lambda: site.get("/ping")[1] == b"pong again", 10, "the reloaded config")

    assert site.proc.stop(10) == 0  # the admin API goes away: the page says so
    expect(ui.locator("#banner")).to_contain_text("did not answer")
    expect(ui.locator("#live")).to_have_class(re.compile(r"\bbad\b"))

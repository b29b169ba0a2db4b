"""Screenshots of the admin web UI for the docs (docs/screenshots/*.png).

Runs ``examples/ferryman.toml`` (its addresses moved to free loopback ports) as
``ferryman run``, sends it a steady mix of traffic (with a short outage of the demo backend,
so the error chart has something to show), then drives headless Chromium through every
tab: sign-in, overview, upstreams, config (with a validation error shown inline) and
history (after an apply, a refused apply and a rollback).

    python scripts/screenshots.py [--out docs/screenshots] [--seconds 20]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "ferryman.toml"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1360, "height": 860}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_config(directory: Path) -> tuple[Path, dict[int, int], str]:
    """The example with every 127.0.0.1 port replaced by a free one; its admin token."""
    text = EXAMPLE.read_text()
    ports = {int(p): free_port() for p in sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", text)))}
    text = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports[int(m.group(1))]}", text)
    token = re.search(r'^token = "([^"]+)"', text, re.M)
    assert token, "the example config has no [admin] token"
    path = directory / "ferryman.toml"
    path.write_text(text)
    return path, ports, token.group(1)


def request(port: int, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


class Traffic(threading.Thread):
    """A steady mix of requests through the example's HTTP listener until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        auth = "Basic " + base64.b64encode(b"demo:demo").decode()
        self.mix = [
            ("/", {}), ("/", {}), ("/echo", {}), ("/ping", {}), ("/", {"x-canary": "1"}),
            ("/api/echo", {"authorization": auth}), ("/", {"host": "docs.localhost"}), ("/bytes/20000", {}),
        ]

    def run(self) -> None:
        index = 0
        while not self.stop.is_set():
            path, headers = self.mix[index % len(self.mix)]
            index += 1
            try:
                request(self.port, "GET", path, headers=headers)
            except OSError:
                pass
            self.stop.wait(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--seconds", type=float, default=20.0, help="traffic before the overview is taken")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        config, ports, token = local_config(Path(tmp))
        admin, web, demo = ports[9180], ports[8082], ports[8081]
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        proc = subprocess.Popen([sys.executable, "-m", "ferryman", "run", "-c", str(config)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        traffic = Traffic(web)
        try:
            wait_for(lambda: request(admin, "GET", "/api/v1/status", headers={"authorization": f"Bearer {token}"})[0] == 200, 20, "ferryman")
            traffic.start()
            with sync_playwright() as pw:
                context = pw.chromium.launch_persistent_context(
                    tempfile.mkdtemp(dir=tmp), executable_path=CHROMIUM, args=ARGS, headless=True, viewport=VIEWPORT,
                )
                try:
                    shoot(context.new_page(), args, admin, demo, token)
                finally:
                    context.close()
        finally:
            traffic.stop.set()
            if traffic.is_alive():
                traffic.join(timeout=10)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for png in sorted(args.out.glob("*.png")):
        print(png.relative_to(REPO) if png.is_relative_to(REPO) else png)
    return 0


def shoot(page: Page, args: argparse.Namespace, admin: int, demo: int, token: str) -> None:
    base = f"http://127.0.0.1:{admin}"
    auth = {"authorization": f"Bearer {token}"}
    page.goto(base + "/")
    expect(page.locator("#login-form")).to_be_visible()
    page.screenshot(path=args.out / "login.png")

    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#view-overview")).to_be_visible()
    half = args.seconds / 2
    page.wait_for_timeout(half * 1000)
    # a short outage of the demo backend: requests answer 502 for a few seconds
    request(admin, "POST", f"/api/v1/upstreams/demo/backends/127.0.0.1:{demo}/disable", headers=auth)
    page.wait_for_timeout(3000)
    request(admin, "POST", f"/api/v1/upstreams/demo/backends/127.0.0.1:{demo}/enable", headers=auth)
    page.wait_for_timeout(half * 1000)
    page.screenshot(path=args.out / "overview.png", full_page=True)

    page.click("#tabs a[data-tab=upstreams]")
    row = page.locator(f'[data-upstream="demo-canary"] tr[data-backend="127.0.0.1:{demo}"]')
    row.locator("button[data-action=drain]").click()
    expect(row).to_have_attribute("data-state", "disabled")
    page.screenshot(path=args.out / "upstreams.png", full_page=True)
    row.locator("button[data-action=enable]").click()
    expect(row).to_have_attribute("data-state", "healthy")

    page.click("#tabs a[data-tab=config]")
    editor = page.locator("#editor")
    expect(editor).to_have_value(re.compile(r"\[filters\.pong\]"))
    text = editor.input_value()
    editor.fill(text.replace('body = "pong\\n"', 'body = "pong, generation 2\\n"'))
    page.click("#cfg-apply")
    expect(page.locator("#cfg-result")).to_contain_text("Applied")
    broken = editor.input_value().replace('kind = "mock"', 'kind = "mock"\ncolour = "red"').replace('rate = "100/s"', 'rate = "100 per second"')
    editor.fill(broken)
    page.click("#cfg-apply")
    expect(page.locator("#cfg-errors li")).to_have_count(2)
    page.locator("#cfg-errors li").first.click()
    page.screenshot(path=args.out / "config.png")

    page.click("#cfg-rollback")
    expect(page.locator("#cfg-result")).to_contain_text("Rolled back")
    # a client that does not validate first (curl): refused, and in the history
    request(admin, "POST", "/api/v1/config/apply", headers=auth, body=broken.encode())
    page.click("#tabs a[data-tab=history]")
    expect(page.locator("#history-table tbody tr")).to_have_count(4)
    page.screenshot(path=args.out / "history.png", full_page=True)


if __name__ == "__main__":
    sys.exit(main())

"""Active HTTP health checks against real origins on loopback and Unix sockets, and the
checker's hand-off points (restart_rise, replace_backends)."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from ferryman.config.model import HealthCheckConfig as HealthCheckModel
from ferryman.upstream.backend import Backend
from ferryman.upstream.health import (
    CheckFailed,
    HealthCheckConfig,
    HealthChecker,
    http_check,
    make_check,
    tcp_check,
)

LOGGER = "ferryman.upstream.health"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"


class HttpOrigin:
    """Origin handler: records each request head, then sends ``response`` and closes.

    ``response`` None: answer nothing and wait until the client closes (recorded in
    ``eofs``); ``hold`` "after": send ``response`` but keep the connection open until
    ``release`` is set; "before": answer only once ``release`` is set.
    """

    def __init__(self, response: bytes | None = OK, *, hold: str = "") -> None:
        self.response = response
        self.hold = hold
        self.requests: list[bytes] = []
        self.eofs = 0
        self.release = asyncio.Event()

    async def __call__(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await loop.sock_recv(conn, 65536)
            if not chunk:
                return
            data += chunk
        self.requests.append(data)
        if self.response is None:
            while await loop.sock_recv(conn, 65536):
                pass
            self.eofs += 1
            return
        if self.hold == "before":
            await self.release.wait()
        await loop.sock_sendall(conn, self.response)
        if self.hold == "after":
            await self.release.wait()

    def head(self, index: int = -1) -> tuple[str, dict[str, str]]:
        """The request line and headers (lowercase names) of one recorded request."""
        lines = self.requests[index].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.lower()] = value.strip()
        return lines[0], headers


async def until(predicate, what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def failure(check, backend: Backend) -> str:
    with pytest.raises(CheckFailed) as info:
        await check(backend)
    return str(info.value)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


# one check ---------------------------------------------------------------------------------------
async def test_passes_on_200_and_sends_the_default_head(net) -> None:
    handler = HttpOrigin()
    origin = await net.origin(handler)
    await http_check("/healthz")(Backend(origin.address))
    line, headers = handler.head()
    assert line == "GET /healthz HTTP/1.1"
    assert headers == {
        "host": str(origin.address),
        "user-agent": "ferryman-health-check",
        "connection": "close",
    }


async def test_redirect_passes_and_interim_responses_are_skipped(net) -> None:
    origin = await net.origin(HttpOrigin(b"HTTP/1.1 301 Moved\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n"))
    await http_check()(Backend(origin.address))
    origin = await net.origin(HttpOrigin(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\n\r\n"))
    assert await failure(http_check(), Backend(origin.address)) == "status 503, expected 2xx/3xx"


async def test_fails_on_503_with_the_reason_in_state_and_log(net, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    origin = await net.origin(HttpOrigin(UNAVAILABLE))
    backend = Backend(origin.address)
    assert await failure(http_check("/"), backend) == "status 503, expected 2xx/3xx"

    checker = HealthChecker([backend], HealthCheckConfig(fall=1), check=http_check("/"))
    await checker.run_once()
    assert not backend.healthy
    assert checker.state(backend).last_error == "status 503, expected 2xx/3xx"
    assert messages(caplog) == [
        f"backend {origin.address} down: status 503, expected 2xx/3xx (1 consecutive failures)"
    ]


async def test_expect_status(net) -> None:
    ok = await net.origin(HttpOrigin(OK))
    assert await failure(http_check(expect_status=[204]), Backend(ok.address)) == "status 200, expected 204"
    assert await failure(http_check(expect_status=(204, 418)), Backend(ok.address)) == "status 200, expected 204/418"
    teapot = await net.origin(HttpOrigin(b"HTTP/1.1 418 Teapot\r\nContent-Length: 0\r\n\r\n"))
    await http_check(expect_status=[204, 418])(Backend(teapot.address))
    assert await failure(http_check(), Backend(teapot.address)) == "status 418, expected 2xx/3xx"


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (b"garbage\r\n\r\n", "malformed response: invalid status line"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "malformed response: invalid status line"),
        (b"HTTP/1.1 200 OK\r\nContent-", "closed inside the response head"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed response: header line without colon"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed response: invalid status code"),
        (b"", "closed before a response"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n", "response head too large"),
    ],
    ids=["garbage", "not-http", "cut-short", "bad-header", "bad-status", "closed", "too-large"],
)
async def test_bad_responses_fail_with_a_precise_reason(net, response: bytes, reason: str) -> None:
    origin = await net.origin(HttpOrigin(response))
    assert await failure(http_check(), Backend(origin.address)) == reason


async def test_a_bad_body_after_a_good_head_does_not_matter(net) -> None:
    origin = await net.origin(HttpOrigin(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"))
    await http_check()(Backend(origin.address))


async def test_only_the_head_is_read(net) -> None:
    # A body announced as 1 GB and never sent: the check returns after the head and closes.
    handler = HttpOrigin(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\npartial", hold="after")
    origin = await net.origin(handler)
    await http_check()(Backend(origin.address))
    handler.release.set()


async def test_timeout_closes_the_connection(net) -> None:
    handler = HttpOrigin(None)  # never answers
    origin = await net.origin(handler)
    backend = Backend(origin.address)
    checker = HealthChecker([backend], HealthCheckConfig(timeout=0.05, fall=1), check=http_check())
    await checker.run_once()
    assert not backend.healthy
    assert checker.state(backend).last_error == "timed out after 0.05s"
    await until(lambda: handler.eofs == 1, "the check to close its connection")


async def test_refused_connection(net) -> None:
    backend = Backend(net.refused_address())
    checker = HealthChecker([backend], HealthCheckConfig(fall=1), check=http_check())
    await checker.run_once()
    assert checker.state(backend).last_error == "connection refused"


async def test_unix_socket(net, tmp_path: Path) -> None:
    handler = HttpOrigin()
    origin = await net.origin(handler, path=str(tmp_path / "app.sock"))
    assert origin.address.is_unix
    await http_check("/ready")(Backend(origin.address))
    line, headers = handler.head()
    assert line == "GET /ready HTTP/1.1"
    assert headers["host"] == "localhost"  # "unix:/path" is no valid Host value
    handler.response = UNAVAILABLE
    assert await failure(http_check("/ready"), Backend(origin.address)) == "status 503, expected 2xx/3xx"


async def test_sends_the_configured_method_host_and_headers(net) -> None:
    handler = HttpOrigin(b"HTTP/1.1 204 No Content\r\n\r\n")
    origin = await net.origin(handler)
    check = http_check(
        "/healthz?deep=1",
        method="HEAD",
        host="api.internal",
        expect_status=[204],
        headers={"X-Probe": "ferryman", "User-Agent": "probe/2"},
    )
    await check(Backend(origin.address))
    line, headers = handler.head()
    assert line == "HEAD /healthz?deep=1 HTTP/1.1"
    assert headers == {
        "host": "api.internal",
        "user-agent": "probe/2",
        "connection": "close",
        "x-probe": "ferryman",
    }


async def test_make_check_from_the_config_model(net) -> None:
    handler = HttpOrigin(b"HTTP/1.1 204 No Content\r\n\r\n")
    origin = await net.origin(handler)
    cfg = HealthCheckModel(
        kind="http", path="/hz", method="HEAD", host="svc", expect_status=[204], headers={"X-A": "1"}
    )
    await make_check(cfg)(Backend(origin.address))
    line, headers = handler.head()
    assert line == "HEAD /hz HTTP/1.1"
    assert headers["host"] == "svc" and headers["x-a"] == "1"

    assert make_check(HealthCheckModel(kind="tcp")) is tcp_check
    default = make_check(HealthCheckModel(kind="http"))
    await default(Backend(origin.address))  # 204 is a 2xx
    assert handler.head()[0] == "GET / HTTP/1.1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "healthz"}, "origin-form"),
        ({"path": "/a b"}, "origin-form"),
        ({"path": "/caf\u00e9"}, "origin-form"),
        ({"method": "GET /x"}, "token"),
        ({"headers": {"Bad Name": "1"}}, "token"),
        ({"headers": {"X-A": "1\r\nInjected: yes"}}, "CR, LF"),
        ({"host": "a\nb"}, "CR, LF"),
        ({"expect_status": [99]}, "3-digit"),
    ],
)
def test_bad_arguments_are_refused_at_build_time(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        http_check(**kwargs)


# the checker ----------------------------------------------------------------------------------
async def test_checker_flips_down_after_fall_and_up_after_rise(net, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    handler = HttpOrigin()
    origin = await net.origin(handler)
    backend = Backend(origin.address)
    checker = HealthChecker([backend], HealthCheckConfig(rise=2, fall=3), check=http_check("/healthz"))
    await checker.run_once()
    assert backend.healthy
    handler.response = UNAVAILABLE
    for expected in (True, True, False):
        await checker.run_once()
        assert backend.healthy is expected
    handler.response = OK
    for expected in (False, True):
        await checker.run_once()
        assert backend.healthy is expected
    assert messages(caplog) == [
        f"backend {origin.address} down: status 503, expected 2xx/3xx (3 consecutive failures)",
        f"backend {origin.address} up: check passed (2 consecutive successes)",
    ]
    assert len(handler.requests) == 6


async def test_restart_rise_needs_fresh_successes(net) -> None:
    origin = await net.origin(HttpOrigin())
    backend = Backend(origin.address)
    checker = HealthChecker([backend], HealthCheckConfig(rise=2, fall=3), check=http_check())
    for _ in range(3):
        await checker.run_once()
    assert checker.state(backend).successes == 3

    backend.set_health(False)  # taken out by something else (passive health)
    assert checker.restart_rise(backend)
    assert checker.state(backend).successes == 0
    await checker.run_once()
    assert not backend.healthy
    await checker.run_once()
    assert backend.healthy

    backend.set_health(False)  # without the restart, the next success readmits it
    await checker.run_once()
    assert backend.healthy

    assert not checker.restart_rise(Backend(origin.address))  # a backend it does not check


async def test_replace_backends_keeps_known_state(net) -> None:
    good = await net.origin(HttpOrigin())
    refused = net.refused_address()
    kept, dropped, added = Backend(refused), Backend(good.address), Backend(good.address, key="new")
    checker = HealthChecker([kept, dropped], HealthCheckConfig(rise=2, fall=1), check=http_check())
    await checker.run_once()
    assert not kept.healthy and dropped.healthy
    added.set_health(False)

    checker.replace_backends([kept, added])
    assert checker.backends == (kept, added)
    assert not kept.healthy and checker.state(kept).failures == 1  # unchanged
    assert added.healthy and checker.state(added).successes == 0  # fresh, healthy
    with pytest.raises(KeyError):
        checker.state(dropped)
    await checker.run_once()
    assert checker.state(kept).failures == 2
    assert checker.state(added).successes == 1


async def test_result_of_a_dropped_backend_is_ignored(net) -> None:
    handler = HttpOrigin(UNAVAILABLE, hold="before")
    origin = await net.origin(handler)
    backend = Backend(origin.address)
    checker = HealthChecker([backend], HealthCheckConfig(fall=1), check=http_check())
    round_ = asyncio.get_running_loop().create_task(checker.run_once())
    await until(lambda: len(handler.requests) == 1, "the check to send its request")
    checker.replace_backends([])
    handler.release.set()
    await round_  # the 503 arrives for a backend no longer checked: no error, no change
    assert backend.healthy
    assert len(handler.requests) == 1

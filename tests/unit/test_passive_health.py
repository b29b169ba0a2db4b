"""Passive health: ejection after failures, cool-down, probes, and the active checker hand-off.

Each test runs on a fresh uvloop loop with real sockets on 127.0.0.1 and short durations;
waits poll a condition under a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from ferryman.config.model import PassiveHealthConfig
from ferryman.net.addr import Address
from ferryman.upstream.backend import Backend
from ferryman.upstream.health import (
    HealthCheckConfig,
    HealthChecker,
    http_check,
    tcp_check,
)
from ferryman.upstream.passive import PassiveHealth, PassiveState

LOGGER = "ferryman.upstream.passive"
DEADLINE = 5.0


def run(main: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 20))


async def until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


class Listener:
    """A TCP server on 127.0.0.1:0 that accepts and closes (a backend a TCP probe likes)."""

    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.accepted = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        await reader.read()  # hold the connection until the client closes it
        writer.close()

    async def start(self) -> Address:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return Address("127.0.0.1", self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self.writers:
                writer.close()
            await self.server.wait_closed()
            self.server = None


def refused_socket() -> tuple[socket.socket, Address]:
    """A bound, not listening socket: connecting is refused until ``listen()`` is called."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, Address("127.0.0.1", sock.getsockname()[1])


def passive(**options: object) -> PassiveHealth:
    settings: dict = {"max_fails": 3, "fail_window": 10.0, "cool_down": 60.0, "count_5xx": True}
    settings.update(options)
    return PassiveHealth(**settings)


# counting and ejection -------------------------------------------------------------------------
def test_ejects_after_max_fails_within_the_window(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main() -> None:
        backend = Backend(Address("127.0.0.1", 9))
        health = passive()
        try:
            health.failure(backend, "connection refused")
            health.failure(backend, "connection reset")
            assert backend.healthy
            assert health.state(backend) == PassiveState(2, False, 0, "connection reset")
            assert messages(caplog) == []

            health.failure(backend, "read timeout")
            assert not backend.healthy
            assert health.state(backend) == PassiveState(0, True, 1, "read timeout")
            assert messages(caplog) == [
                "backend 127.0.0.1:9 ejected for 60s: 3 failures within 10s, last: read timeout"
            ]
            assert caplog.records[-1].levelno == logging.WARNING
            assert health.pending == 1  # the cool-down timer

            health.failure(backend, "more")  # already out: not counted, no second log line
            assert health.state(backend).ejections == 1
            assert len(messages(caplog)) == 1
        finally:
            health.stop()

    run(main)


def test_failures_spread_wider_than_the_window_do_not_eject() -> None:
    async def main() -> None:
        backend = Backend(Address("127.0.0.1", 9))
        health = passive(fail_window=0.05)
        try:
            health.failure(backend, "a")
            health.failure(backend, "b")
            assert health.state(backend).failures == 2
            await until(lambda: health.state(backend).failures == 0, "the window to pass")
            health.failure(backend, "c")  # a new window starts here
            assert backend.healthy
            assert health.state(backend).failures == 1
            assert health.pending == 0
        finally:
            health.stop()

    run(main)


def test_success_resets_the_count() -> None:
    async def main() -> None:
        backend = Backend(Address("127.0.0.1", 9))
        health = passive()
        health.success(backend)  # nothing known yet: a no-op
        assert health.state(backend) == PassiveState()
        for _ in range(3):
            health.failure(backend, "refused")
            health.failure(backend, "refused")
            health.success(backend)
        assert backend.healthy
        assert health.state(backend).failures == 0
        health.stop()

    run(main)


def test_5xx_counts_only_when_enabled() -> None:
    async def main() -> None:
        counted, ignored = Backend(Address("127.0.0.1", 9)), Backend(Address("127.0.0.1", 10))
        on = passive(max_fails=2)
        off = passive(max_fails=2, count_5xx=False)
        try:
            on.response(counted, 502)
            on.response(counted, 404)  # a 4xx is the backend working: resets the count
            assert on.state(counted).failures == 0
            on.response(counted, 502)
            on.response(counted, 503)
            assert not counted.healthy
            assert on.state(counted).last_reason == "status 503"

            for _ in range(5):
                off.response(ignored, 503)
            assert ignored.healthy
            assert off.state(ignored) == PassiveState()
        finally:
            on.stop()
            off.stop()

    run(main)


def test_ejects_even_when_every_other_backend_is_down() -> None:
    async def main() -> None:
        down, last = Backend(Address("127.0.0.1", 9), healthy=False), Backend(Address("127.0.0.1", 10))
        health = passive(max_fails=1)
        try:
            health.failure(down, "refused")  # already down: nothing to count
            assert health.state(down) == PassiveState()
            health.failure(last, "refused")
            assert not last.healthy and not down.healthy
            assert health.state(last).ejected
        finally:
            health.stop()

    run(main)


def test_from_config() -> None:
    cfg = PassiveHealthConfig(max_fails=4, fail_window="2s", cool_down="3s", count_5xx=False)
    health = PassiveHealth.from_config(cfg, probe=None, checker=None)
    assert (health.max_fails, health.fail_window, health.cool_down, health.count_5xx) == (4, 2.0, 3.0, False)
    assert health.probe is tcp_check
    with pytest.raises(ValueError, match="max_fails"):
        passive(max_fails=0)
    with pytest.raises(ValueError, match="cool_down"):
        passive(cool_down=0)


# probing -----------------------------------------------------------------------------------------
def test_probe_readmits_a_backend_that_accepts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main() -> None:
        listener = Listener()
        address = await listener.start()
        backend = Backend(address)
        health = passive(max_fails=1, cool_down=0.05, probe=tcp_check)
        try:
            health.failure(backend, "connection reset")
            assert not backend.healthy
            await until(lambda: backend.healthy, "the probe to readmit the backend")
            assert listener.accepted == 1
            assert health.state(backend) == PassiveState(0, False, 1, "connection reset")
            assert messages(caplog)[-1] == f"backend {address} back after probe"
            assert caplog.records[-1].levelno == logging.INFO
            await until(lambda: health.pending == 0, "the probe task to finish")
        finally:
            health.stop()
            await listener.close()

    run(main)


def test_failing_probe_ejects_again_with_doubling_cool_down(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main() -> None:
        sock, address = refused_socket()
        backend = Backend(address)
        health = passive(max_fails=1, cool_down=0.02)  # default probe: tcp_check
        try:
            health.failure(backend, "connection refused")
            await until(lambda: health.state(backend).ejections == 5, "four failed probes")
            assert not backend.healthy
            assert health.state(backend).last_reason == "probe failed: connection refused"
            assert messages(caplog)[1:5] == [
                f"backend {address} stays ejected for {delay:g}s: probe failed: connection refused"
                for delay in (0.04, 0.08, 0.16, 0.16)  # doubled each time, at most 8x
            ]

            sock.listen()  # the backend recovers: the next probe connects
            await until(lambda: backend.healthy, "the probe to readmit the backend")
            assert messages(caplog)[-1] == f"backend {address} back after probe"

            health.failure(backend, "connection refused")  # a new streak starts at 1x
            assert messages(caplog)[-1].startswith(f"backend {address} ejected for 0.02s:")
        finally:
            await health.aclose()
            sock.close()

    run(main)


def test_with_an_active_checker_only_rise_is_restarted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main() -> None:
        listener = Listener()
        address = await listener.start()
        backend = Backend(address)
        checker = HealthChecker([backend], HealthCheckConfig(interval=3600, timeout=2, rise=2, fall=3))
        probes: list[Backend] = []

        async def probe(b: Backend) -> None:
            probes.append(b)

        health = passive(max_fails=1, cool_down=0.01, probe=probe, checker=checker)
        checker.start()  # first round at once, the next one in an hour
        try:
            await until(lambda: checker.state(backend).successes == 1, "the first active check")
            await checker.run_once()
            assert checker.state(backend).successes == 2

            health.failure(backend, "connection reset")
            assert not backend.healthy
            assert checker.state(backend).successes == 0
            assert health.pending == 0  # no cool-down timer, no probe: the checker decides
            assert messages(caplog) == [
                f"backend {address} ejected: 1 failures within 10s, last: connection reset; back after 2 passing active checks"
            ]

            await checker.run_once()
            assert not backend.healthy
            await checker.run_once()
            assert backend.healthy
            assert probes == []
            assert not health.state(backend).ejected

            health.failure(backend, "connection reset")  # readmitted: counted afresh
            assert not backend.healthy
            assert health.state(backend).ejections == 2
        finally:
            await checker.stop()
            health.stop()
            await listener.close()

    run(main)


def test_a_stopped_checker_leaves_the_probe_to_passive_health() -> None:
    async def main() -> None:
        listener = Listener()
        address = await listener.start()
        backend = Backend(address)
        checker = HealthChecker([backend], HealthCheckConfig(interval=3600))  # never started
        health = passive(max_fails=1, cool_down=0.01, checker=checker)
        try:
            health.failure(backend, "connection reset")
            await until(lambda: backend.healthy, "the probe to readmit the backend")
        finally:
            await health.aclose()
            await listener.close()

    run(main)


def test_stop_cancels_timers_and_running_probes() -> None:
    async def main() -> None:
        hanging = Listener()  # accepts, never answers: an HTTP probe waits for a response
        address = await hanging.start()
        waiting, probing = Backend(Address("127.0.0.1", 9)), Backend(address)
        slow = passive(max_fails=1, cool_down=3600)
        fast = passive(max_fails=1, cool_down=0.01, probe=http_check("/"), probe_timeout=30)
        try:
            slow.failure(waiting, "refused")
            assert slow.pending == 1
            slow.stop()
            assert slow.pending == 0
            assert not waiting.healthy  # stop() does not readmit

            fast.failure(probing, "refused")
            await until(lambda: hanging.accepted == 1, "the probe to connect")
            assert fast.pending == 1
            await fast.aclose()
            assert fast.pending == 0
            assert not probing.healthy
            await until(lambda: hanging.writers[0].is_closing(), "the probe connection to close")

            other = Backend(Address("127.0.0.1", 11))
            fast.failure(other, "refused")  # reports after stop() are ignored
            assert other.healthy and fast.state(other) == PassiveState()
        finally:
            slow.stop()
            fast.stop()
            await hanging.close()

    run(main)


def test_forget_drops_state_and_cancels_the_timer() -> None:
    async def main() -> None:
        probed: list[Backend] = []

        async def probe(b: Backend) -> None:
            probed.append(b)

        forgotten, other = Backend(Address("127.0.0.1", 9)), Backend(Address("127.0.0.1", 10))
        health = passive(max_fails=1, cool_down=0.01, probe=probe)
        try:
            health.failure(forgotten, "refused")
            health.failure(other, "refused")  # same cool-down, scheduled later: probed later
            assert health.pending == 2
            health.forget(forgotten)
            assert health.pending == 1
            assert health.state(forgotten) == PassiveState()
            await until(lambda: other.healthy, "the other backend's probe")
            assert probed == [other]  # the forgotten one's timer would have fired first
            assert not forgotten.healthy  # forget() leaves the flag alone
            health.forget(forgotten)  # unknown: harmless
        finally:
            health.stop()

    run(main)

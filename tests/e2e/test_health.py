"""Active health checks against real listeners on loopback and Unix sockets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from ferryman.net.addr import Address
from ferryman.upstream.backend import Backend
from ferryman.upstream.health import HealthCheckConfig, HealthChecker, tcp_check

LOGGER = "ferryman.upstream.health"


def run(coro_fn: Callable[[], Awaitable[None]], loop: str = "asyncio") -> None:
    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(coro_fn(), 10))


class Listener:
    """A server that accepts and closes; tracks its connections so all get closed."""

    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.close()

    async def tcp(self, port: int = 0) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        return self.server.sockets[0].getsockname()[1]

    async def unix(self, path: str) -> None:
        self.server = await asyncio.start_unix_server(self._handle, path)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in self.writers:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
        self.writers.clear()


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tcp_backend_goes_down_and_comes_back(loop: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main() -> None:
        listener = Listener()
        port = await listener.tcp()
        backend = Backend(Address("127.0.0.1", port))
        checker = HealthChecker([backend], HealthCheckConfig(interval=1, timeout=2, rise=2, fall=3))
        try:
            await checker.run_once()
            assert backend.healthy
            assert checker.state(backend).successes == 1

            await listener.close()
            for expected in (True, True, False):
                await checker.run_once()
                assert backend.healthy is expected
            assert checker.state(backend).failures == 3
            assert messages(caplog) == [
                f"backend 127.0.0.1:{port} down: connection refused (3 consecutive failures)"
            ]
            assert caplog.records[-1].levelno == logging.WARNING

            await checker.run_once()  # stays down, logs nothing more
            assert len(messages(caplog)) == 1

            await listener.tcp(port)
            await checker.run_once()
            assert not backend.healthy
            await checker.run_once()
            assert backend.healthy
            assert messages(caplog)[-1] == (
                f"backend 127.0.0.1:{port} up: check passed (2 consecutive successes)"
            )
            assert caplog.records[-1].levelno == logging.INFO
        finally:
            await listener.close()

    run(main, loop)


def test_unix_socket_backend(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = str(tmp_path / "app.sock")

    async def main() -> None:
        listener = Listener()
        await listener.unix(path)
        backend = Backend(Address(path=path))
        checker = HealthChecker([backend], HealthCheckConfig(rise=1, fall=1))
        try:
            await checker.run_once()
            assert backend.healthy
            await listener.close()
            Path(path).unlink(missing_ok=True)
            await checker.run_once()
            assert not backend.healthy
            assert messages(caplog) == [
                f"backend unix:{path} down: no such file or directory (1 consecutive failures)"
            ]
            await listener.unix(path)
            await checker.run_once()
            assert backend.healthy
        finally:
            await listener.close()

    run(main)


def test_backends_are_checked_concurrently_and_independently() -> None:
    async def main() -> None:
        listener = Listener()
        port = await listener.tcp()
        # Bind then close to get a port with nothing listening.
        probe = Listener()
        dead_port = await probe.tcp()
        await probe.close()
        good = Backend(Address("127.0.0.1", port))
        bad = Backend(Address("127.0.0.1", dead_port))
        checker = HealthChecker([good, bad], HealthCheckConfig(fall=1))
        try:
            await checker.run_once()
            assert good.healthy and not bad.healthy
            assert checker.state(bad).last_error == "connection refused"
        finally:
            await listener.close()

    run(main)


def test_slow_check_times_out() -> None:
    async def main() -> None:
        never = asyncio.Event()

        async def hang(backend: Backend) -> None:
            await never.wait()

        backend = Backend(Address("127.0.0.1", 9))
        checker = HealthChecker([backend], HealthCheckConfig(timeout=0.05, fall=1), check=hang)
        await checker.run_once()
        assert not backend.healthy
        assert checker.state(backend).last_error == "timed out after 0.05s"

    run(main)


def test_tcp_check_raises_on_refused_connection() -> None:
    async def main() -> None:
        probe = Listener()
        port = await probe.tcp()
        await tcp_check(Backend(Address("127.0.0.1", port)), timeout=2)
        await probe.close()
        with pytest.raises(ConnectionRefusedError):
            await tcp_check(Backend(Address("127.0.0.1", port)), timeout=2)

    run(main)


def test_background_loop_survives_failing_checks_and_callbacks() -> None:
    async def main() -> None:
        calls = 0
        changes: list[tuple[bool, str]] = []
        went_down = asyncio.Event()
        came_up = asyncio.Event()

        async def flaky(backend: Backend) -> None:
            nonlocal calls
            calls += 1
            if calls <= 2:
                raise RuntimeError("boom")

        def on_change(backend: Backend, healthy: bool, reason: str) -> None:
            changes.append((healthy, reason))
            (came_up if healthy else went_down).set()
            raise ValueError("callback bug")  # must not stop the checker either

        backend = Backend(Address("127.0.0.1", 9))
        config = HealthCheckConfig(interval=0.001, timeout=1, rise=3, fall=2)
        checker = HealthChecker([backend], config, check=flaky, on_change=on_change)
        checker.start()
        checker.start()  # idempotent
        try:
            await asyncio.wait_for(went_down.wait(), 5)
            await asyncio.wait_for(came_up.wait(), 5)
            assert checker.running
        finally:
            await checker.stop()
        assert not checker.running
        assert changes == [
            (False, "RuntimeError: boom (2 consecutive failures)"),
            (True, "check passed (3 consecutive successes)"),
        ]
        assert calls >= 5

    run(main)


def test_initially_unhealthy_needs_rise_successes() -> None:
    async def main() -> None:
        listener = Listener()
        port = await listener.tcp()
        backend = Backend(Address("127.0.0.1", port))
        checker = HealthChecker(
            [backend], HealthCheckConfig(rise=2, fall=2, initially_healthy=False)
        )
        try:
            assert not backend.healthy
            await checker.run_once()
            assert not backend.healthy
            await checker.run_once()
            assert backend.healthy
        finally:
            await listener.close()

    run(main)


def test_stop_without_start_is_harmless() -> None:
    async def main() -> None:
        checker = HealthChecker([], HealthCheckConfig())
        await checker.stop()
        await checker.run_once()

    run(main)


@pytest.mark.parametrize(
    "kwargs",
    [{"interval": 0}, {"timeout": -1}, {"rise": 0}, {"fall": 0}],
)
def test_config_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HealthCheckConfig(**kwargs)

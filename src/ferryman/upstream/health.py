"""Active health checks: probe every backend periodically and flip ``backend.healthy``.

Runs as one asyncio background task per checker (control plane, not data path). A
backend goes down after ``fall`` consecutive failed checks and comes back after
``rise`` consecutive successes, as HAProxy does; each transition is logged once with
the reason. Balancers see the change immediately because they share the Backend.

Two checks exist: :func:`tcp_check` (connect, close) and :func:`http_check` (send one
request, read the response head, judge its status); :func:`make_check` builds one from
the ``[upstreams.X.health_check]`` table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..protocol.h1 import H1Error, ResponseHead, ResponseParser
from .backend import Backend

if TYPE_CHECKING:
    from ..config.model import HealthCheckConfig as HealthCheckModel

logger = logging.getLogger(__name__)

Check = Callable[[Backend], Awaitable[None]]
"""A health check: returns when the backend is fine, raises when it is not."""

ChangeCallback = Callable[[Backend, bool, str], None]
"""Called as ``(backend, healthy, reason)`` after each transition."""


@dataclass(slots=True)
class HealthCheckConfig:
    """Timing and thresholds. ``timeout`` bounds each single check."""

    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    initially_healthy: bool = True

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"interval must be > 0, got {self.interval}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        if self.rise < 1 or self.fall < 1:
            raise ValueError(f"rise and fall must be >= 1, got rise={self.rise} fall={self.fall}")


async def tcp_check(backend: Backend, timeout: float | None = None) -> None:
    """Connect to the backend (TCP or Unix socket), then close. Raises on failure."""
    address = backend.address
    async with asyncio.timeout(timeout):
        if address.is_unix:
            _, writer = await asyncio.open_unix_connection(address.path)
        else:
            _, writer = await asyncio.open_connection(address.host, address.port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class CheckFailed(Exception):
    """A check reached the backend but did not like the answer; the message says why."""


MAX_RESPONSE_HEAD = 16 * 1024
"""Bytes an HTTP check reads before giving up on finding the end of the response head."""

_READ_SIZE = 4096
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_token(text: str) -> bool:
    return bool(text) and all(c in _TOKEN_CHARS for c in text)


def _field_value(name: str, value: str) -> bytes:
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"health check header {name!r}: value must not contain CR, LF or NUL")
    try:
        return value.strip(" \t").encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"health check header {name!r}: value must be Latin-1 text") from None


def _expectation(expect_status: tuple[int, ...]) -> str:
    return "/".join(str(s) for s in expect_status) if expect_status else "2xx/3xx"


def http_check(
    path: str = "/",
    *,
    method: str = "GET",
    host: str | None = None,
    expect_status: Iterable[int] = (),
    headers: Mapping[str, str] | None = None,
    tls: Any = None,
) -> Check:
    """An HTTP/1.1 check: ``METHOD path`` with ``Connection: close``; the backend is fine
    when the status is in ``expect_status`` (default: any 2xx or 3xx).

    ``host`` is the Host header (default: the backend's ``host:port``, ``localhost`` for a
    Unix socket); ``headers`` are added, replacing defaults of the same name. Only the
    response head is read (at most :data:`MAX_RESPONSE_HEAD` bytes). Failures raise
    :class:`CheckFailed` (or the OSError of the connect) with a precise reason; the caller
    bounds the time. Bad arguments raise ValueError at once, not at check time. ``tls``: a
    :class:`~ferryman.net.tls.TlsOptions` when the backends speak TLS (as their traffic does).
    """
    if not path.startswith("/") or not all("!" <= c <= "~" for c in path):
        raise ValueError(f"health check path {path!r}: expected an origin-form path such as /healthz")
    if not _is_token(method):
        raise ValueError(f"health check method {method!r} is not an HTTP token")
    expected = tuple(expect_status)
    for status in expected:
        if not 100 <= status <= 999:
            raise ValueError(f"health check expect_status {status} is not a 3-digit status")
    defaults: dict[str, tuple[str, bytes]] = {
        "user-agent": ("User-Agent", b"ferryman-health-check"),
        "connection": ("Connection", b"close"),
    }
    fixed_host = None if host is None else _field_value("Host", host)
    for name, value in (headers or {}).items():
        if not _is_token(name):
            raise ValueError(f"health check header name {name!r} is not an HTTP token")
        if name.lower() == "host":
            fixed_host = _field_value(name, value)
        else:
            defaults[name.lower()] = (name, _field_value(name, value))
    rest = b"".join(b"%s: %s\r\n" % (n.encode("ascii"), v) for n, v in defaults.values()) + b"\r\n"
    request_line = f"{method} {path} HTTP/1.1\r\nHost: ".encode("ascii")
    method_bytes = method.encode("ascii")
    accept = frozenset(expected)
    expectation = _expectation(expected)

    async def check(backend: Backend) -> None:
        address = backend.address
        if fixed_host is not None:
            host_value = fixed_host
        elif address.is_unix:
            host_value = b"localhost"
        else:
            host_value = str(address).encode("ascii", "replace")
        if address.is_unix:
            reader, writer = await asyncio.open_unix_connection(address.path)
        elif tls is not None:
            reader, writer = await asyncio.open_connection(
                address.host, address.port, ssl=tls.context(), server_hostname=tls.server_hostname(address.host)
            )
        else:
            reader, writer = await asyncio.open_connection(address.host, address.port)
        try:
            writer.write(b"%s%s\r\n%s" % (request_line, host_value, rest))
            head = await _read_response_head(reader, method_bytes)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        status = head.status
        ok = status in accept if accept else 200 <= status < 400
        if not ok:
            raise CheckFailed(f"status {status}, expected {expectation}")

    check.__qualname__ = check.__name__ = f"http_check({method} {path})"
    return check


async def _read_response_head(reader: asyncio.StreamReader, method: bytes) -> ResponseHead:
    """The first final response head on ``reader``; interim 1xx heads are skipped."""
    parser = ResponseParser(max_status_line=MAX_RESPONSE_HEAD, max_header_bytes=MAX_RESPONSE_HEAD)
    parser.expect(method)
    received = 0
    while True:
        try:
            data = await reader.read(min(_READ_SIZE, MAX_RESPONSE_HEAD - received))
        except ConnectionResetError:
            raise CheckFailed("connection reset before a response" if not received else "connection reset inside the response head") from None
        if not data:
            raise CheckFailed("closed before a response" if not received else "closed inside the response head")
        received += len(data)
        try:
            events = parser.feed(data)
        except H1Error as exc:
            events = exc.events  # a bad body after a complete head does not matter here
            head = _final_head(events)
            if head is None:
                raise CheckFailed(f"malformed response: {exc.reason}") from None
            return head
        head = _final_head(events)
        if head is not None:
            return head
        if received >= MAX_RESPONSE_HEAD:
            raise CheckFailed("response head too large")


def _final_head(events: list) -> ResponseHead | None:
    for event in events:
        if type(event) is ResponseHead and not event.interim:
            return event
    return None


def make_check(cfg: HealthCheckModel, tls: Any = None) -> Check:
    """The check described by a ``health_check`` config table (``kind`` tcp or http);
    ``tls``: the upstream's TLS options, so http probes speak TLS like its traffic."""
    if cfg.kind == "tcp":
        return tcp_check
    if cfg.kind == "http":
        return http_check(
            cfg.path,
            method=cfg.method,
            host=cfg.host,
            expect_status=cfg.expect_status,
            headers=cfg.headers,
            tls=tls,
        )
    raise ValueError(f"unknown health check kind {cfg.kind!r}")


def describe_failure(exc: BaseException, timeout: float) -> str:
    """A short reason for logs: ``connection refused``, ``timed out after 2s`` ..."""
    if isinstance(exc, CheckFailed):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(slots=True)
class HealthState:
    """Consecutive results for one backend; one counter is always 0."""

    successes: int = 0
    failures: int = 0
    last_error: str = ""


class HealthChecker:
    """Periodically runs ``check`` against every backend and applies rise/fall.

    Construction sets every backend's ``healthy`` to ``config.initially_healthy``;
    keep the same checker across reloads for backends whose state should survive.
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        config: HealthCheckConfig,
        check: Check = tcp_check,
        *,
        on_change: ChangeCallback | None = None,
    ) -> None:
        self.backends: tuple[Backend, ...] = tuple(backends)
        self.config = config
        self.check = check
        self.on_change = on_change
        self._states = {id(b): HealthState() for b in self.backends}
        self._task: asyncio.Task[None] | None = None
        for backend in self.backends:
            backend.set_health(config.initially_healthy)

    def state(self, backend: Backend) -> HealthState:
        return self._states[id(backend)]

    def restart_rise(self, backend: Backend) -> bool:
        """Forget ``backend``'s consecutive successes: it needs ``rise`` fresh ones to be
        readmitted. Called when something else (passive health) took it out of service.
        Returns False when this checker does not check that backend."""
        state = self._states.get(id(backend))
        if state is None:
            return False
        state.successes = 0
        return True

    def replace_backends(self, backends: Sequence[Backend]) -> None:
        """Check ``backends`` from now on (after a DNS re-resolution, say).

        Backends already checked (the same objects) keep their state and health; new
        ones start afresh as ``config.initially_healthy`` (healthy by default). Results of
        checks still running for dropped backends are ignored.
        """
        old = {id(b): b for b in self.backends}
        states: dict[int, HealthState] = {}
        for backend in backends:
            key = id(backend)
            if old.get(key) is backend:
                states[key] = self._states[key]
            elif key not in states:
                states[key] = HealthState()
                backend.set_health(self.config.initially_healthy)
        self.backends = tuple(backends)
        self._states = states

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start checking on the running loop (first round immediately). Idempotent."""
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health-checker")

    async def stop(self) -> None:
        """Cancel the background task and wait for it to finish."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def run_once(self) -> None:
        """Check every backend once, concurrently, and apply the results."""
        await asyncio.gather(*(self._check_one(b) for b in self.backends))

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # a bug in a callback must not stop health checking
                logger.exception("health check round failed")
            await asyncio.sleep(self.config.interval)

    async def _check_one(self, backend: Backend) -> None:
        timeout = self.config.timeout
        try:
            async with asyncio.timeout(timeout):
                await self.check(backend)
        except Exception as exc:  # noqa: BLE001 - any failure of a check means "down"
            self._record(backend, describe_failure(exc, timeout))
        else:
            self._record(backend, "")

    def _record(self, backend: Backend, error: str) -> None:
        state = self._states.get(id(backend))
        if state is None:  # dropped by replace_backends while its check ran
            return
        config = self.config
        if error:
            state.successes = 0
            state.failures += 1
            state.last_error = error
            if backend.verdict and state.failures >= config.fall:
                self._transition(backend, False, f"{error} ({state.failures} consecutive failures)")
        else:
            state.failures = 0
            state.successes += 1
            # Down for any reason (our fall, passive ejection): back after ``rise`` successes
            # counted since the last failure or restart_rise().
            if not backend.verdict and state.successes >= config.rise:
                self._transition(backend, True, f"check passed ({state.successes} consecutive successes)")

    def _transition(self, backend: Backend, healthy: bool, reason: str) -> None:
        backend.set_health(healthy)
        if healthy:
            logger.info("backend %s up: %s", backend.key, reason)
        else:
            logger.warning("backend %s down: %s", backend.key, reason)
        if self.on_change is not None:
            try:
                self.on_change(backend, healthy, reason)
            except Exception:
                logger.exception("health change callback failed for backend %s", backend.key)

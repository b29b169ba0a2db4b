"""The syslog sink against real sockets on loopback: UDP, a Unix datagram socket and TCP
receive correctly framed messages (priority = facility * 8 + severity, tag, text); a full
socket drops (counted) instead of blocking; access log lines and log records go through it."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferryman.observability.accesslog import AccessLog
from ferryman.observability.syslog import (
    MAX_MESSAGE,
    SyslogFramer,
    SyslogHandler,
    SyslogSink,
    parse_target,
    severity_of,
)

RFC3164 = re.compile(rb"<(\d+)>([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (\S+) ([^\[\s]+)\[(\d+)\]: (.*)", re.DOTALL)
RFC5424 = re.compile(rb"<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:Z|[+-]\d\d:\d\d)) (\S+) (\S+) (\d+) - - (.*)", re.DOTALL)


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


@pytest.fixture
def unix_dgram(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_udp_rfc3164_priority_tag_and_message(udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    sink = SyslogSink(f"udp:127.0.0.1:{port}", SyslogFramer("local3", "edge", "rfc3164", hostname="box"))
    try:
        sink.send('127.0.0.1 - - "GET / HTTP/1.1" 200 5')
        sink.send("disk on fire", severity=2)
        first, second = udp.recv(65536), udp.recv(65536)
    finally:
        sink.close()
    match = RFC3164.fullmatch(first)
    assert match, first
    assert int(match[1]) == 19 * 8 + 6  # local3 = 19, info = 6
    assert (match[3], match[4], int(match[5])) == (b"box", b"edge", os.getpid())
    assert match[6] == b'127.0.0.1 - - "GET / HTTP/1.1" 200 5'
    assert not first.endswith(b"\n")  # a datagram needs no framing
    assert RFC3164.fullmatch(second)[1] == b"%d" % (19 * 8 + 2)  # type: ignore[index]
    assert (sink.sent, sink.dropped) == (2, 0)


def test_unix_datagram_rfc5424(unix_dgram: tuple[socket.socket, str]) -> None:
    sock, path = unix_dgram
    sink = SyslogSink(f"unix:{path}", SyslogFramer("daemon", "ferryman", "rfc5424", hostname="box"))
    try:
        sink.send("héllo wörld", severity=4)
        data = sock.recv(65536)
    finally:
        sink.close()
    match = RFC5424.fullmatch(data)
    assert match, data
    assert int(match[1]) == 3 * 8 + 4  # daemon = 3, warning = 4
    assert (match[3], match[4], int(match[5])) == (b"box", b"ferryman", os.getpid())
    assert match[6].decode("utf-8") == "héllo wörld"


def test_tcp_frames_each_message_for_a_stream() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)
        port = server.getsockname()[1]
        for fmt in ("rfc5424", "rfc3164"):
            sink = SyslogSink(f"tcp:127.0.0.1:{port}", SyslogFramer("local0", "t", fmt, hostname="h"))
            try:
                sink.send("one")
                sink.send("two\nlines")
                conn, _ = server.accept()
            finally:
                sink.close()  # writes what is queued, then closes: the reader sees EOF
            with conn:
                conn.settimeout(5)
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            if fmt == "rfc5424":  # octet counting: "LEN MSG" back to back
                messages = []
                while data:
                    length, _, rest = data.partition(b" ")
                    messages.append(rest[: int(length)])
                    data = rest[int(length):]
                assert [RFC5424.fullmatch(m)[6] for m in messages] == [b"one", b"two\nlines"]  # type: ignore[index]
            else:  # LF-terminated, newlines inside a message flattened
                lines = data.split(b"\n")
                assert lines[-1] == b""
                assert [RFC3164.fullmatch(line)[6] for line in lines[:-1]] == [b"one", b"two lines"]  # type: ignore[index]
                assert int(RFC3164.fullmatch(lines[0])[1]) == 16 * 8 + 6  # type: ignore[index]
            assert (sink.sent, sink.dropped) == (2, 0)


def test_a_full_socket_drops_and_counts_instead_of_blocking(unix_dgram: tuple[socket.socket, str]) -> None:
    sock, path = unix_dgram  # never read: its queue fills up
    sink = SyslogSink(f"unix:{path}")
    try:
        for sent in range(100_000):
            sink.send("x" * 1000)
            if sink.dropped:
                break
        assert sink.dropped == 1 and sink.sent == sent  # returned at once, the line counted as dropped
        received = 0
        sock.setblocking(False)
        while True:
            try:
                sock.recv(65536)
            except BlockingIOError:
                break
            received += 1
        assert received == sink.sent
    finally:
        sink.close()


def test_a_receiver_that_went_away_is_counted_then_reached_again(tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    sink = SyslogSink(f"unix:{path}")
    try:
        receiver.close()
        os.unlink(path)
        sink.send("lost")
        assert sink.dropped == 1
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # syslogd restarted
        receiver.bind(path)
        receiver.settimeout(5)
        deadline = time.monotonic() + 5
        while sink.sent == 0:  # a reconnect is tried at most once a second
            assert time.monotonic() < deadline, "the sink never reached the new socket"
            sink.send("back")
            if sink.sent == 0:
                receiver.settimeout(0.05)
                try:
                    receiver.recv(1)
                except TimeoutError:
                    pass
        receiver.settimeout(5)
        assert receiver.recv(65536).endswith(b"back")
    finally:
        sink.close()
        receiver.close()


def test_a_missing_unix_socket_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="syslog unix:.*nope.sock"):
        SyslogSink(f"unix:{tmp_path / 'nope.sock'}")


def test_long_messages_are_cut(udp: socket.socket) -> None:
    sink = SyslogSink(f"udp:127.0.0.1:{udp.getsockname()[1]}")
    try:
        sink.send("y" * (MAX_MESSAGE * 2))
        assert len(udp.recv(65536)) == MAX_MESSAGE
    finally:
        sink.close()


def test_access_log_lines_go_to_syslog(udp: socket.socket) -> None:
    class FakeSession:  # only what the template reads
        status = 204

    sink = SyslogSink(f"udp:127.0.0.1:{udp.getsockname()[1]}", SyslogFramer("local7", "access", "rfc5424"))
    access = AccessLog("syslog", lambda s, e=None: f"status={s.status}", sink=sink)
    try:
        access.log(FakeSession())  # type: ignore[arg-type]
        match = RFC5424.fullmatch(udp.recv(65536))
    finally:
        access.close()
    assert match and int(match[1]) == 23 * 8 + 6 and match[4] == b"access" and match[6] == b"status=204"
    assert access.lost == 0


def test_log_records_keep_their_severity(udp: socket.socket) -> None:
    sink = SyslogSink(f"udp:127.0.0.1:{udp.getsockname()[1]}", SyslogFramer("local1", "ferryman", "rfc3164"))
    logger = logging.getLogger("ferryman.test.syslog")
    handler = SyslogHandler(sink)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("upstream %s refused", "app")
        logger.warning("slow")
        error, warning = RFC3164.fullmatch(udp.recv(65536)), RFC3164.fullmatch(udp.recv(65536))
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        handler.close()
    assert error and int(error[1]) == 17 * 8 + 3 and error[6] == b"ERROR ferryman.test.syslog: upstream app refused"
    assert warning and int(warning[1]) == 17 * 8 + 4
    assert [severity_of(level) for level in (50, 40, 30, 20, 10)] == [2, 3, 4, 6, 7]


@pytest.mark.parametrize(("text", "message"), [
    ("udp:127.0.0.1", "expected udp:HOST:PORT"),
    ("tcp:host:0", "port from 1 to 65535"),
    ("unix:dev/log", "absolute socket path"),
    ("syslog.example:514", "expected udp:HOST:PORT, tcp:HOST:PORT or unix:/path"),
])
def test_bad_targets_are_explained(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_target(text)
    assert str(parse_target("udp:[::1]:514")) == "udp:::1:514"
    assert parse_target("unix:/dev/log").path == "/dev/log"


@pytest.mark.parametrize(("options", "message"), [
    ({"facility": "local9"}, "unknown syslog facility"),
    ({"tag": "has space"}, "tag"),
    ({"format": "rfc9999"}, "rfc3164 or rfc5424"),
])
def test_bad_framer_options_are_explained(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyslogFramer(**options)


# the product: config → sinks ----------------------------------------------------------------------
def test_ferryman_run_sends_its_access_log_and_error_log_to_syslog(tmp_path: Path, udp: socket.socket) -> None:
    from support.process import LOCAL, free_port, http_get, running

    errors = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    errors.bind(str(tmp_path / "dev-log"))
    errors.settimeout(10)
    port, demo = free_port(), free_port()
    path = tmp_path / "ferryman.toml"
    path.write_text(f"""
[server]
workers = 1
grace_period = "1s"
error_log = "syslog"
error_log_syslog = {{ address = "unix:{tmp_path / 'dev-log'}", facility = "daemon", tag = "edge" }}

[demo]
addr = "{LOCAL}:{demo}"

[listeners.web]
addr = "{LOCAL}:{port}"
protocol = "http"
upstream = "app"
access_log = "syslog"
access_log_format = '$request $status'
access_log_syslog = {{ address = "udp:{LOCAL}:{udp.getsockname()[1]}", facility = "local2", format = "rfc5424" }}

[upstreams.app]
backends = ["{LOCAL}:{demo}"]
""")
    try:
        with running(path) as proc:
            started = []
            while not any(b"listener web:" in m for m in started):  # readiness, from the error log
                started.append(errors.recv(65536))
            assert http_get(port, "/healthz")[0] == 200
            access = RFC5424.fullmatch(udp.recv(65536))
            assert proc.stop(10) == 0
    finally:
        errors.close()
    assert access and int(access[1]) == 18 * 8 + 6 and access[4] == b"ferryman" and access[6] == b"GET /healthz HTTP/1.1 200"
    info = RFC3164.fullmatch(next(m for m in started if b"listener web:" in m))
    assert info and int(info[1]) == 3 * 8 + 6 and info[4] == b"edge" and info[6].startswith(b"INFO ferryman.gateway.app: listener web: http")


def test_a_syslog_table_without_its_sink_is_a_config_error() -> None:
    from ferryman.config.load import load_text
    from ferryman.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_text("""
[server]
error_log_syslog = { address = "udp:127.0.0.1:514" }
[listeners.web]
addr = "127.0.0.1:0"
protocol = "http"
upstream = "app"
access_log_syslog = { address = "udp:127.0.0.1:99999", facility = "local9" }
[upstreams.app]
backends = ["127.0.0.1:1"]
""")
    found = dict(caught.value.errors)
    assert found["server.error_log_syslog"] == 'has no effect unless error_log = "syslog"'
    assert "port from 1 to 65535" in found["listeners.web.access_log_syslog.address"]
    assert "listeners.web.access_log_syslog.facility" in found


def test_a_forked_worker_logs_with_its_own_pid(udp: socket.socket) -> None:
    """The sink is made in the master before the workers fork: each worker's lines must
    carry the worker's pid, not the master's."""
    port = udp.getsockname()[1]
    sink = SyslogSink(f"udp:127.0.0.1:{port}", SyslogFramer("local0", "edge", "rfc3164", hostname="box"))
    try:
        sink.send("from the master")
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                sink.send("from the worker")
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        lines = [RFC3164.fullmatch(udp.recv(65536)) for _ in range(2)]
    finally:
        sink.close()
    assert sorted((m[6], int(m[5])) for m in lines) == sorted([(b"from the master", os.getpid()), (b"from the worker", pid)])

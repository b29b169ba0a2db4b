"""Access logs: every template variable, escaping of hostile values, the named and JSON formats,
compile-time errors, and the background writer (files, batching, reopen, drops, off)."""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from ferryman.errors import ErrorKind, ErrorSource, ProxyError
from ferryman.http.session import Session
from ferryman.observability.accesslog import (
    FORMATS,
    JSON_FIELDS,
    VARIABLES,
    AccessLog,
    compile_json,
    compile_template,
    resolve_format,
    time_iso8601,
    time_local,
)
from ferryman.protocol.h1 import RequestHead, RequestParser

# a downstream as Session needs it: its loop clock and its service's per-request defaults
DOWNSTREAM = types.SimpleNamespace(
    loop=types.SimpleNamespace(time=time.monotonic),
    service=types.SimpleNamespace(has_response_body_filters=False, upstream_read_timeout=None),
)
TIME_LOCAL = re.compile(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}")
DEADLINE = 10.0


def head(raw: bytes) -> RequestHead:
    events = RequestParser().feed(raw)
    assert isinstance(events[0], RequestHead)
    return events[0]


def make_session(raw: bytes, client: Any = ("203.0.113.7", 51234), local: Any = ("192.0.2.1", 8443), *, tls: bool = False) -> Session:
    return Session(head(raw), client, local, DOWNSTREAM, tls=tls)


def full_session() -> Session:
    """Every fact a request can carry, with fixed timings."""
    s = make_session(
        b"POST /api/items?id=7&x=%22 HTTP/1.1\r\nHost: Example.COM:8443\r\nUser-Agent: curl/8.5\r\n"
        b"Referer: https://ref.example/\r\nX-Forwarded-For: 198.51.100.9\r\nContent-Length: 5\r\n\r\n",
        tls=True,
    )
    d = s.digest
    d.start, d.upstream_connect, d.upstream_header, d.end = 1000.0, 1000.004, 1000.016, 1000.25
    d.reused = True
    d.upstream_addr = "10.0.0.1:8000"
    s.response_status = 201
    s.response_headers = [(b"content-type", b"application/json"), (b"x-cache", b"HIT")]
    s.bytes_sent = 1234
    s.body_bytes_received = 5
    s.route = "api"
    s.vars.update(request_id="r-1", remote_user="alice", tenant="acme", n=3)
    s.tries = 1
    return s


def bare_session() -> Session:
    """A request on a unix socket that never reached an upstream and got no response."""
    s = make_session(b"GET / HTTP/1.0\r\n\r\n", client="", local="/run/f.sock")
    s.digest.end = s.digest.start
    return s


ERROR = ProxyError(ErrorKind.READ_TIMEOUT, ErrorSource.UPSTREAM, context="10.0.0.1:8000")

# variable, text on full_session() with ERROR, JSON value, text on bare_session(), JSON value
TABLE: list[tuple[str, str, Any, str, Any]] = [
    ("remote_addr", "203.0.113.7", "203.0.113.7", "unix:", "unix:"),
    ("remote_port", "51234", 51234, "-", None),
    ("remote_user", "alice", "alice", "-", None),
    ("server_addr", "192.0.2.1", "192.0.2.1", "unix:/run/f.sock", "unix:/run/f.sock"),
    ("server_port", "8443", 8443, "-", None),
    ("request", "POST /api/items?id=7&x=%22 HTTP/1.1", "POST /api/items?id=7&x=%22 HTTP/1.1", "GET / HTTP/1.0", "GET / HTTP/1.0"),
    ("request_method", "POST", "POST", "GET", "GET"),
    ("request_uri", "/api/items?id=7&x=%22", "/api/items?id=7&x=%22", "/", "/"),
    ("uri", "/api/items", "/api/items", "/", "/"),
    ("args", "id=7&x=%22", "id=7&x=%22", "-", None),
    ("server_protocol", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.0"),
    ("scheme", "https", "https", "http", "http"),
    ("host", "example.com", "example.com", "-", None),
    ("status", "201", 201, "000", None),
    ("body_bytes_sent", "1234", 1234, "0", 0),
    ("request_length", "5", 5, "0", 0),
    ("request_time", "0.250", 0.25, "0.000", 0.0),
    ("upstream_addr", "10.0.0.1:8000", "10.0.0.1:8000", "-", None),
    ("upstream_connect_time", "0.004", 0.004, "-", None),
    ("upstream_header_time", "0.016", 0.016, "-", None),
    ("upstream_response_time", "0.250", 0.25, "-", None),
    ("upstream_reused", "1", True, "-", None),
    ("upstream_tries", "1", 1, "0", 0),
    ("route", "api", "api", "-", None),
    ("request_id", "r-1", "r-1", "-", None),
    ("error", "read_timeout: 10.0.0.1:8000", "read_timeout: 10.0.0.1:8000", "-", None),
    ("http_user_agent", "curl/8.5", "curl/8.5", "-", None),
    ("http_x_forwarded_for", "198.51.100.9", "198.51.100.9", "-", None),
    ("http_Content_Length", "5", "5", "-", None),
    ("sent_http_content_type", "application/json", "application/json", "-", None),
    ("sent_http_x_cache", "HIT", "HIT", "-", None),
    ("var_tenant", "acme", "acme", "-", None),
    ("var_n", "3", 3, "-", None),
]
TIME_VARIABLES = {"time_local", "time_iso8601", "msec", "pid"}  # values of the moment (pid: this process)


def test_every_variable_is_in_the_table() -> None:
    assert {row[0] for row in TABLE} | TIME_VARIABLES >= set(VARIABLES)


@pytest.mark.parametrize(("name", "text", "value", "bare_text", "bare_value"), TABLE, ids=[row[0] for row in TABLE])
def test_variable(name: str, text: str, value: Any, bare_text: str, bare_value: Any) -> None:
    assert compile_template(f"${name}")(full_session(), ERROR) == text
    assert compile_template(f"<${{{name}}}>")(full_session(), ERROR) == f"<{text}>"
    assert compile_template(f"${name}")(bare_session(), None) == bare_text
    got = json.loads(compile_json([name])(full_session(), ERROR))
    assert got == {name: value} and type(got[name]) is type(value)
    assert json.loads(compile_json([name])(bare_session(), None)) == {name: bare_value}


def test_time_variables_render_the_current_wall_clock() -> None:
    fmt = compile_template("$time_local|$time_iso8601|$msec")
    before = time.time()
    local, iso, msec = fmt(full_session()).split("|")
    after = time.time()
    seconds = {int(before), int(after)}
    assert local in {time_local(t) for t in seconds}
    assert iso in {time_iso8601(t) for t in seconds}
    assert re.fullmatch(r"\d+\.\d{3}", msec)
    assert before - 0.001 <= float(msec) <= after + 0.001
    fields = json.loads(compile_json(["time_local", "time_iso8601", "msec"])(full_session()))
    assert TIME_LOCAL.fullmatch(fields["time_local"]) and isinstance(fields["msec"], float)


@pytest.mark.parametrize(
    ("tz", "local", "iso"),
    [
        ("UTC0", "21/Nov/2026:10:00:00 +0000", "2026-11-21T10:00:00+00:00"),
        ("IST-5:30", "21/Nov/2026:15:30:00 +0530", "2026-11-21T15:30:00+05:30"),
        ("EST+5", "21/Nov/2026:05:00:00 -0500", "2026-11-21T05:00:00-05:00"),
    ],
)
def test_time_formats_follow_the_local_zone(tz: str, local: str, iso: str) -> None:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        assert time_local(1795255200) == local  # 2026-11-21 10:00:00 UTC
        assert time_iso8601(1795255200.9) == iso
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


def test_time_local_matches_strftime_for_every_month() -> None:
    for month in range(1, 13):
        stamp = datetime.datetime(2026, month, 3, 4, 5, 6).timestamp()
        expected = datetime.datetime.fromtimestamp(stamp).astimezone().strftime("%d/%b/%Y:%H:%M:%S %z")
        assert time_local(stamp) == expected
        assert time_iso8601(stamp) == datetime.datetime.fromtimestamp(stamp).astimezone().isoformat()


def test_absolute_form_target() -> None:
    s = make_session(b"GET http://User@Proxy.Example:8080/p/q?z=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    fmt = compile_template("$host|$request_uri|$uri|$args|$request")
    assert fmt(s) == "proxy.example|/p/q?z=1|/p/q|z=1|GET http://User@Proxy.Example:8080/p/q?z=1 HTTP/1.1"
    s = make_session(b"GET http://h.example?x=1 HTTP/1.1\r\nHost: h.example\r\n\r\n")
    assert fmt(s) == "h.example|/?x=1|/|x=1|GET http://h.example?x=1 HTTP/1.1"


def test_ipv6_addresses_and_host() -> None:
    s = make_session(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", client=("::1", 40000, 0, 0), local=("::1", 8080, 0, 0))
    assert compile_template("$remote_addr $remote_port $server_addr $server_port $host")(s) == "::1 40000 ::1 8080 [::1]"


def test_timings_never_go_negative_and_an_unfinished_request_has_a_time() -> None:
    s = full_session()
    s.digest.end = s.digest.start - 0.0005  # clocks of different resolution
    assert compile_template("$request_time")(s) == "0.000"
    s.digest.end = None  # logged before the end was recorded: time so far
    assert float(compile_template("$request_time")(s)) >= 0.0


def test_error_that_is_not_a_proxy_error_and_one_without_context() -> None:
    fmt = compile_template("$error")
    assert fmt(full_session(), RuntimeError("boom")) == "RuntimeError: boom"
    assert fmt(full_session(), ProxyError(ErrorKind.NO_BACKEND)) == "no_backend"


def test_literals_and_adjacent_variables() -> None:
    s = full_session()
    assert compile_template("")(s) == ""
    assert compile_template("plain text")(s) == "plain text"
    assert compile_template("$status$body_bytes_sent")(s) == "2011234"
    assert compile_template("${status}ms ${route}.x")(s) == "201ms api.x"


# escaping ---------------------------------------------------------------------------------------------
COMBINED = re.compile(
    r'(?P<addr>\S+) - (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)"'
)
HOSTILE = b'evil" 200 0 "-" "x\n1.2.3.4 - - [01/Jan/2026:00:00:00 +0000] "GET /admin\\'


def test_a_hostile_header_cannot_forge_a_line() -> None:
    s = full_session()
    s.request.headers.append((b"user-agent", b""))  # only the first value counts
    s.request.headers[:] = [(k, HOSTILE if k == b"user-agent" else v) for k, v in s.request.headers]
    line = resolve_format("combined")(s)
    assert "\n" not in line
    m = COMBINED.fullmatch(line)
    assert m is not None, line
    assert m["agent"] == (
        "evil\\x22 200 0 \\x22-\\x22 \\x22x\\x0A1.2.3.4 - - [01/Jan/2026:00:00:00 +0000] \\x22GET /admin\\x5C"
    )
    assert (m["status"], m["bytes"], m["referer"]) == ("201", "1234", "https://ref.example/")
    record = json.loads(resolve_format("json")(s))
    assert record["http_user_agent"] == HOSTILE.decode()


def test_control_and_non_ascii_bytes_are_escaped_as_hex() -> None:
    s = full_session()
    s.request.headers.append((b"x-raw", b"tab\there \x7f\xff caf\xc3\xa9 \x00"))
    assert compile_template("$http_x_raw")(s) == "tab\\x09here \\x7F\\xFF caf\\xC3\\xA9 \\x00"
    # JSON shows the UTF-8 text and the bytes that are not UTF-8
    assert json.loads(compile_json(["http_x_raw"])(s)) == {"http_x_raw": "tab\there \x7f\\xff café \x00"}


def test_str_values_escape_their_utf8_bytes() -> None:
    s = full_session()
    s.vars.update(note='café\u2028"\\', raw=b"a\nb", flag=True)
    s.route = "r\u00e9\n"
    fmt = compile_template("$var_note $var_raw $var_flag $route")
    assert fmt(s) == "caf\\xC3\\xA9\\xE2\\x80\\xA8\\x22\\x5C a\\x0Ab True r\\xC3\\xA9\\x0A"
    line = compile_json(["var_note", "var_raw", "var_flag", "route"])(s)
    assert line.isascii() and "\n" not in line
    assert json.loads(line) == {"var_note": 'café\u2028"\\', "var_raw": "a\nb", "var_flag": True, "route": "r\u00e9\n"}


def test_error_context_is_escaped() -> None:
    error = ProxyError(ErrorKind.PROTOCOL_ERROR, context='bad "x"\n')
    assert compile_template("$error")(full_session(), error) == "protocol_error: bad \\x22x\\x22\\x0A"


# named formats ----------------------------------------------------------------------------------------
def split_time(line: str) -> tuple[str, str]:
    m = re.search(r"\[([^\]]+)\]", line)
    assert m is not None and TIME_LOCAL.fullmatch(m[1]), line
    return line.replace(m[1], "TIME"), m[1]


def test_named_text_formats() -> None:
    s = full_session()
    common = '203.0.113.7 - alice [TIME] "POST /api/items?id=7&x=%22 HTTP/1.1" 201 1234'
    combined = common + ' "https://ref.example/" "curl/8.5"'
    assert split_time(resolve_format("common")(s))[0] == common
    assert split_time(resolve_format("combined")(s))[0] == combined
    assert split_time(resolve_format("main")(s))[0] == combined + " 0.250 0.250"
    bare = bare_session()
    assert split_time(resolve_format("main")(bare))[0] == 'unix: - - [TIME] "GET / HTTP/1.0" 000 0 "-" "-" 0.000 -'
    assert set(FORMATS) == {"common", "combined", "main"}


def test_json_format_fields_and_types() -> None:
    line = resolve_format("json")(full_session())
    record = json.loads(line)
    assert list(record) == list(JSON_FIELDS)
    assert TIME_LOCAL.fullmatch(record.pop("time_local"))
    assert record == {
        "remote_addr": "203.0.113.7",
        "remote_user": "alice",
        "request": "POST /api/items?id=7&x=%22 HTTP/1.1",
        "status": 201,
        "body_bytes_sent": 1234,
        "http_referer": "https://ref.example/",
        "http_user_agent": "curl/8.5",
        "request_time": 0.25,
        "upstream_response_time": 0.25,
    }
    bare = json.loads(resolve_format("json")(bare_session()))
    assert bare["status"] is None and bare["upstream_response_time"] is None and bare["body_bytes_sent"] == 0


def test_json_format_with_chosen_fields() -> None:
    s = full_session()
    assert json.loads(resolve_format(["status", "$route", "var_n"])(s)) == {"status": 201, "route": "api", "var_n": 3}
    assert json.loads(compile_json({"code": "status", "id": "request_id"})(s)) == {"code": 201, "id": "r-1"}
    assert json.loads(compile_json({'we"ird': "status"})(s)) == {'we"ird': 201}


def test_a_template_string_that_is_not_a_format_name() -> None:
    assert resolve_format("$status $route")(full_session()) == "201 api"


# compile-time errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("$remote_addr $nope", r"unknown access log variable \$nope"),
        ("${nope}x", r"unknown access log variable \$nope"),
        ("$http_", r"unknown access log variable \$http_"),
        ("$sent_http_", r"unknown access log variable \$sent_http_"),
        ("$var_", r"unknown access log variable \$var_"),
        ("${status", r"unclosed '\$\{' at offset 0"),
        ("cost: $ 5", r"'\$' at offset 6 is not followed by a variable name"),
        ("$$status", r"'\$' at offset 0 is not followed by a variable name"),
        ("${}", r"'\$' at offset 0 is not followed by a variable name"),
        ("${a-b}", r"'\$' at offset 0 is not followed by a variable name"),
    ],
)
def test_template_errors(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_template(template)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (["status", "nope"], r"unknown access log variable \$nope"),
        (["status", "status"], "duplicate field 'status'"),
        ([], "at least one field"),
        ({"k": "not a name"}, "'not a name' is not a variable name"),
        ("status", "must be a list of variable names"),
    ],
)
def test_json_errors(fields: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_json(fields)


# the writer -------------------------------------------------------------------------------------------
def numbered(count: int, start: int = 0, pad: str = "") -> list[Session]:
    out = []
    for i in range(start, start + count):
        s = full_session()
        s.vars["i"] = f"{i:06d}{pad}"
        out.append(s)
    return out


def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ferryman-accesslog"]


def test_writes_to_a_file_in_append_mode_and_flushes_on_close(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("old line\n")
    alog = AccessLog(str(path), "$var_i $status", flush_interval=60.0)
    for s in numbered(1000):
        alog.log(s)
    alog.close()
    assert path.read_text().splitlines() == ["old line"] + [f"{i:06d} 201" for i in range(1000)]
    assert (alog.written, alog.dropped) == (1000, 0)
    alog.close()  # idempotent
    alog.log(full_session())  # after close: ignored
    assert alog.written == 1000 and not any(t.is_alive() for t in writer_threads())


def test_lines_wait_for_the_batch_until_close(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    alog = AccessLog(str(path), "$var_i", flush_interval=60.0)
    for s in numbered(3):
        alog.log(s)
    for _ in range(50):  # the writer gets to run (GIL released) and keeps gathering: no 64 KiB, no 60 s
        time.sleep(0)
        assert path.read_text() == ""
    alog.close()
    assert path.read_text() == "000000\n000001\n000002\n"


def test_a_full_batch_is_written_before_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    alog = AccessLog(str(path), "$var_i", batch_bytes=100, flush_interval=60.0)
    try:
        for s in numbered(20):  # 140 bytes
            alog.log(s)
        wait_for(lambda: alog.written >= 14, "the batch")
        assert path.read_text().startswith("000000\n000001\n")
    finally:
        alog.close()
    assert len(path.read_text().splitlines()) == 20


def test_lines_are_flushed_after_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    alog = AccessLog(str(path), "$var_i", flush_interval=0.02)
    try:
        alog.log(numbered(1)[0])
        wait_for(lambda: path.read_text() == "000000\n", "the interval flush")
        alog.log(numbered(1, start=1)[0])
        wait_for(lambda: path.read_text() == "000000\n000001\n", "the second flush")
    finally:
        alog.close()


def test_reopen_after_rename_sends_later_lines_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    alog = AccessLog(str(path), "$var_i", flush_interval=0.02)
    try:
        first, second, third = numbered(3)
        alog.log(first)
        wait_for(lambda: alog.written == 1, "the first line")
        os.rename(path, rotated)  # logrotate
        alog.log(second)  # still the old (renamed) file
        alog.reopen()
        alog.log(third)
    finally:
        alog.close()
    assert rotated.read_text() == "000000\n000001\n"
    assert path.read_text() == "000002\n"


def test_reopen_that_fails_keeps_the_old_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "access.log"
    alog = AccessLog(str(path), "$var_i")
    first, second = numbered(2)
    alog.log(first)
    os.rename(folder, tmp_path / "gone")  # the directory vanished: reopen cannot create the file
    alog.reopen()
    alog.log(second)
    alog.close()
    assert (tmp_path / "gone" / "access.log").read_text() == "000000\n000001\n"
    assert any("reopen failed" in r.getMessage() for r in caplog.records)


def test_a_slow_disk_drops_lines_instead_of_growing_memory(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader that does not read yet
    alog = AccessLog(str(fifo), "$var_i", max_buffer=4096, batch_bytes=512, flush_interval=0.01)
    chunks: list[bytes] = []

    def drain() -> None:
        os.set_blocking(rfd, True)
        while chunk := os.read(rfd, 65536):
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    logged = 0
    try:
        deadline = time.monotonic() + DEADLINE
        while alog.dropped == 0:  # the pipe fills, the writer blocks, the buffer fills
            assert time.monotonic() < deadline, "no line was dropped"
            for s in numbered(100, start=logged, pad="x" * 100):
                alog.log(s)
            logged += 100
    finally:
        reader.start()
        alog.close(timeout=DEADLINE)
        reader.join(DEADLINE)
        os.close(rfd)
    assert not reader.is_alive()
    lines = b"".join(chunks).decode().splitlines()
    assert alog.dropped > 0 and len(lines) == alog.written == logged - alog.dropped
    numbers = [int(line[:6]) for line in lines]
    assert numbers == sorted(numbers) and all(line.endswith("x" * 100) for line in lines)


def test_write_errors_count_as_drops(caplog: pytest.LogCaptureFixture) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    alog = AccessLog("/dev/full", "$status")
    for s in numbered(3):
        alog.log(s)
    alog.close()
    assert (alog.written, alog.dropped) == (0, 3)
    assert any("write failed" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


@pytest.mark.parametrize("target", ["stdout", "stderr"])
def test_standard_streams(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    alog = AccessLog(target, "$status $route")
    alog.log(full_session())
    alog.reopen()  # nothing to reopen
    alog.close()
    out, err = capsys.readouterr()
    assert (out if target == "stdout" else err) == "201 api\n"
    assert (err if target == "stdout" else out) == ""


def test_off_logs_nothing_and_starts_no_thread() -> None:
    calls: list[Any] = []

    def formatter(session: Session, error: Any = None) -> str:
        calls.append(session)
        return "line"

    before = writer_threads()
    alog = AccessLog("off", formatter)
    assert alog.log(full_session(), ERROR) is None
    alog.reopen()
    alog.close()
    assert calls == [] and writer_threads() == before and (alog.written, alog.dropped) == (0, 0)


def test_formats_given_by_name_list_or_function(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    for spec in ("json", ["status"], compile_template("$status"), "combined"):
        alog = AccessLog(str(path), spec)
        alog.log(full_session())
        alog.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["status"] == 201 and json.loads(lines[1]) == {"status": 201}
    assert lines[2] == "201" and COMBINED.fullmatch(lines[3])


def test_a_bad_path_fails_at_construction(tmp_path: Path) -> None:
    before = writer_threads()
    with pytest.raises(FileNotFoundError):
        AccessLog(str(tmp_path / "missing" / "access.log"))
    assert writer_threads() == before


def test_pid_is_the_serving_process() -> None:
    import os

    assert json.loads(compile_json(["pid"])(bare_session(), None)) == {"pid": os.getpid()}

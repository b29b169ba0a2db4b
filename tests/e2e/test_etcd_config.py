"""A config kept in a real etcd (``ferryman run|check -c etcd://...``, ``config push|pull``):
served through a real listener, reloaded when a key changes, a bad key refused with its name,
the watch surviving an etcd restart and a compaction, the admin API writing the keys back."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.etcd import Etcd, running_etcd, site_keys
from support.process import (
    LOCAL,
    HttpOrigin,
    children,
    ferryman_cli,
    free_port,
    gone,
    http_get,
    running,
    wait_until,
)

from ferryman.config.etcd import EtcdSource
from ferryman.config.etcd_watch import EtcdWatcher

RELOAD_TIMEOUT = 15.0  # a change must be served within this (the debounce is 0.2 s)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    with running_etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


def seed(etcd: Etcd, keys: dict[str, str]) -> None:
    for key, value in keys.items():
        etcd.put(key, value)


def body(port: int) -> bytes:
    return http_get(port, "/")[1]


def admin_json(port: int, method: str = "GET", path: str = "/api/v1/history", data: bytes | None = None) -> tuple[int, dict]:
    import http.client

    conn = http.client.HTTPConnection(LOCAL, port, timeout=10)
    try:
        conn.request(method, path, body=data, headers={"X-Ferryman-UI": "1"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


# serving and reloading ------------------------------------------------------------------------
def test_run_serves_the_keys_and_a_changed_key_moves_traffic(etcd: Etcd, origins: tuple[HttpOrigin, HttpOrigin], prefix: str) -> None:
    a, b = origins
    port, admin = free_port(), free_port()
    seed(etcd, site_keys(prefix, port, a.addr, admin=admin))
    with running(etcd.url(prefix)) as proc:  # type: ignore[arg-type]
        proc.wait_ready()
        assert body(port) == b"a"
        etcd.put(f"{prefix}/upstreams/app", f'backends = ["{b.addr}"]\n')
        wait_until(lambda: body(port) == b"b", RELOAD_TIMEOUT, "traffic to follow the new upstream")
        status, history = admin_json(admin)
        assert status == 200
        latest = history["entries"][0]
        assert (latest["action"], latest["ok"]) == ("etcd", True), latest
        status, source = admin_json(admin, path="/api/v1/config/source")
        assert status == 200 and source["source"] == "etcd" and source["prefix"] == prefix
        assert source["url"] == etcd.url(prefix) and source["revision"] >= source["loaded_revision"] > 0
        assert tomllib.loads(source["text"])["upstreams"]["app"]["backends"] == [b.addr]
        reload = ferryman_cli("reload", "-c", etcd.url(prefix), "--pid", str(proc.pid))  # validates, then SIGHUP
        assert reload.returncode == 0, reload.stderr
        wait_until(lambda: admin_json(admin)[1]["entries"][0]["action"] == "signal", RELOAD_TIMEOUT, "the signalled reload")
        assert admin_json(admin)[1]["entries"][0]["ok"]
        assert proc.stop(10) == 0


def master_pid(pid_file: Path) -> int:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return 0


class NewConnections:
    """A client on a thread: one request per connection until stopped; failures are kept."""

    def __init__(self, port: int) -> None:
        self.port, self.done, self.failures = port, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for _ in range(100_000):  # bounded; stopped long before
            if self._stop.is_set():
                return
            try:
                if body(self.port) in (b"a", b"b"):
                    self.done += 1
                else:
                    self.failures.append("unexpected body")
            except OSError as exc:
                self.failures.append(repr(exc))

    def __enter__(self) -> NewConnections:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_binary_upgrade_keeps_serving_and_the_new_master_watches_etcd(etcd: Etcd, origins: tuple[HttpOrigin, HttpOrigin], prefix: str, tmp_path: Path, workers: int) -> None:
    """``ferryman upgrade -c etcd://...``: the new master is started on the same URL, takes the
    listening sockets, reads the keys itself and watches them; no request fails meanwhile."""
    a, b = origins
    port = free_port()
    pid_file = tmp_path / "ferryman.pid"
    keys = site_keys(prefix, port, a.addr, workers=workers)
    keys[f"{prefix}/server"] += f'pid_file = "{pid_file}"\n'
    seed(etcd, keys)
    successor = 0
    try:
        with running(etcd.url(prefix)) as proc:  # type: ignore[arg-type]
            proc.wait_ready()
            wait_until(lambda: master_pid(pid_file) == proc.pid, 10, "the pid file")
            assert body(port) == b"a"
            with NewConnections(port) as client:
                wait_until(lambda: client.done > 0, 10, "traffic")
                upgrade = ferryman_cli("upgrade", "-c", etcd.url(prefix))  # validates the keys, then SIGUSR2 to the pid file's process
                assert upgrade.returncode == 0, upgrade.stderr
                wait_until(lambda: master_pid(pid_file) not in (0, proc.pid), 30, "a new master in the pid file")
                successor = master_pid(pid_file)
                wait_until(lambda: gone(proc.pid), 15, "the old master to drain and exit")
                before = client.done
                wait_until(lambda: client.done > before, 10, "traffic through the new master")
            assert not client.failures, client.failures[:5]
            etcd.put(f"{prefix}/upstreams/app", f'backends = ["{b.addr}"]\n')  # the new master's own watch
            wait_until(lambda: body(port) == b"b", RELOAD_TIMEOUT, "the new master to follow the changed key")
            if workers > 1:
                assert len(children(successor)) == workers
            os.kill(successor, signal.SIGTERM)
            wait_until(lambda: gone(successor), 15, "the new master to stop")
    finally:
        if successor and not gone(successor):
            os.kill(successor, signal.SIGKILL)


def test_an_upgrade_whose_keys_do_not_validate_keeps_the_old_master(etcd: Etcd, origins: tuple[HttpOrigin, HttpOrigin], prefix: str) -> None:
    """SIGUSR2 re-reads the keys before starting anything: a bad key is logged with its name
    and the running master serves on (the keys it loaded before stay in force)."""
    a, _ = origins
    port = free_port()
    seed(etcd, site_keys(prefix, port, a.addr))
    with running(etcd.url(prefix)) as proc:  # type: ignore[arg-type]
        proc.wait_ready()
        assert body(port) == b"a"
        etcd.put(f"{prefix}/upstreams/app", 'backends = ["127.0.0.1:99999"]\n')  # the watch refuses it too
        proc.wait_for(rf"upstreams\.app\.backends\[0\]: .*\(etcd key {prefix}/upstreams/app\)", RELOAD_TIMEOUT)
        os.kill(proc.pid, signal.SIGUSR2)
        proc.wait_for(r"upgrade failed, still serving: etcd://.* is not valid", timeout=30)
        assert body(port) == b"a"
        assert not children(proc.pid)  # no new master was started beside it
        assert proc.stop(10) == 0


def test_a_bad_key_is_refused_with_its_name_and_the_old_config_serves_on(etcd: Etcd, origins: tuple[HttpOrigin, HttpOrigin], prefix: str) -> None:
    a, b = origins
    port, admin = free_port(), free_port()
    seed(etcd, site_keys(prefix, port, a.addr, admin=admin))
    with running(etcd.url(prefix)) as proc:  # type: ignore[arg-type]
        proc.wait_ready()
        etcd.put(f"{prefix}/upstreams/app", 'backends = ["127.0.0.1:99999"]\n')
        line = proc.wait_for(rf"upstreams\.app\.backends\[0\]: .*\(etcd key {prefix}/upstreams/app\)", RELOAD_TIMEOUT)
        assert "out of range" in line
        assert body(port) == b"a"
        etcd.put(f"{prefix}/upstreams/app", 'backends = ["127.0.0.1:1"]\nlb = = "p2c"\n')  # TOML that does not parse
        proc.wait_for(rf"upstreams\.app: invalid TOML: .*\(at line 2, column 6\) \(etcd key {prefix}/upstreams/app\)", RELOAD_TIMEOUT)
        etcd.put(f"{prefix}/upstream/typo", 'backends = ["127.0.0.1:1"]\n')  # a category that does not exist
        proc.wait_for(rf"etcd key {prefix}/upstream/typo: unknown category 'upstream'", RELOAD_TIMEOUT)
        assert body(port) == b"a"
        etcd.delete(f"{prefix}/upstream/typo")
        etcd.put(f"{prefix}/upstreams/app", f'backends = ["{b.addr}"]\n')  # fixed: served at last
        wait_until(lambda: body(port) == b"b", RELOAD_TIMEOUT, "the fixed key to be served")
        entries = admin_json(admin)[1]["entries"]
        refused = [e for e in entries if e["action"] == "etcd" and not e["ok"]]
        assert refused and any(f"(etcd key {prefix}/upstreams/app)" in e["message"] for e in refused), entries
        assert proc.stop(10) == 0


def test_with_workers_the_master_watches_and_every_worker_follows(etcd: Etcd, origins: tuple[HttpOrigin, HttpOrigin], prefix: str) -> None:
    a, b = origins
    port, admin = free_port(), free_port()
    seed(etcd, site_keys(prefix, port, a.addr, workers=2, admin=admin))
    with running(etcd.url(prefix)) as proc:  # type: ignore[arg-type]
        proc.wait_ready()
        wait_until(lambda: len(children(proc.pid)) == 2, 10, "two workers")
        etcd.put(f"{prefix}/upstreams/app", f'backends = ["{b.addr}"]\n')
        wait_until(lambda: all(body(port) == b"b" for _ in range(10)), RELOAD_TIMEOUT, "both workers to follow the key")
        entries = admin_json(admin)[1]["entries"]
        assert entries[0]["action"] == "etcd" and entries[0]["ok"], entries
        victim = min(children(proc.pid))  # a worker started now reads what the master reloaded
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in children(proc.pid) and len(children(proc.pid)) == 2, 10, "a replacement worker")
        assert {body(port) for _ in range(10)} == {b"b"}
        assert proc.stop(10) == 0


def test_the_watch_survives_an_etcd_restart(tmp_path: Path, origins: tuple[HttpOrigin, HttpOrigin]) -> None:
    a, b = origins
    port, prefix = free_port(), "/restart"
    with running_etcd(tmp_path) as etcd:
        seed(etcd, site_keys(prefix, port, a.addr))
        with running(etcd.url(prefix)) as proc:  # type: ignore[arg-type]
            proc.wait_ready()
            assert body(port) == b"a"
            etcd.stop()
            proc.wait_for(r"etcd watch on .* lost", 10)
            assert body(port) == b"a"  # serving goes on without etcd
            etcd.start()
            proc.wait_for(r"etcd watch on .*: connected again", RELOAD_TIMEOUT)
            etcd.put(f"{prefix}/upstreams/app", f'backends = ["{b.addr}"]\n')
            wait_until(lambda: body(port) == b"b", RELOAD_TIMEOUT, "a change after the restart to be served")
            assert proc.stop(10) == 0


def test_a_change_made_while_the_watch_was_down_is_found_by_rereading(tmp_path: Path, origins: tuple[HttpOrigin, HttpOrigin], caplog: pytest.LogCaptureFixture) -> None:
    """etcd comes back with a change the watch never saw as an event (written while it was
    reconnecting, then compacted away): the re-read after reconnecting finds it."""
    a, b = origins
    prefix = "/reread"
    caplog.set_level(logging.INFO, logger="ferryman.config.etcd_watch")
    with running_etcd(tmp_path) as etcd:
        seed(etcd, site_keys(prefix, free_port(), a.addr))
        source = EtcdSource.parse(etcd.url(prefix))
        source.load()
        loaded = source.revision
        etcd.put(f"{prefix}/upstreams/app", f'backends = ["{b.addr}"]\n')
        etcd.put(f"{prefix}/routes/all", 'upstream = "app"\npath = "/"\n')
        etcd.compact(etcd.revision())  # the revision after `loaded` is gone
        seen: list[int] = []
        changed = threading.Event()
        watcher = EtcdWatcher(source, lambda revision: (seen.append(revision), changed.set()))
        watcher.start()
        try:
            assert changed.wait(RELOAD_TIMEOUT), "the watcher reported no change"
        finally:
            watcher.stop()
        assert seen and seen[0] > loaded
        assert f"revision {loaded + 1} compacted; re-reading the keys" in caplog.text
        assert b.addr in source.pull()[1]


def test_several_endpoints_skip_a_dead_one(etcd: Etcd, origins: tuple[HttpOrigin, HttpOrigin], prefix: str) -> None:
    a, b = origins
    port, dead = free_port(), free_port()
    seed(etcd, site_keys(prefix, port, a.addr))
    url = f"etcd://{LOCAL}:{dead},{etcd.endpoint}{prefix}?timeout=2s"
    assert ferryman_cli("check", "-c", url).returncode == 0
    with running(url) as proc:  # type: ignore[arg-type]
        proc.wait_ready()
        etcd.put(f"{prefix}/upstreams/app", f'backends = ["{b.addr}"]\n')
        wait_until(lambda: body(port) == b"b", RELOAD_TIMEOUT, "a change read through the live endpoint")
        assert proc.stop(10) == 0
    gone = ferryman_cli("check", "-c", f"etcd://{LOCAL}:{dead}{prefix}?timeout=1s")
    assert gone.returncode == 1 and f"cannot reach etcd ({LOCAL}:{dead}: Connection refused)" in gone.stderr, gone.stderr


# the command line and the admin API -----------------------------------------------------------
def test_check_push_pull_round_trip(etcd: Etcd, tmp_path: Path, prefix: str) -> None:
    port = free_port()
    url = etcd.url(prefix)
    text = f"""
[server]
workers = 1

[listeners.web]
addr = "{LOCAL}:{port}"
protocol = "http"
routes = ["all"]

[routes.all]
upstream = "app"
filters = ["hello"]

[filters.hello]
kind = "mock"
body = "hi \\"there\\""

[upstreams.app]
backends = ["127.0.0.1:9", "127.0.0.1:10 weight=2"]
health_check = {{ kind = "tcp", interval = "5s" }}

[upstreams.spare]
backends = ["127.0.0.1:11"]
"""
    path = tmp_path / "site.toml"
    path.write_text(text)
    pushed = ferryman_cli("config", "push", str(path), url)
    assert pushed.returncode == 0, pushed.stderr
    assert "6 key(s) written, 0 deleted" in pushed.stdout
    assert set(etcd.keys(prefix)) == {f"{prefix}/{k}" for k in ("server", "listeners/web", "routes/all", "filters/hello", "upstreams/app", "upstreams/spare")}
    checked = ferryman_cli("check", "-c", url)
    assert checked.returncode == 0 and "ok at revision" in checked.stdout, checked.stderr
    pulled = ferryman_cli("config", "pull", url)
    assert pulled.returncode == 0, pulled.stderr
    assert tomllib.loads(pulled.stdout) == tomllib.loads(text)

    path.write_text(text.split("[upstreams.spare]")[0])  # one upstream fewer: its key goes
    again = ferryman_cli("config", "push", str(path), url)
    assert again.returncode == 0 and "0 key(s) written, 1 deleted" in again.stdout, again.stdout + again.stderr
    assert etcd.get(f"{prefix}/upstreams/spare") is None

    before = etcd.revision()
    path.write_text(text.replace('upstream = "app"', 'upstream = "nope"'))  # invalid: nothing written
    bad = ferryman_cli("config", "push", str(path), url)
    assert bad.returncode == 2 and "routes.all.upstream" in bad.stderr and "nothing written" in bad.stderr, bad.stderr
    assert etcd.revision() == before

    etcd.put(f"{prefix}/upstreams/app", 'backends = ["127.0.0.1:9"]\nlb = "fastest"\n')
    refused = ferryman_cli("check", "-c", url)
    assert refused.returncode == 2
    assert "upstreams.app.lb: " in refused.stderr and f"(etcd key {prefix}/upstreams/app)" in refused.stderr, refused.stderr

    for bad_url, message in (
        (f"etcd://{etcd.endpoint}", "no key prefix"),
        (f"etcd://{etcd.endpoint}{prefix}?timeout=soon", "timeout: "),
        (f"etcd://{etcd.endpoint}{prefix}?user=root", "user and password go together"),
        (f"etcd://{etcd.endpoint}{prefix}?colour=red", "unknown parameter 'colour'"),
    ):
        result = ferryman_cli("check", "-c", bad_url)
        assert result.returncode == 2 and "bad etcd URL" in result.stderr and message in result.stderr, (bad_url, result.stderr)


def test_admin_apply_and_rollback_write_the_keys(etcd: Etcd, origins: tuple[HttpOrigin, HttpOrigin], prefix: str) -> None:
    a, b = origins
    port, admin = free_port(), free_port()
    keys = site_keys(prefix, port, a.addr, admin=admin)
    keys[f"{prefix}/upstreams/old"] = 'backends = ["127.0.0.1:9"]\n'
    seed(etcd, keys)
    with running(etcd.url(prefix)) as proc:  # type: ignore[arg-type]
        proc.wait_ready()
        status, source = admin_json(admin, path="/api/v1/config/source")
        assert status == 200
        doc = tomllib.loads(source["text"])
        sections = source["text"].replace(a.addr, b.addr).split("\n\n")  # one [table] each
        new = "\n\n".join(section for section in sections if not section.startswith("[upstreams.old]"))
        assert "old" not in tomllib.loads(new)["upstreams"]
        status, answer = admin_json(admin, "POST", "/api/v1/config/apply", new.encode())
        assert (status, answer["applied"]) == (200, True), answer
        assert body(port) == b"b"
        assert etcd.get(f"{prefix}/upstreams/old") is None  # gone from the new config, gone from etcd
        assert etcd.get(f"{prefix}/upstreams/app") is not None and b.addr in etcd.get(f"{prefix}/upstreams/app")  # type: ignore[operator]
        status, answer = admin_json(admin, "POST", "/api/v1/config/apply", new.replace('upstream = "app"', 'upstream = "nope"').encode())
        assert status == 422 and answer["errors"][0]["path"] == "routes.all.upstream", answer
        status, answer = admin_json(admin, "POST", "/api/v1/config/rollback")
        assert (status, answer["rolled_back"]) == (200, True), answer
        assert body(port) == b"a"
        assert tomllib.loads(admin_json(admin, path="/api/v1/config/source")[1]["text"]) == doc
        actions = [e["action"] for e in admin_json(admin)[1]["entries"]]
        assert actions[:3] == ["rollback", "apply", "apply"] and "etcd" not in actions, actions  # no second reload by the watch
        assert proc.stop(10) == 0


def test_user_and_password_authenticate(tmp_path: Path, origins: tuple[HttpOrigin, HttpOrigin]) -> None:
    a, b = origins
    port, admin, prefix, password = free_port(), free_port(), "/auth", "s3cret+/&"
    with running_etcd(tmp_path) as etcd:
        etcd.enable_auth(password)
        token = etcd.token(password)
        config = tmp_path / "site.toml"
        config.write_text("".join(f"[{k.removeprefix(prefix + '/').replace('/', '.')}]\n{v}\n" for k, v in site_keys(prefix, port, a.addr, admin=admin).items()))
        quoted = "s3cret%2B%2F%26"
        url = etcd.url(prefix, f"user=root&password={quoted}")
        refused = ferryman_cli("config", "push", str(config), etcd.url(prefix, "user=root&password=wrong"))
        assert refused.returncode == 1 and "authentication failed" in refused.stderr, refused.stderr
        assert "wrong" not in refused.stderr
        anonymous = ferryman_cli("check", "-c", etcd.url(prefix))
        assert anonymous.returncode == 1, anonymous.stderr
        pushed = ferryman_cli("config", "push", str(config), url)
        assert pushed.returncode == 0, pushed.stderr
        assert password not in pushed.stdout and quoted not in pushed.stdout
        with running(url) as proc:  # type: ignore[arg-type]
            proc.wait_ready()
            assert body(port) == b"a"
            etcd.put(f"{prefix}/upstreams/app", f'backends = ["{b.addr}"]\n', token)
            wait_until(lambda: body(port) == b"b", RELOAD_TIMEOUT, "a change seen through an authenticated watch")
            source = admin_json(admin, path="/api/v1/config/source")[1]
            assert source["url"] == etcd.url(prefix, "user=root")  # never the password
            etcd.stop()  # a restarted etcd forgets its tokens: the watch authenticates again
            etcd.start()
            proc.wait_for(r"etcd watch on .*: connected again", RELOAD_TIMEOUT)
            etcd.put(f"{prefix}/upstreams/app", f'backends = ["{a.addr}"]\n', etcd.token(password))
            wait_until(lambda: body(port) == b"a", RELOAD_TIMEOUT, "a change after etcd forgot the token")
            assert quoted not in proc.stderr and password not in proc.stderr
            assert proc.stop(10) == 0

"""A real etcd (Debian's ``etcd-server``) on loopback: free ports, its own data directory,
started and stopped by its pid. Tests write and read keys through etcd's JSON gateway with
this module's own few lines, not with ferryman's client, so a client bug cannot hide itself.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support.process import LOCAL, free_port, wait_until

START_TIMEOUT = 20.0


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Etcd:
    """One single-member etcd cluster; :meth:`stop` then :meth:`start` restarts it on the
    same ports and data (a restart as an operator does it)."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("etcd")
        assert binary, "etcd is not installed (Debian package etcd-server; scripts/test.sh installs it)"
        self.binary, self.directory = binary, directory
        self.port, self.peer_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "etcd.log"

    @property
    def endpoint(self) -> str:
        return f"{LOCAL}:{self.port}"

    def url(self, prefix: str, query: str = "") -> str:
        return f"etcd://{self.endpoint}{prefix}" + (f"?{query}" if query else "")

    def start(self) -> None:
        client, peer = f"http://{LOCAL}:{self.port}", f"http://{LOCAL}:{self.peer_port}"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--name", "default", "--data-dir", str(self.directory / "data"),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"default={peer}"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            wait_until(self.healthy, START_TIMEOUT, f"etcd on {self.endpoint} to answer /health")
        except AssertionError:
            self.stop()
            raise AssertionError(f"etcd did not start; its log:\n{self.log_path.read_text()[-3000:]}") from None

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"etcd exited with {self.proc.returncode}; its log:\n{self.log_path.read_text()[-3000:]}")
        try:
            status, body = self._request("GET", "/health", None, timeout=1)
        except OSError:
            return False
        return status == 200 and json.loads(body).get("health") == "true"

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s) to the pid this started, and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    # keys ----------------------------------------------------------------------------------------
    def call(self, method: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": token} if token else {}
        status, answer = self._request("POST", f"/v3/{method}", json.dumps(body).encode(), headers=headers)
        assert status == 200, f"etcd {method}: HTTP {status}: {answer[:300]!r}"
        return json.loads(answer)

    def put(self, key: str, value: str, token: str | None = None) -> int:
        """The revision of the write."""
        return int(self.call("kv/put", {"key": _b64(key), "value": _b64(value)}, token)["header"]["revision"])

    def delete(self, key: str) -> None:
        self.call("kv/deleterange", {"key": _b64(key)})

    def get(self, key: str, token: str | None = None) -> str | None:
        kvs = self.call("kv/range", {"key": _b64(key)}, token).get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    def keys(self, prefix: str, token: str | None = None) -> dict[str, str]:
        """Every key under ``prefix/`` and its value."""
        start = prefix + "/"
        body = {"key": _b64(start), "range_end": _b64(prefix + "0")}
        kvs = self.call("kv/range", body, token).get("kvs", [])
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode() for kv in kvs}

    def revision(self) -> int:
        return int(self.call("kv/range", {"key": _b64("/")})["header"]["revision"])

    def compact(self, revision: int) -> None:
        self.call("kv/compaction", {"revision": str(revision), "physical": True})

    def enable_auth(self, password: str) -> None:
        """A ``root`` user with ``password`` (and the root role), then auth on."""
        self.call("auth/user/add", {"name": "root", "password": password})
        self.call("auth/role/add", {"name": "root"})
        self.call("auth/user/grant", {"user": "root", "role": "root"})
        self.call("auth/enable", {})

    def token(self, password: str) -> str:
        return self.call("auth/authenticate", {"name": "root", "password": password})["token"]

    def _request(self, method: str, path: str, body: bytes | None, *, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(LOCAL, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


@contextmanager
def running_etcd(directory: Path) -> Iterator[Etcd]:
    server = Etcd(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()

"""A real etcd (Debian's ``etcd-server``) on loopback: free ports, its own data directory,
started and stopped by its pid. Tests write and read keys through etcd's JSON gateway with
this module's own few lines, not with ferryman's client, so a client bug cannot hide itself.

With an :class:`EtcdTls` it serves clients over HTTPS only (``--cert-file``/``--key-file``),
and with ``client_cert_auth`` demands a client certificate signed by ``ca``
(``--client-cert-auth --trusted-ca-file``); its own requests then use TLS too.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.certs import Authority
from support.process import LOCAL, free_port, wait_until

START_TIMEOUT = 20.0


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass(frozen=True)
class EtcdTls:
    """PEM files: etcd's certificate and key, the CA that signed them (and that etcd trusts
    for client certificates), and the client certificate the test side presents."""

    cert: str
    key: str
    ca: str
    client_cert: str
    client_key: str
    client_cert_auth: bool = False

    @classmethod
    def make(cls, authority: Authority, *, client_cert_auth: bool = False) -> EtcdTls:
        """etcd's certificate (for 127.0.0.1 only) and a client certificate, both from
        ``authority``, written into its directory."""
        # etcd's JSON gateway dials etcd's gRPC port with etcd's own certificate, so with
        # --client-cert-auth it must be a client certificate too (else every request gets 503)
        server = authority.issue("etcd", ips=(LOCAL,), client_too=True, file="etcd-server")
        client = authority.issue("etcd test client", client=True, file="etcd-test-client")
        return cls(server.cert, server.key, authority.cert, client.cert, client.key, client_cert_auth)

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        context.load_cert_chain(self.client_cert, self.client_key)
        return context


class Etcd:
    """One single-member etcd cluster; :meth:`stop` then :meth:`start` restarts it on the
    same ports and data (a restart as an operator does it)."""

    def __init__(self, directory: Path, tls: EtcdTls | None = None) -> None:
        binary = shutil.which("etcd")
        assert binary, "etcd is not installed (Debian package etcd-server; scripts/test.sh installs it)"
        self.binary, self.directory, self.tls = binary, directory, tls
        self.port, self.peer_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "etcd.log"
        self._context = tls.context() if tls is not None else None

    @property
    def endpoint(self) -> str:
        return f"{LOCAL}:{self.port}"

    def url(self, prefix: str, query: str = "") -> str:
        return f"etcd://{self.endpoint}{prefix}" + (f"?{query}" if query else "")

    def tls_query(self, *, client: bool = True) -> str:
        """The URL query that trusts this etcd's CA (and presents the client certificate)."""
        assert self.tls is not None
        query = f"ca={self.tls.ca}"
        return query + (f"&cert={self.tls.client_cert}&key={self.tls.client_key}" if client else "")

    def start(self) -> None:
        scheme = "https" if self.tls is not None else "http"
        client, peer = f"{scheme}://{LOCAL}:{self.port}", f"http://{LOCAL}:{self.peer_port}"
        tls: list[str] = []
        if self.tls is not None:
            tls = ["--cert-file", self.tls.cert, "--key-file", self.tls.key]
            if self.tls.client_cert_auth:
                tls += ["--client-cert-auth", "--trusted-ca-file", self.tls.ca]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--name", "default", "--data-dir", str(self.directory / "data"),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"default={peer}", *tls],
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
        if self._context is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(LOCAL, self.port, timeout=timeout, context=self._context)
        else:
            conn = http.client.HTTPConnection(LOCAL, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


@contextmanager
def running_etcd(directory: Path, tls: EtcdTls | None = None) -> Iterator[Etcd]:
    server = Etcd(directory, tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()

def site_keys(prefix: str, port: int, backend: str, *, workers: int = 1, admin: int | None = None) -> dict[str, str]:
    """The keys of a small site: one HTTP listener on ``port``, one route to ``backend``."""
    keys = {
        f"{prefix}/server": f'workers = {workers}\ngrace_period = "1s"\n',
        f"{prefix}/listeners/web": f'addr = "{LOCAL}:{port}"\nprotocol = "http"\nroutes = ["all"]\n',
        f"{prefix}/routes/all": 'upstream = "app"\n',
        f"{prefix}/upstreams/app": f'backends = ["{backend}"]\nconnect_timeout = "2s"\n',
    }
    if admin is not None:
        keys[f"{prefix}/admin"] = f'addr = "{LOCAL}:{admin}"\n'
    return keys

"""Let's Encrypt's test CA ``pebble`` (and ``pebble-challtestsrv`` as its DNS) on loopback.

:func:`start_pebble` writes pebble's config (ACME and management on free ports, its HTTPS
certificate from a test :class:`~support.certs.Authority`, ``httpPort`` / ``tlsPort`` where
the challenges are answered), starts ``pebble-challtestsrv`` answering every A query with
127.0.0.1 (its HTTP/TLS challenge servers off), points pebble at it with ``-dnsserver``
and waits until the directory answers. ``PEBBLE_VA_NOSLEEP=1`` (validate at once) and
``PEBBLE_WFE_NONCEREJECT=0`` (no spurious badNonce) unless ``nonce_reject`` is given, and
``PEBBLE_AUTHZREUSE=0`` (every order validates its names afresh).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from support.certs import Authority

LOCAL = "127.0.0.1"
PEBBLE = "/usr/bin/pebble"
CHALLTESTSRV = "/usr/bin/pebble-challtestsrv"
START_TIMEOUT = 15.0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOCAL, 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free for both TCP and UDP now (the DNS server takes both)."""
    ports: list[int] = []
    for _ in range(count * 20):
        if len(ports) == count:
            break
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind((LOCAL, port))
        except OSError:
            continue
        if port not in ports:
            ports.append(port)
    assert len(ports) == count, "could not find free ports"
    return ports


@dataclass
class _Output:
    """A child's combined output, read on a thread (so its pipe never fills)."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.thread.join(timeout=5)
        if self.proc.stdout is not None and not self.thread.is_alive():
            self.proc.stdout.close()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class Pebble:
    """A running pebble: ``directory`` (URL), ``ca`` (PEM file trusting its HTTPS),
    :meth:`root` (the issuing root, PEM), :meth:`add_a` (a DNS answer for one host)."""

    def __init__(self, tmp: Path, *, http_port: int, tls_port: int, nonce_reject: int = 0, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        authority = Authority(tmp, cn="pebble test CA")
        served = authority.issue("pebble", dns=("localhost",), ips=(LOCAL,), file="pebble")
        self.ca = authority.cert
        acme_port, management_port, dns_port, challtest_port = free_ports(4)
        self.directory = f"https://{LOCAL}:{acme_port}/dir"
        self.management = f"https://{LOCAL}:{management_port}"
        self.challtestsrv_url = f"http://{LOCAL}:{challtest_port}"
        config = tmp / "pebble-config.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"{LOCAL}:{acme_port}",
            "managementListenAddress": f"{LOCAL}:{management_port}",
            "certificate": served.cert,
            "privateKey": served.key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}))
        self._dns = _Output(subprocess.Popen(
            [CHALLTESTSRV, "-defaultIPv4", LOCAL, "-defaultIPv6", "", "-dns01", f"{LOCAL}:{dns_port}",
             "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", f"{LOCAL}:{challtest_port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
        environment = {
            **os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": str(nonce_reject), "PEBBLE_AUTHZREUSE": "0", **(env or {}),
        }
        self._pebble = _Output(subprocess.Popen(
            [PEBBLE, "-config", str(config), "-dnsserver", f"{LOCAL}:{dns_port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
        ))
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(self.directory, context=self._context(), timeout=2) as answer:
                    json.load(answer)
                with urllib.request.urlopen(f"{self.challtestsrv_url}/", timeout=2):
                    pass
                return
            except OSError as exc:  # not listening yet (URLError is an OSError)
                if getattr(exc, "code", None) is not None:  # an HTTP error status: it is up
                    return
                for child in (self._pebble, self._dns):
                    if child.proc.poll() is not None:
                        raise AssertionError(f"{child.proc.args[0]} exited with {child.proc.returncode}:\n{child.text}") from exc
                if time.monotonic() > deadline:
                    raise AssertionError(f"pebble did not answer within {START_TIMEOUT}s:\n{self._pebble.text}\n{self._dns.text}") from exc
                time.sleep(0.05)

    def root(self) -> bytes:
        """The root certificate pebble issues under (PEM; made anew at each start)."""
        with urllib.request.urlopen(f"{self.management}/roots/0", context=self._context(), timeout=10) as answer:
            return answer.read()

    def add_a(self, host: str, address: str) -> None:
        """Make pebble's DNS answer ``host`` with ``address`` (instead of 127.0.0.1)."""
        body = json.dumps({"host": host, "addresses": [address]}).encode()
        request = urllib.request.Request(f"{self.challtestsrv_url}/add-a", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    @property
    def log(self) -> str:
        return self._pebble.text

    def close(self) -> None:
        self._pebble.stop()
        self._dns.stop()


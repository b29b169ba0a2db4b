"""ACME against Let's Encrypt's test CA ``pebble`` on loopback.

Through a running ``ferryman run``: HTTP-01 (answered before routing on a plain listener,
with two workers) and TLS-ALPN-01 issuance, the issued chain verified against pebble's
root, the files' permissions; renewal swapping the certificate while the listening socket
and an established connection stay; failures (an unreachable challenge) logged with the
CA's problem while the placeholder or the last certificate keeps serving. In process: the
client retries badNonce answers, and a name pebble refuses comes back as its problem.
"""

from __future__ import annotations

import asyncio
import http.client
import random
import socket
import ssl
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from support.certs import Authority
from support.pebble import Pebble, free_port
from support.process import LOCAL, HttpOrigin, Running, running, wait_until

from ferryman.acme.certs import PLACEHOLDER_ORG, inspect, tls_alpn_certificate
from ferryman.acme.challenges import TlsAlpnResponder
from ferryman.acme.client import AcmeClient
from ferryman.acme.http import HttpsClient, TransportError
from ferryman.acme.messages import AcmeError
from ferryman.acme.storage import Storage
from ferryman.net.tls import CertificateSpec, CertStore

ISSUE_TIMEOUT = 30.0


# helpers ---------------------------------------------------------------------------------------
@pytest.fixture
def origin() -> Iterator[HttpOrigin]:
    server = HttpOrigin()
    try:
        yield server
    finally:
        server.close()


def _unverified() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connect(port: int, parity: int | None = None) -> socket.socket:
    """A TCP connection to ``port``; with ``parity``, from a local port p with p % 2 ==
    parity (a listener balancing by ``port`` hands it to that worker of two)."""
    for _ in range(200):
        sock = socket.socket()
        sock.settimeout(5)
        if parity is not None:  # bind(port 0) picks odd ports on Linux: choose one
            try:
                sock.bind((LOCAL, random.randrange(20000, 60000, 2) + parity))
            except OSError:
                sock.close()
                continue
        try:
            sock.connect((LOCAL, port))
        except BaseException:
            sock.close()
            raise
        return sock
    raise AssertionError(f"no free local port of parity {parity}")


def served(port: int, sni: str, parity: int | None = None) -> x509.Certificate:
    """The leaf a new TLS connection with ``sni`` is served."""
    with connect(port, parity) as raw, _unverified().wrap_socket(raw, server_hostname=sni) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))  # type: ignore[arg-type]


def org(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(values[0].value) if values else ""


def from_pebble(port: int, sni: str, parity: int | None = None) -> bool:
    """True once ``sni`` is served a certificate pebble issued (not the placeholder)."""
    try:
        cert = served(port, sni, parity)
    except OSError:
        return False
    return cert.issuer != cert.subject and "Pebble" in cert.issuer.rfc4514_string()


def https_get(port: int, host: str, root: Path, path: str = "/", parity: int | None = None) -> tuple[int, bytes]:
    """(status, body) of a request over TLS verified against pebble's root (chain and name)."""
    ctx = ssl.create_default_context(cafile=str(root))
    with connect(port, parity) as raw, ctx.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def listen_inode(port: int) -> str:
    """The inode of the socket listening on ``port`` (from /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            return fields[9]
    raise AssertionError(f"nothing listens on port {port}")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def count(proc: Running, text: str) -> int:
    return sum(text in line for line in proc.stderr.splitlines())


def write_config(tmp: Path, pebble: Pebble, body: str, *, workers: int = 1) -> Path:
    path = tmp / "ferryman.toml"
    path.write_text(f'[server]\nworkers = {workers}\ngrace_period = "1s"\n\n{body}'.replace("@ACME@", (
        f'directory = "{pebble.directory}", ca = "{pebble.ca}", storage = "{tmp / "acme"}"'
    )))
    return path


def root_file(tmp: Path, pebble: Pebble) -> Path:
    path = tmp / "pebble-root.pem"
    path.write_bytes(pebble.root())
    return path


@pytest.fixture
def ports() -> tuple[int, int]:
    """(http port, tls port) for the ferryman listeners pebble validates against."""
    return free_port(), free_port()


@pytest.fixture
def pebble(tmp_path: Path, ports: tuple[int, int]) -> Iterator[Pebble]:
    server = Pebble(tmp_path / "pebble", http_port=ports[0], tls_port=ports[1])
    try:
        yield server
    finally:
        server.close()


# through ferryman run ------------------------------------------------------------------------------
def test_http01_issues_through_a_plain_listener_before_routing_with_two_workers(
    tmp_path: Path, pebble: Pebble, ports: tuple[int, int], origin: HttpOrigin,
) -> None:
    http_port, tls_port = ports
    config = write_config(tmp_path, pebble, f"""
[listeners.plain]
addr = "{LOCAL}:{http_port}"
protocol = "http"
routes = ["only"]

[listeners.secure]
addr = "{LOCAL}:{tls_port}"
protocol = "http"
upstream = "app"
tls = ["site"]
balance = "port"  # the client's port chooses the worker: the test reaches each one

[routes.only]
host = "only.example"
upstream = "app"

[upstreams.app]
backends = ["{LOCAL}:{origin.port}"]

[certificates.site]
acme = {{ names = ["site.test", "www.site.test"], email = "ops@site.test", @ACME@ }}
""", workers=2)
    with running(config) as proc:
        proc.wait_ready("secure")
        proc.wait_for(r"acme: certificate 'site' \(site.test, www.site.test\) issued: serial", timeout=ISSUE_TIMEOUT)
        # worker 0 issued it; both workers serve it (the other one reads the new file)
        for worker in (0, 1):
            wait_until(lambda: from_pebble(tls_port, "site.test", worker), 10, f"the worker of parity {worker} serving it")
        root = root_file(tmp_path, pebble)
        # the chain verifies against pebble's root, for both names, end to end to the origin
        for worker in (0, 1):
            assert https_get(tls_port, "site.test", root, "/x", worker) == (200, b"origin /x")
            assert https_get(tls_port, "www.site.test", root, "/", worker)[0] == 200
        # the validation request (Host: site.test) matched no route: it was answered before routing
        conn = http.client.HTTPConnection(LOCAL, http_port, timeout=5)
        conn.request("GET", "/.well-known/acme-challenge/unknown-token", headers={"Host": "site.test"})
        assert conn.getresponse().status == 404  # unknown tokens go on to the routes
        conn.close()
        storage = tmp_path / "acme"
        assert mode(storage) == 0o700 and mode(storage / "certificates") == 0o700
        assert mode(storage / "certificates" / "site.pem") == 0o600
        [account] = (storage / "accounts").iterdir()
        assert mode(account) == 0o700 and mode(account / "key.pem") == 0o600 and mode(account / "account.json") == 0o600
        assert not list((storage / "challenges" / "http-01").iterdir())  # withdrawn after validation
        assert proc.stop(10) == 0


def test_renewal_swaps_the_certificate_in_and_a_failed_renewal_keeps_the_last_one(
    tmp_path: Path, pebble: Pebble, ports: tuple[int, int], origin: HttpOrigin,
) -> None:
    http_port, tls_port = ports
    config = write_config(tmp_path, pebble, f"""
[listeners.plain]
addr = "{LOCAL}:{http_port}"
protocol = "http"
upstream = "app"

[listeners.secure]
addr = "{LOCAL}:{tls_port}"
protocol = "http"
upstream = "app"
tls = ["site"]

[upstreams.app]
backends = ["{LOCAL}:{origin.port}"]

[certificates.site]
acme = {{ names = ["renew.test"], renew_before = "3650d", check_interval = "1s", retry_interval = "1s", @ACME@ }}
""")
    with running(config) as proc:
        proc.wait_ready("secure")
        wait_until(lambda: from_pebble(tls_port, "renew.test"), ISSUE_TIMEOUT, "the first certificate")
        inode = listen_inode(tls_port)
        # an established connection, made with the current certificate
        raw = socket.create_connection((LOCAL, tls_port), timeout=10)
        with _unverified().wrap_socket(raw, server_hostname="renew.test") as kept:
            first = x509.load_der_x509_certificate(kept.getpeercert(binary_form=True)).serial_number  # type: ignore[arg-type]
            kept.sendall(b"GET /before HTTP/1.1\r\nHost: renew.test\r\n\r\n")
            assert b"origin /before" in _read_response(kept)
            # renew_before exceeds the lifetime: every check renews, and the new one is served
            wait_until(lambda: served(tls_port, "renew.test").serial_number != first, ISSUE_TIMEOUT, "a renewed certificate")
            assert from_pebble(tls_port, "renew.test")
            kept.sendall(b"GET /after HTTP/1.1\r\nHost: renew.test\r\n\r\n")
            assert b"origin /after" in _read_response(kept)  # the old connection carries on
            assert x509.load_der_x509_certificate(kept.getpeercert(binary_form=True)).serial_number == first  # type: ignore[arg-type]
        assert listen_inode(tls_port) == inode  # the same listening socket throughout
        assert count(proc, "issued: serial") >= 2 and proc.proc.poll() is None
        # now the challenge cannot be reached: renewals fail, the last certificate stays
        pebble.add_a("renew.test", "127.0.0.2")
        failures = count(proc, "not issued")
        wait_until(lambda: count(proc, "not issued") > failures, ISSUE_TIMEOUT, "a failed renewal")
        last = served(tls_port, "renew.test")
        wait_until(lambda: count(proc, "not issued") > failures + 1, ISSUE_TIMEOUT, "a second failed renewal")
        assert served(tls_port, "renew.test").serial_number == last.serial_number and from_pebble(tls_port, "renew.test")
        line = proc.wait_for("not issued")
        assert "urn:ietf:params:acme:error:" in line and "still serving the certificate valid until" in line
        assert proc.stop(10) == 0


def _read_response(sock: ssl.SSLSocket) -> bytes:
    """One response with a Content-Length body from a kept-alive connection."""
    data = b""
    deadline = time.monotonic() + 10
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        assert time.monotonic() < deadline, f"incomplete response: {data!r}"
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_tls_alpn01_issues_on_the_tls_listener_alone(tmp_path: Path, pebble: Pebble, ports: tuple[int, int], origin: HttpOrigin) -> None:
    _, tls_port = ports
    config = write_config(tmp_path, pebble, f"""
[listeners.secure]
addr = "{LOCAL}:{tls_port}"
protocol = "http"
upstream = "app"
tls = ["alpn"]
tls_alpn = ["h2", "http/1.1"]

[upstreams.app]
backends = ["{LOCAL}:{origin.port}"]

[certificates.alpn]
acme = {{ names = ["alpn.test"], challenge = "tls-alpn-01", @ACME@ }}
""")
    with running(config) as proc:
        proc.wait_ready("secure")
        wait_until(lambda: from_pebble(tls_port, "alpn.test"), ISSUE_TIMEOUT, "a certificate validated by TLS-ALPN-01")
        assert https_get(tls_port, "alpn.test", root_file(tmp_path, pebble), "/y") == (200, b"origin /y")
        assert not list((tmp_path / "acme" / "challenges" / "tls-alpn-01").iterdir())  # withdrawn
        assert proc.stop(10) == 0


def test_an_unreachable_challenge_logs_the_problem_and_keeps_the_placeholder(
    tmp_path: Path, pebble: Pebble, ports: tuple[int, int], origin: HttpOrigin,
) -> None:
    http_port, tls_port = ports
    pebble.add_a("unreachable.test", "127.0.0.2")  # nothing listens there
    config = write_config(tmp_path, pebble, f"""
[listeners.plain]
addr = "{LOCAL}:{http_port}"
protocol = "http"
upstream = "app"

[listeners.secure]
addr = "{LOCAL}:{tls_port}"
protocol = "http"
upstream = "app"
tls = ["lost"]

[upstreams.app]
backends = ["{LOCAL}:{origin.port}"]

[certificates.lost]
acme = {{ names = ["unreachable.test"], @ACME@ }}
""")
    with running(config) as proc:
        proc.wait_ready("secure")
        line = proc.wait_for(r"acme: certificate 'lost' \(unreachable.test\) not issued", timeout=ISSUE_TIMEOUT)
        assert "http-01 validation of unreachable.test failed (invalid)" in line
        assert "urn:ietf:params:acme:error:connection" in line and "127.0.0.2" in line
        assert "still serving the placeholder, retrying in 3600s" in line
        cert = served(tls_port, "unreachable.test")
        assert org(cert) == PLACEHOLDER_ORG and cert.issuer == cert.subject
        assert not (tmp_path / "acme" / "certificates" / "lost.pem").exists()
        assert proc.stop(10) == 0


# the client in process ---------------------------------------------------------------------------
async def _tls_alpn_server(port: int, storage: Storage, names: tuple[str, ...]) -> asyncio.Server:
    """A listener answering TLS-ALPN-01 from ``storage`` (ferryman's CertStore and responder)."""
    placeholder = storage.serving_file("site", names)
    store = CertStore([CertificateSpec("site", placeholder, placeholder)])
    store.set_acme_responder(TlsAlpnResponder({name: storage for name in names}))

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    return await asyncio.start_server(close, LOCAL, port, ssl=store.context)


async def test_bad_nonces_are_retried_with_the_fresh_nonce(tmp_path: Path, ports: tuple[int, int]) -> None:
    # pebble refuses half of the valid nonces as badNonce
    pebble = await asyncio.to_thread(Pebble, tmp_path / "pebble", http_port=ports[0], tls_port=ports[1], nonce_reject=50)
    storage = Storage(tmp_path / "acme")
    server = await _tls_alpn_server(ports[1], storage, ("nonce.test",))
    client = AcmeClient(pebble.directory, storage.account_key(pebble.directory), http=HttpsClient(ca_file=pebble.ca))
    try:
        def publish(kind: str, name: str, key_authorization: str) -> None:
            storage.publish(storage.tls_alpn_path(name), tls_alpn_certificate(name, key_authorization))

        def withdraw(kind: str, name: str, _key_authorization: str) -> None:
            storage.withdraw(storage.tls_alpn_path(name))

        issued = await client.issue(("nonce.test",), "tls-alpn-01", publish, withdraw)
        for _ in range(12):  # more signed requests, so that some were refused is all but certain
            await client.post(issued.order_url, None)
        assert inspect(issued.pem).names == ("nonce.test",)
        assert client.bad_nonces > 0
    finally:
        await client.http.close()
        server.close()
        await server.wait_closed()
        await asyncio.to_thread(pebble.close)


async def test_a_name_the_ca_refuses_comes_back_as_its_problem(tmp_path: Path, ports: tuple[int, int]) -> None:
    pebble = await asyncio.to_thread(Pebble, tmp_path / "pebble", http_port=ports[0], tls_port=ports[1])
    storage = Storage(tmp_path / "acme")
    client = AcmeClient(pebble.directory, storage.account_key(pebble.directory), http=HttpsClient(ca_file=pebble.ca))
    try:
        with pytest.raises(AcmeError) as info:
            await client.issue(("bad_name.test",), "http-01", lambda *a: None, lambda *a: None)
        problem = info.value.problem
        assert problem is not None and problem.type.startswith("urn:ietf:params:acme:error:")
        assert problem.status == 400 and "_" in problem.detail
        assert client.account_url is not None  # the account was made; the order was refused
    finally:
        await client.http.close()
        await asyncio.to_thread(pebble.close)



async def test_the_https_client_keeps_connections_alive_reads_chunked_and_verifies(tmp_path: Path) -> None:
    authority = Authority(tmp_path)
    issued = authority.issue("localhost", ips=(LOCAL,), file="server")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(issued.cert, issued.key)
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if head.startswith(b"GET /chunked "):
                    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
                else:
                    path = head.split(b" ")[1]
                    writer.write(b"HTTP/1.1 200 OK\r\nreplay-nonce: n1\r\ncontent-length: %d\r\n\r\n%s" % (len(path), path))
                await writer.drain()
                if head.startswith(b"GET /then-close "):
                    break  # closes a connection the client believes is kept alive
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, LOCAL, 0, ssl=ctx)
    base = f"https://{LOCAL}:{server.sockets[0].getsockname()[1]}"
    client = HttpsClient(ca_file=authority.cert)
    stranger = HttpsClient()  # the system's trust store does not know the test CA
    try:
        first = await client.request("GET", base + "/a")
        assert (first.status, first.body, first.header("Replay-Nonce")) == (200, b"/a", "n1")
        assert (await client.request("POST", base + "/b", b"{}", [("content-type", "application/jose+json")])).body == b"/b"
        assert len(accepted) == 1  # one kept-alive connection
        assert (await client.request("GET", base + "/chunked")).body == b"hello world"
        assert (await client.request("GET", base + "/then-close")).body == b"/then-close"
        assert (await client.request("GET", base + "/c")).body == b"/c"  # on a new connection
        assert len(accepted) == 2
        with pytest.raises(TransportError, match="not an https URL"):
            await client.request("GET", f"http://{LOCAL}:1/")
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            await stranger.request("GET", base + "/a")
    finally:
        await client.close()
        await stranger.close()
        server.close()
        await server.wait_closed()

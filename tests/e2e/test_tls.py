"""TLS over loopback: certificates chosen by SNI, protocol and cipher policy, ALPN, session
resumption, mTLS, hot swap, upstream origination, and L4 SNI routing by ClientHello peek.

Servers are ``loop.create_server(ssl=store.context)`` on uvloop (the proxy's own path);
clients are Python ``ssl`` objects over memory BIOs on non-blocking sockets, so a test can
resume a session, present a client certificate and read the served certificate.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import socket
import ssl
import struct
import termios
import warnings
from pathlib import Path
from typing import Any

import pytest

from ferryman.errors import ErrorKind, ProxyError
from ferryman.net.addr import Address, parse_address
from ferryman.net.connect import Connector, Peer
from ferryman.net.listener import bind_socket
from ferryman.net.pump import PipePool, SplicePump
from ferryman.net.tls import (
    DEFAULT_CIPHERS,
    CertificateSpec,
    CertStore,
    ServerTlsSettings,
    TlsOptions,
    clear_client_contexts,
    client_context,
    load_certificate,
    peer_identity,
    read_client_hello,
)
from support.certs import Authority, Issued

# PKI ----------------------------------------------------------------------------------------------------


class Pki:
    """One CA with server certificates for exact, wildcard and default names, a client
    certificate, and a second CA whose client certificate must not be trusted."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = Authority(directory)
        self.a = self.ca.issue("a.test", dns=("a.test", "alt-a.test"))
        self.wild = self.ca.issue("wildcard w.test", dns=("*.w.test",), file="wild")
        self.default = self.ca.issue("default.test", dns=("default.test",))
        self.ip = self.ca.issue("loopback", ips=("127.0.0.1",))
        self.client = self.ca.issue("client-1", uris=("spiffe://ferryman.test/client-1",), dns=("client-1.test",), client=True)
        self.rogue_ca = Authority(directory, "rogue CA")
        self.rogue = self.rogue_ca.issue("intruder", client=True)

    def specs(self) -> list[CertificateSpec]:
        return [
            CertificateSpec("a", self.a.cert, self.a.key),
            CertificateSpec("wild", self.wild.cert, self.wild.key),
            CertificateSpec("default", self.default.cert, self.default.key),
        ]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


# servers and clients -------------------------------------------------------------------------------------


class Echo(asyncio.Protocol):
    """Server side of one TLS connection: echoes, and keeps its ssl_object for the test."""

    def __init__(self, server: TlsServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.ssl_object: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ssl_object = transport.get_extra_info("ssl_object")
        self.server.conns.append(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class TlsServer:
    def __init__(self) -> None:
        self.conns: list[Echo] = []
        self.server: asyncio.base_events.Server | None = None
        self.address: Address = Address()

    async def start(self, ctx: ssl.SSLContext) -> TlsServer:
        sock = bind_socket(parse_address("127.0.0.1:0"))
        host, port = sock.getsockname()[:2]
        self.address = Address(host=host, port=port)
        self.server = await asyncio.get_running_loop().create_server(lambda: Echo(self), sock=sock, ssl=ctx)
        return self

    async def aclose(self) -> None:
        self.server.close()  # type: ignore[union-attr]
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.abort()
        await self.server.wait_closed()  # type: ignore[union-attr]


async def serve(net: Any, ctx: ssl.SSLContext) -> TlsServer:
    server = await TlsServer().start(ctx)
    net.defer(server.aclose)
    return server


class TlsClient:
    """A Python ``ssl`` client over a memory BIO on a non-blocking socket."""

    def __init__(self, sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        self.sock, self.obj, self.incoming, self.outgoing = sock, obj, incoming, outgoing
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(
        cls, net: Any, address: Address, ctx: ssl.SSLContext, server_hostname: str | None, session: ssl.SSLSession | None = None
    ) -> TlsClient:
        sock = await net.connect(address)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = cls(sock, ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname, session=session), incoming, outgoing)
        await client._until(client.obj.do_handshake)
        return client

    async def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            await self.loop.sock_sendall(self.sock, data)

    async def _until(self, step: Any, *args: Any) -> Any:
        while True:
            try:
                result = step(*args)
            except ssl.SSLWantReadError:
                await self._flush()
                data = await self.loop.sock_recv(self.sock, 65536)
                if data:
                    self.incoming.write(data)
                else:
                    self.incoming.write_eof()
                continue
            await self._flush()
            return result

    async def roundtrip(self, data: bytes) -> bytes:
        """Send ``data`` and read the echo back."""
        await self._until(self.obj.write, data)
        got = b""
        while len(got) < len(data):
            got += await self._until(self.obj.read, 65536)
        return got

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.obj.getpeercert(binary_form=True)).hexdigest()


def client_ctx(
    pki: Pki, *, check_hostname: bool = False, cert: Issued | None = None, max_version: ssl.TLSVersion | None = None,
    alpn: list[str] | None = None,
) -> ssl.SSLContext:
    """A test client trusting the test CA; by default the host name is not checked, so a
    test can see whichever certificate the server picks."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=pki.ca.cert)
    ctx.check_hostname = check_hostname
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    if max_version is not None:
        ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def legacy_ctx(server: bool, pki: Pki) -> ssl.SSLContext:
    """A context that speaks TLS 1.0/1.1 (deprecated in Python: that is the point)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if server:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(pki.a.cert, pki.a.key)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


async def refused(net: Any, address: Address, ctx: ssl.SSLContext, name: str | None) -> BaseException:
    """The error a handshake (or the first exchange after it, TLS 1.3 client auth) ends in.
    The server side (asyncio/uvloop ssl protocol) closes a failed handshake without
    flushing its alert, so the client often sees an EOF rather than the alert's reason."""
    with pytest.raises((ssl.SSLError, ConnectionError)) as info:
        client = await TlsClient.connect(net, address, ctx, name)
        await client.roundtrip(b"ping")
    return info.value


# certificate selection ----------------------------------------------------------------------------


async def test_sni_picks_exact_then_wildcard_then_default(net: Any, pki: Pki) -> None:
    store = CertStore(pki.specs(), default="default")
    server = await serve(net, store.context)
    ctx = client_ctx(pki)
    expected = {
        "a.test": pki.a, "ALT-A.test": pki.a,  # names from the SAN, case-insensitive
        "x.w.test": pki.wild, "other.w.test": pki.wild,  # one label under the wildcard
        "y.x.w.test": pki.default, "w.test": pki.default,  # a wildcard covers exactly one label
        "unknown.test": pki.default, None: pki.default,  # unknown name, no SNI
    }
    for name, cert in expected.items():
        client = await TlsClient.connect(net, server.address, ctx, name)
        assert client.fingerprint == cert.fingerprint, name
        assert dict(x[0] for x in client.obj.getpeercert()["subject"])["commonName"] == cert.cn
        assert await client.roundtrip(b"hello") == b"hello"
        served = CertStore.served(server.conns[-1].ssl_object)
        assert served is not None and served.fingerprint == cert.fingerprint
        assert store.select(name) is served
    # a client checking the host name accepts what the server picked
    strict = client_ctx(pki, check_hostname=True)
    for name in ("a.test", "x.w.test", "default.test"):
        client = await TlsClient.connect(net, server.address, strict, name)
        assert await client.roundtrip(b"ok") == b"ok"


async def test_default_is_the_first_certificate_and_names_can_be_explicit(net: Any, pki: Pki) -> None:
    store = CertStore([
        CertificateSpec("first", pki.default.cert, pki.default.key),
        CertificateSpec("a", pki.a.cert, pki.a.key, names=("*.explicit.test",)),
    ])
    assert store.default.name == "first"  # type: ignore[union-attr]
    assert store.certificates[1].names == ("*.explicit.test",)
    assert store.certificates[0].names == ("default.test",)
    server = await serve(net, store.context)
    ctx = client_ctx(pki)
    assert (await TlsClient.connect(net, server.address, ctx, "q.explicit.test")).fingerprint == pki.a.fingerprint
    assert (await TlsClient.connect(net, server.address, ctx, "a.test")).fingerprint == pki.default.fingerprint


def test_names_from_subject_when_no_san(pki: Pki) -> None:
    bare = pki.ca.issue("bare.test", file="bare")
    store = CertStore([CertificateSpec("bare", bare.cert, bare.key), *pki.specs()])
    assert store.certificates[0].names == ("bare.test",)
    assert store.certificates[0].subject == "CN=bare.test,O=ferryman tests"
    assert store.certificates[1].names == ("a.test", "alt-a.test")
    assert store.select("BARE.test").name == "bare"  # type: ignore[union-attr]


def test_first_listed_certificate_wins_a_shared_name(pki: Pki) -> None:
    again = pki.ca.issue("a.test again", dns=("a.test",), file="a_again")
    store = CertStore([CertificateSpec("again", again.cert, again.key), *pki.specs()])
    assert store.select("a.test").name == "again"  # type: ignore[union-attr]
    assert store.select("alt-a.test").name == "a"  # type: ignore[union-attr]


async def test_strict_sni_refuses_unknown_names(net: Any, pki: Pki) -> None:
    store = CertStore(pki.specs(), settings=ServerTlsSettings(strict_sni=True))
    server = await serve(net, store.context)
    ctx = client_ctx(pki)
    assert (await TlsClient.connect(net, server.address, ctx, "a.test")).fingerprint == pki.a.fingerprint
    assert store.select("unknown.test") is None and store.select(None) is None
    await refused(net, server.address, ctx, "unknown.test")
    await refused(net, server.address, ctx, None)


# protocol policy ----------------------------------------------------------------------------------------


async def test_tls11_refused_tls12_and_13_served(net: Any, pki: Pki) -> None:
    legacy_client = legacy_ctx(False, pki)
    # control: this machine's OpenSSL can speak TLS 1.1 at all
    control = await serve(net, legacy_ctx(True, pki))
    client = await TlsClient.connect(net, control.address, legacy_client, None)
    assert client.obj.version() == "TLSv1.1"

    store = CertStore(pki.specs())
    server = await serve(net, store.context)
    await refused(net, server.address, legacy_client, "a.test")
    for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (None, "TLSv1.3")):
        client = await TlsClient.connect(net, server.address, client_ctx(pki, max_version=version), "a.test")
        assert client.obj.version() == name
        assert client.obj.compression() is None


async def test_tls12_only_forward_secret_aead_suites(net: Any, pki: Pki) -> None:
    store = CertStore(pki.specs())
    server = await serve(net, store.context)
    client = await TlsClient.connect(net, server.address, client_ctx(pki, max_version=ssl.TLSVersion.TLSv1_2), "a.test")
    suite = client.obj.cipher()[0]
    assert suite.startswith("ECDHE-") and ("GCM" in suite or "CHACHA20" in suite), suite
    assert suite in DEFAULT_CIPHERS.split(":")

    cbc = client_ctx(pki, max_version=ssl.TLSVersion.TLSv1_2)
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA")  # forward secret but not AEAD
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.load_cert_chain(pki.a.cert, pki.a.key)
    permissive.set_ciphers("ALL:@SECLEVEL=0")
    control = await serve(net, permissive)
    assert (await TlsClient.connect(net, control.address, cbc, "a.test")).obj.cipher()[0] == "ECDHE-ECDSA-AES128-SHA"
    await refused(net, server.address, cbc, "a.test")


async def test_tls13_minimum(net: Any, pki: Pki) -> None:
    store = CertStore(pki.specs(), settings=ServerTlsSettings(min_version="1.3"))
    server = await serve(net, store.context)
    assert (await TlsClient.connect(net, server.address, client_ctx(pki), "a.test")).obj.version() == "TLSv1.3"
    await refused(net, server.address, client_ctx(pki, max_version=ssl.TLSVersion.TLSv1_2), "a.test")


async def test_alpn(net: Any, pki: Pki) -> None:
    default = await serve(net, CertStore(pki.specs()).context)
    both = await serve(net, CertStore(pki.specs(), settings=ServerTlsSettings(alpn=("h2", "http/1.1"))).context)
    offer = client_ctx(pki, alpn=["h2", "http/1.1"])
    client = await TlsClient.connect(net, default.address, offer, "a.test")
    assert client.obj.selected_alpn_protocol() == "http/1.1"
    await client.roundtrip(b"x")  # the server side is set up by now
    assert default.conns[-1].ssl_object.selected_alpn_protocol() == "http/1.1"
    assert (await TlsClient.connect(net, both.address, offer, "x.w.test")).obj.selected_alpn_protocol() == "h2"
    assert (await TlsClient.connect(net, both.address, client_ctx(pki), "a.test")).obj.selected_alpn_protocol() is None


@pytest.mark.parametrize("version", [None, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
async def test_session_resumption(net: Any, pki: Pki, version: ssl.TLSVersion | None) -> None:
    store = CertStore(pki.specs())
    server = await serve(net, store.context)
    ctx = client_ctx(pki, max_version=version)
    for name in ("a.test", "x.w.test", None):  # resumption works whichever certificate SNI chose
        first = await TlsClient.connect(net, server.address, ctx, name)
        await first.roundtrip(b"ticket please")  # TLS 1.3 tickets arrive after the handshake
        assert not first.obj.session_reused and first.obj.session is not None
        second = await TlsClient.connect(net, server.address, ctx, name, session=first.obj.session)
        assert second.obj.session_reused, name
        assert second.fingerprint == first.fingerprint
        assert await second.roundtrip(b"again") == b"again"


# mTLS ---------------------------------------------------------------------------------------------------


async def test_mtls_required(net: Any, pki: Pki) -> None:
    settings = ServerTlsSettings(client_ca=pki.ca.cert, client_verify="required")
    server = await serve(net, CertStore(pki.specs(), settings=settings).context)
    await refused(net, server.address, client_ctx(pki), "a.test")  # no certificate
    await refused(net, server.address, client_ctx(pki, cert=pki.rogue), "a.test")  # another CA's

    client = await TlsClient.connect(net, server.address, client_ctx(pki, cert=pki.client), "a.test")
    assert await client.roundtrip(b"who am i") == b"who am i"
    identity = peer_identity(server.conns[-1].ssl_object)
    assert identity is not None and identity.verified
    assert identity.subject_cn == "client-1"
    assert identity.subject == "CN=client-1,O=ferryman tests"
    assert identity.issuer == "CN=ferryman test CA,O=ferryman tests"
    assert set(identity.sans) == {"DNS:client-1.test", "URI:spiffe://ferryman.test/client-1"}
    assert identity.dns_names == ("client-1.test",)
    assert identity.fingerprint == pki.client.fingerprint
    # the client sees the server's identity the same way
    server_side = peer_identity(client.obj)
    assert server_side is not None and server_side.subject_cn == "a.test" and server_side.fingerprint == pki.a.fingerprint


async def test_mtls_optional(net: Any, pki: Pki) -> None:
    settings = ServerTlsSettings(client_ca=pki.ca.cert, client_verify="optional")
    server = await serve(net, CertStore(pki.specs(), settings=settings).context)
    anonymous = await TlsClient.connect(net, server.address, client_ctx(pki), "a.test")
    assert await anonymous.roundtrip(b"hi") == b"hi"
    assert peer_identity(server.conns[-1].ssl_object) is None
    known = await TlsClient.connect(net, server.address, client_ctx(pki, cert=pki.client), "a.test")
    assert await known.roundtrip(b"hi") == b"hi"
    assert peer_identity(server.conns[-1].ssl_object).subject_cn == "client-1"  # type: ignore[union-attr]
    await refused(net, server.address, client_ctx(pki, cert=pki.rogue), "a.test")  # presented, not trusted
    assert peer_identity(None) is None


# hot swap -----------------------------------------------------------------------------------------------


async def test_replace_serves_new_certificates_and_keeps_connections(net: Any, pki: Pki, tmp_path: Path) -> None:
    ca = pki.ca
    v1 = ca.issue("a.test", dns=("a.test",), file=str(tmp_path / "v1"))
    store = CertStore([CertificateSpec("a", v1.cert, v1.key), *pki.specs()[1:]])
    server = await serve(net, store.context)
    ctx = client_ctx(pki)
    old = await TlsClient.connect(net, server.address, ctx, "a.test")
    assert old.fingerprint == v1.fingerprint and await old.roundtrip(b"before") == b"before"

    v2 = ca.issue("a.test", dns=("a.test",), file=str(tmp_path / "v2"))
    store.replace([CertificateSpec("a", v2.cert, v2.key), *pki.specs()[1:]])
    new = await TlsClient.connect(net, server.address, ctx, "a.test")
    assert new.fingerprint == v2.fingerprint
    assert (await TlsClient.connect(net, server.address, ctx, "x.w.test")).fingerprint == pki.wild.fingerprint
    assert await old.roundtrip(b"after the swap") == b"after the swap"  # established: unaffected

    # renewal on disk: the same paths, new contents, then reload()
    v3 = ca.issue("a.test", dns=("a.test",), file=str(tmp_path / "v2"))
    assert v3.cert == v2.cert and v3.fingerprint != v2.fingerprint
    store.reload()
    assert (await TlsClient.connect(net, server.address, ctx, "a.test")).fingerprint == v3.fingerprint

    # a broken replacement changes nothing
    with pytest.raises(ValueError, match="does not match certificate"):
        store.replace([CertificateSpec("a", v1.cert, v3.key)])
    assert (await TlsClient.connect(net, server.address, ctx, "a.test")).fingerprint == v3.fingerprint
    assert await new.roundtrip(b"still") == b"still"


async def test_replace_settings_applies_to_new_handshakes(net: Any, pki: Pki) -> None:
    store = CertStore(pki.specs())
    server = await serve(net, store.context)
    open_before = await TlsClient.connect(net, server.address, client_ctx(pki), "a.test")
    assert await open_before.roundtrip(b"x") == b"x"

    store.replace(settings=ServerTlsSettings(client_ca=pki.ca.cert, client_verify="required", alpn=("h2",)))
    assert store.default.name == "a"  # type: ignore[union-attr]
    await refused(net, server.address, client_ctx(pki), "a.test")
    with_cert = await TlsClient.connect(net, server.address, client_ctx(pki, cert=pki.client, alpn=["h2", "http/1.1"]), "x.w.test")
    assert with_cert.obj.selected_alpn_protocol() == "h2"
    assert await with_cert.roundtrip(b"y") == b"y"
    assert await open_before.roundtrip(b"z") == b"z"

    # trust moves to another CA: its clients get in, the first CA's no longer do
    store.replace(settings=ServerTlsSettings(client_ca=pki.rogue_ca.cert, client_verify="required"))
    assert await (await TlsClient.connect(net, server.address, client_ctx(pki, cert=pki.rogue), "a.test")).roundtrip(b"r") == b"r"
    await refused(net, server.address, client_ctx(pki, cert=pki.client), "a.test")


# loading errors -----------------------------------------------------------------------------------------


def test_load_errors_name_the_file_and_the_problem(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(pki.a.key).read_bytes(), None)
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"secret"),
    ))
    missing = str(tmp_path / "missing.pem")
    cases = [
        (CertificateSpec("x", missing, pki.a.key), f"certificate file {missing} does not exist"),
        (CertificateSpec("x", pki.a.cert, missing), f"key file {missing} does not exist"),
        (CertificateSpec("x", pki.a.cert, str(tmp_path)), f"key file {tmp_path} is a directory"),
        (CertificateSpec("x", str(garbage), pki.a.key), f"certificate file {garbage} holds no PEM certificate"),
        (CertificateSpec("x", pki.a.cert, pki.a.cert), f"key file {pki.a.cert} holds no usable PEM private key"),
        (CertificateSpec("x", pki.a.cert, str(encrypted)), f"key file {encrypted} is encrypted"),
        (CertificateSpec("x", pki.a.cert, pki.wild.key), f"key file {pki.wild.key} does not match certificate {pki.a.cert}"),
    ]
    for spec, message in cases:
        for load in (lambda: CertStore([spec]), lambda: load_certificate(spec)):
            with pytest.raises(ValueError) as info:
                load()
            assert message in str(info.value), (message, str(info.value))
    loaded = load_certificate(CertificateSpec("a", pki.a.cert, pki.a.key))
    assert (loaded.name, loaded.names, loaded.fingerprint) == ("a", ("a.test", "alt-a.test"), pki.a.fingerprint)
    assert loaded.not_after.tzinfo is not None


def test_unreadable_key(pki: Pki) -> None:
    """A key file the process may not read. Root reads any file, so as root the load runs in
    a child that drops to an unprivileged user (files in a world-traversable directory)."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        directory.chmod(0o755)
        cert, key = directory / "a.pem", directory / "locked.key"
        shutil.copy(pki.a.cert, cert)
        cert.chmod(0o644)
        key.write_bytes(Path(pki.a.key).read_bytes())
        key.chmod(0)
        expected = f"key file {key} cannot be read: permission denied"
        if os.geteuid() != 0:
            with pytest.raises(ValueError, match=expected):
                CertStore([CertificateSpec("x", str(cert), str(key))])
            return
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setgid(65534)
                os.setuid(65534)
                CertStore([CertificateSpec("x", str(cert), str(key))])
                os.write(write_end, b"loaded")
            except ValueError as exc:
                os.write(write_end, str(exc).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        message = os.read(read_end, 4096).decode()
        os.close(read_end)
        assert os.waitstatus_to_exitcode(status) == 0
        assert expected in message, message
    finally:
        shutil.rmtree(directory)


def test_combined_pem_and_settings_errors(pki: Pki, tmp_path: Path) -> None:
    combined = tmp_path / "combined.pem"
    combined.write_bytes(Path(pki.a.cert).read_bytes() + Path(pki.a.key).read_bytes())
    assert CertStore([CertificateSpec("c", str(combined), str(combined))]).default.names == ("a.test", "alt-a.test")  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="certificate 'a' is listed twice"):
        CertStore([*pki.specs(), pki.specs()[0]])
    with pytest.raises(ValueError, match="default certificate 'nope' is not among"):
        CertStore(pki.specs(), default="nope")
    with pytest.raises(ValueError, match="at least one certificate"):
        CertStore([])
    with pytest.raises(ValueError, match="is not a host name or a"):
        CertificateSpec("w", pki.a.cert, pki.a.key, names=("*.*.test",))
    with pytest.raises(ValueError, match="needs a client CA file"):
        ServerTlsSettings(client_verify="required")
    with pytest.raises(ValueError, match="client_verify must be one of none, optional, required"):
        ServerTlsSettings(client_verify="yes", client_ca=pki.ca.cert)
    with pytest.raises(ValueError, match="min_version must be one of 1.2, 1.3"):
        ServerTlsSettings(min_version="1.1")
    with pytest.raises(ValueError, match="ALPN must be a list"):
        ServerTlsSettings(alpn="h2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="select no cipher suite"):
        CertStore(pki.specs(), settings=ServerTlsSettings(ciphers="NOPE-CIPHER"))
    with pytest.raises(ValueError, match=f"client CA file {tmp_path / 'none.pem'} does not exist"):
        CertStore(pki.specs(), settings=ServerTlsSettings(client_ca=str(tmp_path / "none.pem"), client_verify="optional"))
    with pytest.raises(ValueError, match=f"client CA file {pki.a.key} holds no usable PEM certificate"):
        CertStore(pki.specs(), settings=ServerTlsSettings(client_ca=pki.a.key, client_verify="optional"))


# origination --------------------------------------------------------------------------------------------


class Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.got: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data
        if not self.got.done():
            self.got.set_result(None)


async def originate(server: TlsServer, ctx: ssl.SSLContext, server_hostname: str | None) -> tuple[asyncio.Transport, Collect]:
    """What the HTTP proxy does for a TLS upstream: dial with the Connector, then wrap the
    socket in a TLS transport."""
    sock = await Connector().connect(Peer(server.address))
    try:
        transport, proto = await asyncio.get_running_loop().create_connection(
            Collect, sock=sock, ssl=ctx, server_hostname=server_hostname, ssl_handshake_timeout=5.0,
        )
    except BaseException:
        sock.close()
        raise
    return transport, proto  # type: ignore[return-value]


async def test_client_context_verifies_against_the_ca(net: Any, pki: Pki) -> None:
    server = await serve(net, CertStore(pki.specs()).context)
    ctx = client_context(ca_file=pki.ca.cert, alpn=["http/1.1"])
    transport, proto = await originate(server, ctx, "a.test")
    try:
        transport.write(b"through tls")
        await proto.got
        assert proto.data == b"through tls"
        ssl_object = transport.get_extra_info("ssl_object")
        assert ssl_object.selected_alpn_protocol() == "http/1.1"
        identity = peer_identity(ssl_object)
        assert identity is not None and identity.verified and identity.fingerprint == pki.a.fingerprint
    finally:
        transport.close()
    # the wrong name: the server sends its default certificate, which is not for it
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        await originate(server, ctx, "b.test")
    # an unknown CA (the system store does not know the test CA)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
        await originate(server, client_context(), "a.test")
    # an IP address is checked against the certificate's IP entries (and sends no SNI, so
    # the server answers with its default certificate)
    by_ip = await serve(net, CertStore([*pki.specs(), CertificateSpec("ip", pki.ip.cert, pki.ip.key, names=("ip.test",))], default="ip").context)
    transport, _ = await originate(by_ip, ctx, "127.0.0.1")
    transport.close()
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        await originate(server, ctx, "127.0.0.1")
    # verification off: any certificate, any name
    transport, _ = await originate(server, client_context(verify=False), "b.test")
    transport.close()


async def test_tls_options_present_a_client_certificate(net: Any, pki: Pki) -> None:
    settings = ServerTlsSettings(client_ca=pki.ca.cert, client_verify="required")
    server = await serve(net, CertStore(pki.specs(), settings=settings).context)
    options = TlsOptions(ca_file=pki.ca.cert, sni="x.w.test", cert=pki.client.cert, key=pki.client.key)
    assert options.context() is options.context()  # one context per options, cached
    transport, proto = await originate(server, options.context(), options.server_hostname("127.0.0.1"))
    try:
        transport.write(b"mtls")
        await proto.got
        assert transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert peer_identity(transport.get_extra_info("ssl_object")).fingerprint == pki.wild.fingerprint  # type: ignore[union-attr]
        assert peer_identity(server.conns[-1].ssl_object).subject_cn == "client-1"  # type: ignore[union-attr]
    finally:
        transport.close()
    clear_client_contexts()
    assert options.context() is not None


def test_tls_options_are_pool_keys(pki: Pki) -> None:
    a = TlsOptions(ca_file="ca.pem", alpn=["h2", "http/1.1"])  # type: ignore[arg-type]
    b = TlsOptions(ca_file="ca.pem", alpn=("h2", "http/1.1"))
    assert a == b and hash(a) == hash(b) and a.alpn == ("h2", "http/1.1")
    pool = {("10.0.0.1", 443, a): "conn"}
    assert pool.get(("10.0.0.1", 443, b)) == "conn"
    assert ("10.0.0.1", 443, TlsOptions(ca_file="ca.pem")) not in pool
    assert ("10.0.0.1", 443, TlsOptions(ca_file="ca.pem", alpn=("h2", "http/1.1"), sni="x.test")) not in pool
    assert TlsOptions().server_hostname("backend.internal") == "backend.internal"
    assert TlsOptions(sni="api.internal").server_hostname("10.0.0.1") == "api.internal"
    assert TlsOptions().server_hostname("") is None  # a unix socket peer
    with pytest.raises(ValueError, match="given without a client certificate"):
        TlsOptions(key="k.pem")
    with pytest.raises(ValueError, match="min_version"):
        TlsOptions(min_version="1.0")
    with pytest.raises(ValueError, match="not a host name"):
        TlsOptions(sni="bad name")
    with pytest.raises(ValueError, match=f"CA file {pki.a.key} holds no usable PEM certificate"):
        client_context(ca_file=pki.a.key)
    with pytest.raises(ValueError, match=f"key file {pki.wild.key} does not match certificate {pki.client.cert}"):
        client_context(cert=pki.client.cert, key=pki.wild.key)


# L4 SNI routing -----------------------------------------------------------------------------------------


def real_hello(sni: str | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def queued(sock: socket.socket) -> int:
    """Bytes waiting in the socket's receive queue."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


async def until(condition: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


def pair(net: Any) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
        net.track(s)
    return a, b


async def test_sni_routing_passes_tls_through(net: Any, pki: Pki) -> None:
    """A router that peeks at the ClientHello, picks a backend by SNI and splices: the
    client completes its handshake with the backend it asked for, bytes unchanged."""
    backend_a = await serve(net, CertStore([pki.specs()[0]]).context)
    backend_wild = await serve(net, CertStore([pki.specs()[1]]).context)
    routes = {"a.test": backend_a, "alt-a.test": backend_a}
    pipes = PipePool()
    net.defer(lambda: asyncio.sleep(0, pipes.close()))
    peeks: list[Any] = []

    async def router(conn: socket.socket) -> None:
        peek = await read_client_hello(conn, timeout=5.0)
        peeks.append(peek)
        if peek.hello is None:  # its bytes were peeked only: read them (or close would reset)
            await asyncio.get_running_loop().sock_recv(conn, 65536)
            await asyncio.get_running_loop().sock_sendall(conn, b"TLS only\n")
            return
        backend = routes.get(peek.hello.server_name or "", backend_wild)
        upstream = await Connector().connect(Peer(backend.address))
        if peek.consumed:
            await asyncio.get_running_loop().sock_sendall(upstream, peek.consumed)
        pump = SplicePump(asyncio.get_running_loop(), conn, upstream, pipes)
        try:
            await pump.start()
        finally:
            pump.close()

    front = await net.origin(router)
    ctx = client_ctx(pki, check_hostname=True, alpn=["h2", "http/1.1"])
    for name, cert in (("a.test", pki.a), ("alt-a.test", pki.a), ("x.w.test", pki.wild)):
        client = await TlsClient.connect(net, front.address, ctx, name)
        assert client.fingerprint == cert.fingerprint
        assert await client.roundtrip(b"spliced " * 1000) == b"spliced " * 1000
        peek = peeks[-1]
        assert peek.hello.server_name == name and peek.hello.alpn == ("h2", "http/1.1")
        assert peek.consumed == b""  # peeked, not read: the pump sent every byte itself
    plain = await net.connect(front.address)
    await net.send_all(plain, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert await net.recv_to_eof(plain) == b"TLS only\n"
    assert peeks[-1].hello is None and "plain text" in peeks[-1].not_tls


async def test_read_client_hello_in_pieces_consumes_them(net: Any) -> None:
    client, server = pair(net)
    wire = real_hello("pieces.test")
    task = asyncio.get_running_loop().create_task(read_client_hello(server, timeout=10.0))
    await net.send_all(client, wire[:3])
    await until(lambda: queued(server) == 0)  # peeked (incomplete), then read off the socket
    await net.send_all(client, wire[3:100])
    await until(lambda: queued(server) == 0)
    await net.send_all(client, wire[100:] + b"after")
    peek = await task
    assert peek.hello is not None and peek.hello.server_name == "pieces.test"
    assert peek.consumed == wire[:100]  # the pieces before the last: to be sent upstream first
    assert queued(server) == len(wire) - 100 + 5  # the last piece was only peeked
    assert await net.recv_exactly(server, len(wire) - 100 + 5) == wire[100:] + b"after"


async def test_read_client_hello_with_prefix_and_errors(net: Any) -> None:
    wire = real_hello("prefix.test")
    client, server = pair(net)
    await net.send_all(client, wire[40:])
    peek = await read_client_hello(server, prefix=wire[:40])
    assert peek.hello.server_name == "prefix.test" and peek.consumed == wire[:40]  # type: ignore[union-attr]
    assert queued(server) == len(wire) - 40  # the rest still in the kernel

    client, server = pair(net)
    await net.send_all(client, wire[:50], eof=True)
    with pytest.raises(ProxyError) as info:
        await read_client_hello(server)
    assert info.value.kind is ErrorKind.CONNECTION_CLOSED and "after 50 bytes" in info.value.context

    client, server = pair(net)
    await net.send_all(client, b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")
    with pytest.raises(ProxyError) as info:
        await read_client_hello(server)
    assert info.value.kind is ErrorKind.PROTOCOL_ERROR and "not ClientHello" in info.value.context

    client, server = pair(net)
    await net.send_all(client, wire[:10])
    with pytest.raises(ProxyError) as info:
        await read_client_hello(server, timeout=0.05)
    assert info.value.kind is ErrorKind.READ_TIMEOUT

    client, server = pair(net)
    await net.send_all(client, b"SSH-2.0-x\r\n")
    peek = await read_client_hello(server)
    assert peek.hello is None and peek.consumed == b"" and queued(server) == 11

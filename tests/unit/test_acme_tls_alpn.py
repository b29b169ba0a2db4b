"""TLS-ALPN-01 in the listener's CertStore: real OpenSSL handshakes over memory BIOs. A
ClientHello offering ``acme-tls/1`` for a name with a pending challenge gets the validation
certificate and that protocol; every other handshake gets the usual certificate."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509
from support.certs import Authority

from ferryman.acme import certs
from ferryman.acme.challenges import TlsAlpnResponder
from ferryman.acme.storage import Storage
from ferryman.net.tls import CertificateSpec, CertStore


def _handshake(server_ctx: ssl.SSLContext, sni: str, alpn: list[str]) -> tuple[x509.Certificate, str | None]:
    """(certificate the client was served, negotiated ALPN) of one handshake in memory."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.set_alpn_protocols(alpn)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=sni)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values()), "the handshake did not finish"
    return x509.load_der_x509_certificate(client.getpeercert(binary_form=True)), client.selected_alpn_protocol()


@pytest.fixture
def store(tmp_path: Path) -> tuple[CertStore, Storage]:
    site = Authority(tmp_path).issue("a.test", dns=("a.test", "b.test"), file="site")
    store = CertStore([CertificateSpec("site", site.cert, site.key)], settings=None)
    storage = Storage(tmp_path / "acme")
    store.set_acme_responder(TlsAlpnResponder({"a.test": storage}))
    return store, storage


def _is_validation(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_oid(certs.ACME_IDENTIFIER_OID)
    except x509.ExtensionNotFound:
        return False
    return True


def test_acme_tls_1_gets_the_validation_certificate_while_a_challenge_is_pending(store: tuple[CertStore, Storage]) -> None:
    cert_store, storage = store
    storage.publish(storage.tls_alpn_path("a.test"), certs.tls_alpn_certificate("a.test", "tok.thumb"))
    served, alpn = _handshake(cert_store.context, "a.test", ["acme-tls/1"])
    assert _is_validation(served) and alpn == "acme-tls/1"
    served, alpn = _handshake(cert_store.context, "A.TEST", ["acme-tls/1"])  # names are case-insensitive
    assert _is_validation(served)


def test_ordinary_handshakes_get_the_usual_certificate(store: tuple[CertStore, Storage]) -> None:
    cert_store, storage = store
    storage.publish(storage.tls_alpn_path("a.test"), certs.tls_alpn_certificate("a.test", "tok.thumb"))
    served, alpn = _handshake(cert_store.context, "a.test", ["h2", "http/1.1"])
    assert not _is_validation(served) and alpn == "http/1.1"
    served, _ = _handshake(cert_store.context, "b.test", ["acme-tls/1"])  # no challenge for this name
    assert not _is_validation(served)


def test_after_the_challenge_is_withdrawn_acme_tls_1_gets_the_usual_certificate(store: tuple[CertStore, Storage]) -> None:
    cert_store, storage = store
    path = storage.tls_alpn_path("a.test")
    storage.publish(path, certs.tls_alpn_certificate("a.test", "tok.thumb"))
    assert _is_validation(_handshake(cert_store.context, "a.test", ["acme-tls/1"])[0])
    storage.withdraw(path)
    served, alpn = _handshake(cert_store.context, "a.test", ["acme-tls/1"])
    assert not _is_validation(served) and alpn is None


def test_a_new_challenge_file_replaces_the_cached_context(store: tuple[CertStore, Storage]) -> None:
    cert_store, storage = store
    path = storage.tls_alpn_path("a.test")
    storage.publish(path, certs.tls_alpn_certificate("a.test", "first"))
    first = _handshake(cert_store.context, "a.test", ["acme-tls/1"])[0]
    storage.publish(path, certs.tls_alpn_certificate("a.test", "second"))
    second = _handshake(cert_store.context, "a.test", ["acme-tls/1"])[0]
    assert first.serial_number != second.serial_number


def test_without_a_responder_no_message_callback_is_left(store: tuple[CertStore, Storage]) -> None:
    cert_store, storage = store
    storage.publish(storage.tls_alpn_path("a.test"), certs.tls_alpn_certificate("a.test", "tok.thumb"))
    cert_store.set_acme_responder(None)
    assert cert_store.context._msg_callback is None
    assert not _is_validation(_handshake(cert_store.context, "a.test", ["acme-tls/1"])[0])

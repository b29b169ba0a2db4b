"""The TLS context an etcd URL's ``ca``/``cert``/``key`` build: verification always on, and
every unusable file named with its parameter and path (real PEM files made here)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ferryman.config.etcd import EtcdSource
from ferryman.config.etcd_client import EtcdClient, tls_context
from ferryman.config.etcd_url import parse_etcd_url
from support.certs import Authority, Issued


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Authority, Issued]:
    authority = Authority(tmp_path)
    return authority, authority.issue("client", client=True, file="client")


def _url(query: str) -> str:
    return f"etcd://127.0.0.1:2379/p?{query}"


def test_plain_http_has_no_context() -> None:
    assert tls_context(parse_etcd_url("etcd://h:1/p")) is None
    assert tls_context(parse_etcd_url("etcd://h:1/p?tls=false")) is None


def test_ca_trusts_that_bundle_only_and_verifies(pki: tuple[Authority, Issued], tmp_path: Path) -> None:
    authority, client = pki
    other = Authority(tmp_path, cn="second CA")
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("# ours\n" + Path(authority.cert).read_text() + "junk between\n" + Path(other.cert).read_text())
    context = tls_context(parse_etcd_url(_url(f"ca={bundle}&cert={client.cert}&key={client.key}")))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    subjects = sorted(dict(part[0] for part in ca["subject"])["commonName"] for ca in context.get_ca_certs())
    assert subjects == ["ferryman test CA", "second CA"]  # no system CA besides


def test_tls_true_verifies_with_the_system_cas() -> None:
    context = tls_context(parse_etcd_url(_url("tls=true")))
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def _encrypted_key(path: Path) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    return str(path)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("ca={d}/missing.pem", "ca={d}/missing.pem: cannot read it: No such file or directory"),
        ("ca={d}", "ca={d}: cannot read it: Is a directory"),
        ("ca={d}/notes.txt", "ca={d}/notes.txt: no PEM certificate in it"),
        ("ca={d}/client.key", "ca={d}/client.key: no PEM certificate in it"),
        ("ca={d}/damaged.pem", "ca={d}/damaged.pem: a PEM certificate in it is damaged"),
        ("cert={d}/missing.pem&key={d}/client.key", "cert={d}/missing.pem: cannot read it: No such file or directory"),
        ("cert={d}/client.key&key={d}/client.key", "cert={d}/client.key: no PEM certificate in it"),
        ("cert={d}/client.pem&key={d}/client.pem", "key={d}/client.pem: no PEM private key in it"),
        ("cert={d}/client.pem&key={d}/other.key", "key={d}/other.key is not the private key of cert={d}/client.pem"),
        ("cert={d}/client.pem&key={d}/locked.key", "key={d}/locked.key: the private key is encrypted"),
    ],
)
def test_an_unusable_file_is_named_with_its_parameter(pki: tuple[Authority, Issued], tmp_path: Path, query: str, message: str) -> None:
    authority, _ = pki
    authority.issue("other", client=True, file="other")
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    (tmp_path / "damaged.pem").write_text("-----BEGIN CERTIFICATE-----\nTUlJQg==\n-----END CERTIFICATE-----\n")
    _encrypted_key(tmp_path / "locked.key")
    text = _url(query.format(d=tmp_path))
    url = parse_etcd_url(text)  # the parser reads no file: the URL itself is fine
    with pytest.raises(ValueError) as caught:
        EtcdClient(url)
    assert message.format(d=tmp_path) in str(caught.value)
    with pytest.raises(ValueError, match="cannot read|no PEM|damaged|not the private key|encrypted"):
        EtcdSource.parse(text)  # what `-c` does: the error comes when the URL is used

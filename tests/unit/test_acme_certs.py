"""X.509 pieces of ACME (CSR, TLS-ALPN-01 validation certificate, placeholder, the stored
bundle) and the renewal schedule."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ferryman.acme import certs
from ferryman.acme.certs import CertInfo
from ferryman.acme.messages import AcmeError
from ferryman.acme.schedule import next_check, reason_to_issue, renew_at


def _signed_by_ca(key, names: tuple[str, ...], days: int = 90) -> bytes:
    """A chain (leaf + CA) for ``key``, as a CA would return it."""
    ca_key = certs.generate_key()
    now = datetime.now(timezone.utc)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(2).not_valid_before(now).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False).sign(ca_key, hashes.SHA256()))
    return leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)


def test_the_csr_names_every_name_and_is_signed_by_the_key() -> None:
    key = certs.generate_key()
    csr = x509.load_der_x509_csr(certs.make_csr(key, ["a.test", "b.test"]))
    assert csr.is_signature_valid
    assert csr.public_key().public_numbers() == key.public_key().public_numbers()
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.test", "b.test"]
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a.test"


def test_the_tls_alpn_certificate_carries_the_critical_acme_identifier() -> None:
    pem = certs.tls_alpn_certificate("a.test", "token.thumb")
    cert = x509.load_pem_x509_certificate(pem)
    serialization.load_pem_private_key(pem, password=None)  # the key is in the same file
    extension = cert.extensions.get_extension_for_oid(certs.ACME_IDENTIFIER_OID)
    assert extension.critical
    assert extension.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumb").digest()
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == ["a.test"]


def test_a_placeholder_is_recognised_and_an_issued_bundle_is_not() -> None:
    info = certs.inspect(certs.placeholder(("a.test", "b.test")))
    assert info.placeholder and info.names == ("a.test", "b.test")
    key = certs.generate_key()
    stored = certs.bundle(key, _signed_by_ca(key, ("a.test",)), ("a.test",))
    assert stored.startswith(b"-----BEGIN PRIVATE KEY-----")
    issued = certs.inspect(stored)
    assert not issued.placeholder and issued.names == ("a.test",) and issued.serial == 2
    assert len(x509.load_pem_x509_certificates(stored)) == 2


def test_a_chain_for_another_key_or_missing_a_name_is_refused() -> None:
    key, other = certs.generate_key(), certs.generate_key()
    with pytest.raises(AcmeError, match="not for the key"):
        certs.bundle(key, _signed_by_ca(other, ("a.test",)), ("a.test",))
    with pytest.raises(AcmeError, match="does not cover b.test"):
        certs.bundle(key, _signed_by_ca(key, ("a.test",)), ("a.test", "b.test"))
    with pytest.raises(AcmeError, match="not a PEM chain"):
        certs.bundle(key, b"<html>oops</html>", ("a.test",))


def _info(days_left: float, lifetime: float = 90, names: tuple[str, ...] = ("a.test",), placeholder: bool = False) -> tuple[CertInfo, datetime]:
    now = datetime(2025, 6, 1, tzinfo=timezone.utc)
    not_after = now + timedelta(days=days_left)
    return CertInfo(names, not_after - timedelta(days=lifetime), not_after, 1, placeholder), now


def test_renewal_is_due_with_a_third_of_the_lifetime_left_or_renew_before() -> None:
    info, now = _info(days_left=40)
    assert renew_at(info, None) == info.not_after - timedelta(days=30)
    assert reason_to_issue(info, ("a.test",), now, None) is None
    later, _ = _info(days_left=29)
    assert "renewal due" in reason_to_issue(later, ("a.test",), now, None)  # type: ignore[operator]
    assert "renewal due" in reason_to_issue(info, ("a.test",), now, renew_before=45 * 86400)  # type: ignore[operator]


def test_missing_placeholder_or_renamed_certificates_are_issued_at_once() -> None:
    info, now = _info(days_left=80)
    assert reason_to_issue(None, ("a.test",), now, None) == "no certificate issued yet"
    assert "placeholder" in reason_to_issue(_info(80, placeholder=True)[0], ("a.test",), now, None)  # type: ignore[operator]
    assert "the config a.test, b.test" in reason_to_issue(info, ("a.test", "b.test"), now, None)  # type: ignore[operator]
    assert reason_to_issue(info, ("a.test",), now, None) is None


def test_the_next_check_is_the_renewal_time_but_at_least_every_interval() -> None:
    info, now = _info(days_left=40)  # due in 10 days
    assert next_check(now, info, None, 12 * 3600) == now + timedelta(hours=12)
    assert next_check(now, info, None, 30 * 86400) == info.not_after - timedelta(days=30)
    assert next_check(now, None, None, 60) == now + timedelta(seconds=60)
    overdue, now = _info(days_left=1)
    assert next_check(now, overdue, None, 3600) == now

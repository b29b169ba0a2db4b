"""X.509 pieces of ACME issuance. Sans-IO: bytes and keys in, bytes out.

* :func:`make_csr` — the CSR sent to finalize an order (every name in subjectAltName).
* :func:`tls_alpn_certificate` — the self-signed TLS-ALPN-01 validation certificate
  (RFC 8737 §3): the name in subjectAltName and the critical ``acmeIdentifier``
  extension holding the SHA-256 of the key authorization.
* :func:`placeholder` — a self-signed certificate for the configured names, served until
  the first issuance so a TLS listener can start.
* :func:`bundle` / :func:`inspect` — the one file a certificate is stored in (its private
  key, then the chain, leaf first), and what a stored file holds.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from .messages import AcmeError

__all__ = [
    "ACME_IDENTIFIER_OID",
    "CertInfo",
    "bundle",
    "generate_key",
    "inspect",
    "make_csr",
    "placeholder",
    "tls_alpn_certificate",
]

ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # id-pe-acmeIdentifier (RFC 8737 §6.1)
PLACEHOLDER_ORG = "ferryman placeholder"
PLACEHOLDER_DAYS = 30


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A certificate key: EC P-256 (every ACME CA accepts it; fast handshakes)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_csr(key: ec.EllipticCurvePrivateKey, names: list[str] | tuple[str, ...]) -> bytes:
    """DER CSR for ``names`` (the first also as CN, as CAs still show it)."""
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _self_signed(key: ec.EllipticCurvePrivateKey, names: tuple[str, ...], org: str, days: int,
                 extra: tuple[tuple[x509.ExtensionType, bool], ...] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    )
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256())


def tls_alpn_certificate(name: str, key_authorization: str) -> bytes:
    """PEM key + certificate answering a TLS-ALPN-01 challenge for ``name``."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    value = b"\x04\x20" + digest  # DER OCTET STRING of the 32-byte digest
    key = generate_key()
    cert = _self_signed(key, (name,), "ferryman acme-tls/1", 7, ((x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, value), True),))
    return key_pem(key) + cert.public_bytes(serialization.Encoding.PEM)


def placeholder(names: tuple[str, ...]) -> bytes:
    """PEM key + a self-signed certificate for ``names``: what a TLS listener serves before
    the first certificate is issued (clients see an untrusted certificate, not a refusal)."""
    key = generate_key()
    cert = _self_signed(key, names, PLACEHOLDER_ORG, PLACEHOLDER_DAYS)
    return key_pem(key) + cert.public_bytes(serialization.Encoding.PEM)


def bundle(key: ec.EllipticCurvePrivateKey, chain_pem: bytes, names: tuple[str, ...]) -> bytes:
    """The stored file of an issued certificate: its key, then the chain as downloaded.
    Raises AcmeError when the chain is not for this key or misses a name."""
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise AcmeError("the downloaded certificate is not a PEM chain") from exc
    leaf = chain[0]
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise AcmeError("the downloaded certificate is not for the key of its CSR")
    missing = set(names) - set(_dns_names(leaf))
    if missing:
        raise AcmeError(f"the downloaded certificate does not cover {', '.join(sorted(missing))}")
    return key_pem(key) + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What a stored certificate file holds (its leaf)."""

    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int
    placeholder: bool

    @property
    def lifetime(self) -> datetime.timedelta:
        return self.not_after - self.not_before


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)]


def inspect(pem: bytes) -> CertInfo:
    """The leaf of a stored file (key and chain). Raises ValueError for an unreadable one."""
    leaf = x509.load_pem_x509_certificates(pem)[0]
    orgs = leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return CertInfo(
        names=tuple(_dns_names(leaf)),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        serial=leaf.serial_number,
        placeholder=bool(orgs) and orgs[0].value == PLACEHOLDER_ORG and leaf.issuer == leaf.subject,
    )

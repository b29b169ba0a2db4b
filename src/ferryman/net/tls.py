"""TLS at the edges: terminate client TLS with certificates chosen by SNI, originate TLS
to upstreams, and peek at a ClientHello for L4 SNI routing.

* :class:`CertStore` — the certificates of one listener. ``store.context`` is the one
  ``ssl.SSLContext`` the listener serves (pass it to ``loop.create_server(ssl=...)``);
  its ``sni_callback`` switches each handshake to the context of the certificate the
  client asked for: exact name, then one-label wildcard, then the default.
  :meth:`CertStore.replace` / :meth:`CertStore.reload` swap every certificate in one
  assignment: new handshakes use the new ones, established connections carry on.
  :meth:`CertStore.set_acme_responder` answers ACME TLS-ALPN-01 validations (RFC 8737).
* :func:`client_context` / :class:`TlsOptions` — upstream TLS. ``TlsOptions`` is frozen
  and hashable: it goes into the upstream pool key so connections made with different
  TLS settings never mix; :meth:`TlsOptions.context` caches one context per options.
* :func:`peer_identity` — the verified client (mTLS) or server certificate of a
  connection, for hooks and access logs.
* :func:`read_client_hello` — the SNI/ALPN of a connection before choosing its upstream,
  without terminating TLS (see :mod:`ferryman.protocol.tls_hello`).

Loading runs at start-up and on reload, never per connection. Every certificate, key or
CA problem raises ``ValueError`` naming the file and the problem; the config layer adds
the TOML path.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any

from ferryman.errors import ErrorKind, ErrorSource, ProxyError
from ferryman.net.peek import peek, recv_exactly
from ferryman.protocol.tls_hello import (
    MAX_HELLO,
    MAX_RECORDS,
    NEED_MORE,
    ClientHello,
    NotTlsError,
    TlsHelloError,
    parse_client_hello,
)

__all__ = [
    "CLIENT_VERIFY_MODES",
    "DEFAULT_CIPHERS",
    "CertStore",
    "Certificate",
    "CertificateSpec",
    "HelloPeek",
    "PeerIdentity",
    "ServerTlsSettings",
    "TlsOptions",
    "clear_client_contexts",
    "client_context",
    "count_handshakes",
    "handshake_reason",
    "load_certificate",
    "peer_identity",
    "read_client_hello",
    "server_context",
]

DEFAULT_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))
"""TLS 1.2 suites served by default: ECDHE key exchange (forward secrecy) with AEAD
ciphers only (Mozilla's "intermediate" list without DHE). TLS 1.3 suites are all AEAD."""

CLIENT_VERIFY_MODES = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


# settings ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CertificateSpec:
    """One ``[certificates.NAME]``: a PEM chain (leaf first) and its PEM private key (may be
    the same file). ``names``: the SNI names it serves (``*.example.com`` covers one label);
    empty means the DNS names of its subjectAltName (its subject CN when it has none)."""

    name: str
    cert: str
    key: str
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(_check_sni_name(n, f"certificate {self.name!r}") for n in self.names))


@dataclass(frozen=True, slots=True)
class ServerTlsSettings:
    """How a listener speaks TLS (shared by all its certificates).

    ``alpn``: protocols offered, in preference order. ``min_version``: "1.2" or "1.3" (the
    maximum is always 1.3). ``ciphers``: OpenSSL list for TLS 1.2. ``session_tickets``:
    stateless resumption. ``client_ca`` / ``client_verify`` ("none" | "optional" |
    "required"): mTLS. ``strict_sni``: refuse a handshake whose SNI is missing or matches
    no certificate (``unrecognized_name``) instead of serving the default certificate.
    """

    alpn: tuple[str, ...] = ("http/1.1",)
    min_version: str = "1.2"
    ciphers: str = DEFAULT_CIPHERS
    session_tickets: bool = True
    client_ca: str | None = None
    client_verify: str = "none"
    strict_sni: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpn", _check_alpn(self.alpn))
        if self.min_version not in _VERSIONS:
            raise ValueError(f"TLS min_version must be one of {', '.join(_VERSIONS)}, not {self.min_version!r}")
        if self.client_verify not in CLIENT_VERIFY_MODES:
            raise ValueError(f"client_verify must be one of {', '.join(CLIENT_VERIFY_MODES)}, not {self.client_verify!r}")
        if self.client_verify != "none" and not self.client_ca:
            raise ValueError(f"client_verify = {self.client_verify!r} needs a client CA file (tls_client_ca)")


@dataclass(frozen=True, slots=True)
class Certificate:
    """A loaded certificate: what it serves and its own context (not compared or hashed)."""

    spec: CertificateSpec
    names: tuple[str, ...]
    subject: str
    not_after: datetime
    fingerprint: str  # SHA-256 of the leaf, lowercase hex
    context: ssl.SSLContext = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name


# server side -------------------------------------------------------------------------------------
def server_context(settings: ServerTlsSettings | None = None) -> ssl.SSLContext:
    """A server context with ``settings`` and no certificate (see :func:`_configure`)."""
    settings = settings or ServerTlsSettings()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _configure(ctx, settings)
    if settings.client_ca:
        _load_ca(ctx, settings.client_ca, "client CA")
    return ctx


def _configure(ctx: ssl.SSLContext, settings: ServerTlsSettings) -> None:
    """Apply the listener-wide settings. Safe on a context in use: OpenSSL copies them into
    each connection when it starts, so only later handshakes see a change."""
    ctx.minimum_version = _VERSIONS[settings.min_version]
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.set_ciphers(settings.ciphers)
    except ssl.SSLError as exc:
        raise ValueError(f"TLS ciphers {settings.ciphers!r} select no cipher suite") from exc
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if settings.session_tickets:
        ctx.options &= ~ssl.OP_NO_TICKET
    else:
        ctx.options |= ssl.OP_NO_TICKET
    ctx.set_alpn_protocols(list(settings.alpn))
    ctx.verify_mode = CLIENT_VERIFY_MODES[settings.client_verify]


class _Table:
    """One immutable generation of certificates: replaced whole, never edited."""

    __slots__ = ("certificates", "default", "exact", "settings", "wildcard")

    def __init__(self, certificates: tuple[Certificate, ...], default: Certificate | None, settings: ServerTlsSettings) -> None:
        self.certificates = certificates
        self.default = default
        self.settings = settings
        self.exact: dict[str, Certificate] = {}
        self.wildcard: dict[str, Certificate] = {}  # "example.com" for "*.example.com"
        for cert in certificates:  # the first certificate listed for a name wins
            for name in cert.names:
                if name.startswith("*."):
                    self.wildcard.setdefault(name[2:], cert)
                else:
                    self.exact.setdefault(name, cert)

    def select(self, server_name: str | None) -> Certificate | None:
        if server_name:
            name = server_name.lower()
            cert = self.exact.get(name)
            if cert is not None:
                return cert
            dot = name.find(".")
            if dot > 0:
                cert = self.wildcard.get(name[dot + 1 :])
                if cert is not None:
                    return cert
        return None if self.settings.strict_sni else self.default


class CertStore:
    """The certificates one listener serves, chosen by SNI, swappable while serving.

    ``default`` names the certificate for clients without SNI or with an unknown name
    (the first certificate when None). Raises ``ValueError`` for any unusable file.
    """

    def __init__(
        self,
        certificates: Iterable[CertificateSpec],
        *,
        default: str | None = None,
        settings: ServerTlsSettings | None = None,
    ) -> None:
        settings = settings or ServerTlsSettings()
        self._h2: bool | None = None  # ALPN policy of an HTTP listener (see offer_h2)
        self._table = _build_table(tuple(certificates), default, settings)
        self._default_name = default
        self.context = server_context(settings)
        if self._table.default is not None:  # served only if the callback is bypassed
            spec = self._table.default.spec
            self.context.load_cert_chain(spec.cert, spec.key)
        self.context.sni_callback = self._on_sni
        self._acme: Callable[[str], ssl.SSLContext | None] | None = None  # see set_acme_responder

    # what is served ----------------------------------------------------------------------------
    @property
    def certificates(self) -> tuple[Certificate, ...]:
        return self._table.certificates

    @property
    def settings(self) -> ServerTlsSettings:
        return self._table.settings

    @property
    def default(self) -> Certificate | None:
        return self._table.default

    def select(self, server_name: str | None) -> Certificate | None:
        """The certificate a handshake asking for ``server_name`` gets (None: refused)."""
        return self._table.select(server_name)

    @staticmethod
    def served(ssl_object: Any) -> Certificate | None:
        """The certificate a connection was served (from its ``ssl_object`` extra info)."""
        context = getattr(ssl_object, "context", None)
        return getattr(context, "ferryman_certificate", None)

    # hot swap ----------------------------------------------------------------------------------
    def replace(
        self,
        certificates: Iterable[CertificateSpec] | None = None,
        *,
        default: str | None = None,
        settings: ServerTlsSettings | None = None,
    ) -> None:
        """Load a new set (all of it first: on error nothing changes), then swap it in.

        Omitted arguments keep their current value (``default`` only when the set is kept).
        """
        old = self._table
        specs = tuple(certificates) if certificates is not None else tuple(c.spec for c in old.certificates)
        if certificates is None and default is None:
            default = self._default_name
        table = _build_table(specs, default, alpn_policy(settings or old.settings, self._h2))
        if table.settings != old.settings:
            _configure(self.context, table.settings)
            if table.settings.client_ca:
                _load_ca(self.context, table.settings.client_ca, "client CA")
        self._table = table
        self._default_name = default

    def offer_h2(self, enabled: bool) -> None:
        """The ALPN policy of the HTTP listener serving this store: offer ``h2`` first
        (True) or not at all (False), whatever ``settings.alpn`` lists; it holds across
        :meth:`replace` and :meth:`reload`."""
        if self._h2 is enabled:
            return
        self._h2 = enabled
        if alpn_policy(self.settings, enabled) != self.settings:
            self.replace(settings=self.settings)

    def reload(self) -> None:
        """Read every certificate, key and CA file again (renewed on disk) and swap."""
        self.replace(tuple(c.spec for c in self._table.certificates), default=self._default_name)

    def set_acme_responder(self, responder: Callable[[str], ssl.SSLContext | None] | None) -> None:
        """TLS-ALPN-01 (RFC 8737): a handshake whose ClientHello offers ALPN ``acme-tls/1``
        gets ``responder(server_name)``'s context (the validation certificate, ALPN
        ``acme-tls/1``) when it returns one. Seeing the offered ALPN takes a message
        callback on the listener context; it runs for the messages before the SNI switch
        only (two per handshake), and only while a responder is set. None removes it."""
        self._acme = responder
        self.context._msg_callback = _note_acme_hello if responder is not None else None  # type: ignore[attr-defined]

    # handshake -----------------------------------------------------------------------------------
    def _on_sni(self, ssl_object: Any, server_name: str | None, _context: ssl.SSLContext) -> int | None:
        """OpenSSL's servername callback (called with None when the client sent no SNI)."""
        if self._acme is not None and server_name and getattr(ssl_object, "ferryman_acme_tls", False):
            validation = self._acme(server_name)
            if validation is not None:
                ssl_object.context = validation
                return None
        cert = self._table.select(server_name)
        if cert is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        ssl_object.context = cert.context
        return None


def count_handshakes(context: ssl.SSLContext, ok: Any, error: Callable[[str], None]) -> None:
    """Count the handshakes of every server connection made from ``context`` (a listener's
    ``CertStore.context``): ``ok.value += 1`` when one completes, ``error(reason)`` when
    OpenSSL fails it (plain HTTP on a TLS port, no shared version or cipher, a refused SNI,
    a bad client certificate...). A connection closed or timed out mid-handshake is neither.

    Works through ``context.sslobject_class``, which the event loop uses to wrap each
    accepted connection: one overridden method, called a few times per handshake and never
    after it, so the data path is untouched."""

    class CountedSSLObject(ssl.SSLObject):
        __slots__ = ()

        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                error(handshake_reason(exc))
                raise
            ok.value += 1

    context.sslobject_class = CountedSSLObject  # type: ignore[assignment]


_REASON = re.compile(r"[a-z0-9_]{1,64}")


def handshake_reason(exc: BaseException) -> str:
    """A metric label for a failed handshake: OpenSSL's reason lowercased
    (``http_request``, ``unsupported_protocol``, ``tlsv1_alert_unknown_ca``), ``eof`` when
    the client hung up, ``other`` when there is no usable reason."""
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return "eof"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        reason = reason.lower()
        if _REASON.fullmatch(reason):
            return reason
    return "other"


ACME_TLS_ALPN = "acme-tls/1"
_ACME_TLS_ALPN = ACME_TLS_ALPN.encode()


def _note_acme_hello(conn: Any, direction: str, _version: Any, content_type: Any, msg_type: Any, data: bytes) -> None:
    """Message callback: mark a connection whose ClientHello offers ``acme-tls/1`` (read by
    ``CertStore._on_sni``, which OpenSSL calls after this, with the same ``conn``)."""
    if msg_type != _CLIENT_HELLO_MSG or content_type != _HANDSHAKE_CONTENT or direction != "read" or _ACME_TLS_ALPN not in data:
        return
    try:  # the handshake message without its record: wrap it in one for the parser
        hello = parse_client_hello(b"\x16\x03\x01" + len(data).to_bytes(2, "big") + data)
    except TlsHelloError:
        return
    if hello is not NEED_MORE and ACME_TLS_ALPN in hello.alpn:  # type: ignore[union-attr]
        conn.ferryman_acme_tls = True


_CLIENT_HELLO_MSG = ssl._TLSMessageType.CLIENT_HELLO  # type: ignore[attr-defined]
_HANDSHAKE_CONTENT = ssl._TLSContentType.HANDSHAKE  # type: ignore[attr-defined]


def alpn_policy(settings: ServerTlsSettings, h2: bool | None) -> ServerTlsSettings:
    """``settings`` with ``h2`` first in ALPN (h2 True), without it (False: HTTP/1.1 only,
    ``http/1.1`` if nothing else is left), or as they are (None)."""
    if h2 is None:
        return settings
    rest = tuple(p for p in settings.alpn if p != "h2")
    alpn = ("h2", *rest) if h2 else (rest or ("http/1.1",))
    return settings if alpn == settings.alpn else replace(settings, alpn=alpn)


def _build_table(specs: tuple[CertificateSpec, ...], default: str | None, settings: ServerTlsSettings) -> _Table:
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"certificate {spec.name!r} is listed twice")
        seen.add(spec.name)
    loaded = tuple(_load_certificate(spec, settings) for spec in specs)
    chosen: Certificate | None = loaded[0] if loaded else None
    if default is not None:
        chosen = next((c for c in loaded if c.name == default), None)
        if chosen is None:
            raise ValueError(f"default certificate {default!r} is not among {sorted(seen)}")
    if not loaded and not settings.strict_sni:
        raise ValueError("a TLS listener needs at least one certificate")
    return _Table(loaded, chosen, settings)


def load_certificate(spec: CertificateSpec, settings: ServerTlsSettings | None = None) -> Certificate:
    """Load and check one certificate on its own: the config layer calls this per
    ``[certificates.NAME]`` so an error carries that table's path."""
    return _load_certificate(spec, settings or ServerTlsSettings())


def _load_certificate(spec: CertificateSpec, settings: ServerTlsSettings) -> Certificate:
    """Check the pair with precise messages, then build its own context."""
    leaf, names = _check_pair(spec.cert, spec.key)
    ctx = server_context(settings)
    try:
        ctx.load_cert_chain(spec.cert, spec.key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"cannot load certificate {spec.cert} with key {spec.key}: {_ssl_reason(exc)}") from exc
    served = spec.names or names
    if not served:
        raise ValueError(f"certificate {spec.cert} names no host (no subjectAltName DNS entry or CN): list its names explicitly")
    cert = Certificate(
        spec=spec,
        names=served,
        subject=leaf.subject.rfc4514_string(),
        not_after=leaf.not_valid_after_utc,
        fingerprint=hashlib.sha256(leaf.public_bytes(_der())).hexdigest(),
        context=ctx,
    )
    ctx.ferryman_certificate = cert  # type: ignore[attr-defined]  # see CertStore.served
    return cert


def _check_pair(cert_path: str, key_path: str) -> tuple[Any, tuple[str, ...]]:
    """The leaf certificate and its host names; ValueError naming the file otherwise."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise ValueError("TLS certificates need the 'cryptography' package") from exc
    cert_pem = _read(cert_path, "certificate")
    key_pem = cert_pem if key_path == cert_path else _read(key_path, "key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise ValueError(f"certificate file {cert_path} holds no PEM certificate") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as exc:
        raise ValueError(f"key file {key_path} is encrypted (a passphrase-protected key is not supported)") from exc
    except Exception as exc:  # ValueError, or UnsupportedAlgorithm for an unknown key type
        raise ValueError(f"key file {key_path} holds no usable PEM private key") from exc
    leaf = chain[0]
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise ValueError(f"key file {key_path} does not match certificate {cert_path} (the first certificate must be the key's)")
    return leaf, _host_names(leaf)


def _der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def _host_names(leaf: Any) -> tuple[str, ...]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value).lower() for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(dict.fromkeys(n.rstrip(".") for n in names if n))


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as exc:
        raise ValueError(f"{what} file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise ValueError(f"{what} file {path} is a directory") from exc
    except PermissionError as exc:
        raise ValueError(f"{what} file {path} cannot be read: permission denied") from exc
    except OSError as exc:
        raise ValueError(f"{what} file {path} cannot be read: {exc.strerror or exc}") from exc


def _load_ca(ctx: ssl.SSLContext, path: str, what: str) -> None:
    _read(path, what)  # precise message for a missing or unreadable file
    try:
        ctx.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{what} file {path} holds no usable PEM certificate: {_ssl_reason(exc)}") from exc


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return reason.lower().replace("_", " ") if isinstance(reason, str) else str(exc)


def _check_sni_name(name: str, where: str) -> str:
    lowered = name.strip().lower().rstrip(".")
    host = lowered.removeprefix("*.")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise ValueError(f"{where}: {name!r} is not a host name or a '*.domain' wildcard")
    return lowered


def _check_alpn(protocols: Sequence[str]) -> tuple[str, ...]:
    if isinstance(protocols, str):
        raise ValueError(f"ALPN must be a list of protocol names, not the string {protocols!r}")
    out = tuple(protocols)
    for proto in out:
        if not proto or len(proto.encode("latin-1", "replace")) > 255:
            raise ValueError(f"ALPN protocol {proto!r} must be 1 to 255 bytes")
    return out


# client side: mTLS identity ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The certificate the other end presented. ``subject``: RFC 4514 string
    (``CN=client,O=Acme``); ``sans``: ``("DNS:a.example", "URI:spiffe://…", "IP:10.0.0.1")``;
    ``fingerprint``: SHA-256 of the DER certificate, lowercase hex. ``verified``: the chain
    was checked against the configured CA (else only parsed)."""

    subject: str
    subject_cn: str | None
    issuer: str
    sans: tuple[str, ...]
    serial: str
    not_after: str
    fingerprint: str
    verified: bool

    @property
    def dns_names(self) -> tuple[str, ...]:
        return tuple(s[4:] for s in self.sans if s.startswith("DNS:"))


_SAN_PREFIX = {"DNS": "DNS", "URI": "URI", "email": "email", "IP Address": "IP", "DirName": "DirName"}


def peer_identity(ssl_object: Any) -> PeerIdentity | None:
    """The peer's certificate on a TLS connection (``transport.get_extra_info("ssl_object")``);
    None without one (plain connection, or a client that sent no certificate)."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    fingerprint = hashlib.sha256(der).hexdigest()
    info = ssl_object.getpeercert()
    if info:  # verified: OpenSSL already decoded it
        subject = _dn(info.get("subject", ()))
        issuer = _dn(info.get("issuer", ()))
        sans = tuple(f"{_SAN_PREFIX.get(kind, kind)}:{value}" for kind, value in info.get("subjectAltName", ()))
        cn = next((v for rdn in info.get("subject", ()) for k, v in rdn if k == "commonName"), None)
        return PeerIdentity(subject, cn, issuer, sans, info.get("serialNumber", ""), info.get("notAfter", ""), fingerprint, True)
    return _identity_from_der(der, fingerprint)


_DN_KEYS = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
            "localityName": "L", "stateOrProvinceName": "ST", "domainComponent": "DC", "emailAddress": "emailAddress"}


def _dn(rdns: Iterable[Iterable[tuple[str, str]]]) -> str:
    """``getpeercert()`` subject → RFC 4514 order (most specific first)."""
    parts = ["+".join(f"{_DN_KEYS.get(k, k)}={_escape_dn(v)}" for k, v in rdn) for rdn in rdns]
    return ",".join(reversed(parts))


def _escape_dn(value: str) -> str:
    out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    return out[:-1] + "\\ " if out.endswith(" ") else out


def _identity_from_der(der: bytes, fingerprint: str) -> PeerIdentity:
    """An unverified certificate (verification off): decoded with ``cryptography``."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)
    sans: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans += [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
        sans += [f"URI:{n}" for n in san.get_values_for_type(x509.UniformResourceIdentifier)]
        sans += [f"email:{n}" for n in san.get_values_for_type(x509.RFC822Name)]
        sans += [f"IP:{n}" for n in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return PeerIdentity(
        cert.subject.rfc4514_string(), str(cns[0].value) if cns else None, cert.issuer.rfc4514_string(),
        tuple(sans), f"{cert.serial_number:X}", cert.not_valid_after_utc.strftime("%b %d %H:%M:%S %Y GMT"),
        fingerprint, False,
    )


# client side: origination ------------------------------------------------------------------------
def client_context(
    *,
    ca_file: str | None = None,
    verify: bool = True,
    cert: str | None = None,
    key: str | None = None,
    alpn: Sequence[str] | None = None,
    min_version: str = "1.2",
) -> ssl.SSLContext:
    """A context for connecting to an upstream over TLS.

    ``verify``: check the chain (against ``ca_file``, else the system store) and the host
    name. ``cert``/``key``: a client certificate for upstreams that require one (``key``
    defaults to ``cert``: one file holding both). ``alpn``: protocols to offer.
    """
    if min_version not in _VERSIONS:
        raise ValueError(f"TLS min_version must be one of {', '.join(_VERSIONS)}, not {min_version!r}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _VERSIONS[min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION
    if verify:
        if ca_file:
            _load_ca(ctx, ca_file, "CA")
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if key and not cert:
        raise ValueError(f"client key {key} given without a client certificate")
    if cert:
        key = key or cert
        _check_pair(cert, key)
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"cannot load client certificate {cert} with key {key}: {_ssl_reason(exc)}") from exc
    if alpn:
        ctx.set_alpn_protocols(list(_check_alpn(alpn)))
    return ctx


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS towards one upstream: hashable, so it can be part of the connection pool key.

    ``sni`` overrides the name sent and verified (default: the peer's host; an IP address
    is verified against the certificate's IP entries and sends no SNI). See
    :func:`client_context` for the rest.
    """

    verify: bool = True
    ca_file: str | None = None
    sni: str | None = None
    cert: str | None = None
    key: str | None = None
    alpn: tuple[str, ...] = ()
    min_version: str = "1.2"

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpn", _check_alpn(self.alpn))
        if self.min_version not in _VERSIONS:
            raise ValueError(f"TLS min_version must be one of {', '.join(_VERSIONS)}, not {self.min_version!r}")
        if self.key and not self.cert:
            raise ValueError(f"client key {self.key} given without a client certificate")
        if self.sni is not None:
            if self.sni.startswith("*"):
                raise ValueError(f"TLS sni {self.sni!r} must be a host name, not a wildcard")
            _check_sni_name(self.sni, "TLS sni")

    def server_hostname(self, host: str) -> str | None:
        """The name to send as SNI and to verify: ``sni``, else ``host`` (None for a Unix
        socket peer without ``sni``)."""
        return self.sni or host or None

    def context(self) -> ssl.SSLContext:
        """The client context for these options (built once per process and cached)."""
        return _cached_client_context(self)


@lru_cache(maxsize=256)
def _cached_client_context(options: TlsOptions) -> ssl.SSLContext:
    return client_context(
        ca_file=options.ca_file, verify=options.verify, cert=options.cert, key=options.key,
        alpn=options.alpn or None, min_version=options.min_version,
    )


def clear_client_contexts() -> None:
    """Forget cached upstream contexts (on reload: CA or client certificate files may have
    been renewed); new connections build fresh ones."""
    _cached_client_context.cache_clear()


# L4: peek at the ClientHello -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HelloPeek:
    """What :func:`read_client_hello` learnt. ``hello`` is None when the connection is not
    TLS at all (``not_tls`` says why). ``consumed``: bytes taken off the socket (the
    ``prefix`` given plus any read past it): send them upstream first, then pump the rest.
    Empty in the common case, where the whole hello was peeked and left in the kernel."""

    hello: ClientHello | None
    consumed: bytes
    not_tls: str = ""


async def read_client_hello(
    sock: socket.socket, *, prefix: bytes = b"", timeout: float = 5.0, max_size: int = MAX_HELLO
) -> HelloPeek:
    """Learn the SNI/ALPN of a new connection without terminating TLS.

    Reads with ``MSG_PEEK``: when the whole hello has arrived (the usual case) nothing is
    consumed, so the pump can still splice from the first byte. The pieces of a hello
    that arrives in several reads are consumed until the last one (which is only peeked),
    since a socket whose bytes were peeked stays readable and the wait for more would
    spin. ``prefix``: bytes already read (after a PROXY header). Raises ProxyError for a
    malformed hello, EOF, or no complete hello within ``timeout`` seconds.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    limit = max_size + 5 * MAX_RECORDS
    taken = bytearray(prefix)
    while True:
        data = await peek(sock, limit - len(taken), deadline, "TLS ClientHello", timeout, len(taken))
        seen = taken + data
        try:
            result = parse_client_hello(seen, max_size=max_size)
        except NotTlsError as exc:
            return HelloPeek(None, bytes(taken), str(exc))
        except TlsHelloError as exc:
            raise ProxyError(ErrorKind.PROTOCOL_ERROR, ErrorSource.DOWNSTREAM, context=f"bad TLS ClientHello: {exc}") from exc
        if result is not NEED_MORE:
            return HelloPeek(result, bytes(taken))  # type: ignore[arg-type]  # the peeked rest stays queued
        if len(seen) >= limit:
            raise ProxyError(ErrorKind.PROTOCOL_ERROR, ErrorSource.DOWNSTREAM, context=f"no complete ClientHello in {limit} bytes")
        taken += recv_exactly(sock, len(data), "ClientHello")  # incomplete: take it, so the next wait sees only new bytes

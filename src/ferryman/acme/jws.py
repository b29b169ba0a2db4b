"""JSON Web Signatures for ACME requests (RFC 8555 §6.2, RFC 7515/7518/7638). Sans-IO.

Every ACME POST body is a flattened JWS signed with the account key: ES256 (ECDSA P-256
with SHA-256, the signature as the raw 64 bytes ``r || s``). The protected header carries
the ``nonce`` and ``url``, and either the public key (``jwk``: new accounts) or the
account URL (``kid``: everything after).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["b64url", "b64url_decode", "generate_account_key", "jwk", "key_authorization", "sign", "thumbprint"]

_P256_BYTES = 32


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_account_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _check(key: ec.EllipticCurvePrivateKey) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the ACME account key must be an EC P-256 key (ES256)")


def jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The public JWK of an EC P-256 key, members in lexicographic order (RFC 7638)."""
    _check(key)
    numbers = key.public_key().public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": b64url(numbers.x.to_bytes(_P256_BYTES, "big")),
        "y": b64url(numbers.y.to_bytes(_P256_BYTES, "big")),
    }


def thumbprint(key: ec.EllipticCurvePrivateKey) -> str:
    """RFC 7638 thumbprint: SHA-256 of the JWK's required members, no whitespace."""
    canonical = json.dumps(jwk(key), sort_keys=True, separators=(",", ":")).encode()
    return b64url(hashlib.sha256(canonical).digest())


def key_authorization(token: str, account_thumbprint: str) -> str:
    """What a challenge proves (RFC 8555 §8.1): ``token.thumbprint``."""
    return f"{token}.{account_thumbprint}"


def sign(key: ec.EllipticCurvePrivateKey, url: str, nonce: str, payload: Any, *, kid: str | None = None) -> bytes:
    """The flattened JWS JSON body of a POST to ``url``. ``payload`` None means
    POST-as-GET (an empty payload, RFC 8555 §6.3); otherwise it is sent as JSON.
    Without ``kid`` the header carries the public key (``jwk``)."""
    _check(key)
    protected: dict[str, Any] = {"alg": "ES256", "nonce": nonce, "url": url}
    if kid is None:
        protected["jwk"] = jwk(key)
    else:
        protected["kid"] = kid
    header64 = b64url(json.dumps(protected, separators=(",", ":")).encode())
    payload64 = "" if payload is None else b64url(json.dumps(payload, separators=(",", ":")).encode())
    der = key.sign(f"{header64}.{payload64}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")
    return json.dumps({"protected": header64, "payload": payload64, "signature": b64url(signature)}).encode()

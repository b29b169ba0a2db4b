"""ACME request signing: base64url, the JWK and its RFC 7638 thumbprint, flattened ES256 JWS
(checked by verifying the signature with the public key), key authorizations."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ferryman.acme import jws


def _verify(key: ec.EllipticCurvePrivateKey, body: bytes) -> tuple[dict, bytes]:
    """(protected header, payload bytes) of a flattened JWS whose ES256 signature holds."""
    doc = json.loads(body)
    assert set(doc) == {"protected", "payload", "signature"}
    raw = jws.b64url_decode(doc["signature"])
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key.public_key().verify(der, f"{doc['protected']}.{doc['payload']}".encode(), ec.ECDSA(hashes.SHA256()))
    return json.loads(jws.b64url_decode(doc["protected"])), jws.b64url_decode(doc["payload"])


def test_b64url_has_no_padding_and_round_trips() -> None:
    for data in (b"", b"f", b"fo", b"foo", bytes(range(256))):
        text = jws.b64url(data)
        assert "=" not in text and "+" not in text and "/" not in text
        assert jws.b64url_decode(text) == data


def test_the_jwk_holds_the_public_point_and_the_thumbprint_is_rfc7638() -> None:
    key = jws.generate_account_key()
    jwk = jws.jwk(key)
    numbers = key.public_key().public_numbers()
    assert list(jwk) == ["crv", "kty", "x", "y"]
    assert int.from_bytes(jws.b64url_decode(jwk["x"]), "big") == numbers.x
    assert int.from_bytes(jws.b64url_decode(jwk["y"]), "big") == numbers.y
    canonical = '{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}' % (jwk["x"], jwk["y"])
    assert jws.thumbprint(key) == jws.b64url(hashlib.sha256(canonical.encode()).digest())
    assert jws.key_authorization("tok", jws.thumbprint(key)) == f"tok.{jws.thumbprint(key)}"


def test_a_new_account_request_carries_the_jwk_and_a_valid_signature() -> None:
    key = jws.generate_account_key()
    body = jws.sign(key, "https://ca.test/new-acct", "nonce-1", {"termsOfServiceAgreed": True})
    header, payload = _verify(key, body)
    assert header == {"alg": "ES256", "nonce": "nonce-1", "url": "https://ca.test/new-acct", "jwk": jws.jwk(key)}
    assert json.loads(payload) == {"termsOfServiceAgreed": True}


def test_later_requests_carry_the_kid_and_post_as_get_has_an_empty_payload() -> None:
    key = jws.generate_account_key()
    body = jws.sign(key, "https://ca.test/order/1", "n2", None, kid="https://ca.test/acct/7")
    header, payload = _verify(key, body)
    assert header["kid"] == "https://ca.test/acct/7" and "jwk" not in header
    assert payload == b"" and json.loads(body)["payload"] == ""


def test_a_tampered_body_does_not_verify() -> None:
    key = jws.generate_account_key()
    doc = json.loads(jws.sign(key, "https://ca.test/x", "n", {"a": 1}))
    doc["payload"] = jws.b64url(b'{"a":2}')
    with pytest.raises(InvalidSignature):
        _verify(key, json.dumps(doc).encode())


def test_only_p256_keys_sign() -> None:
    with pytest.raises(ValueError, match="P-256"):
        jws.sign(ec.generate_private_key(ec.SECP384R1()), "https://ca.test/x", "n", {})
    with pytest.raises(ValueError, match="P-256"):
        jws.jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024))  # type: ignore[arg-type]

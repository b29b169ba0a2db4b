"""``[certificates.NAME.acme]``: accepted shapes, and every mistake reported with its TOML
path (by ``ferryman check`` too, which writes nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferryman.config.load import load_text
from ferryman.config.tls import cert_store, certificate_specs
from ferryman.errors import ConfigError

BASE = """
[listeners.web]
addr = "127.0.0.1:0"
protocol = "http"
upstream = "app"
{tls}

[upstreams.app]
backends = ["127.0.0.1:1"]

[certificates.site]
{body}
"""


def _load(body: str, tls: str = 'tls = ["site"]') -> object:
    return load_text(BASE.format(body=body, tls=tls))


def _errors(body: str, tls: str = 'tls = ["site"]') -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        _load(body, tls)
    return info.value.errors


def test_an_acme_certificate_needs_no_files_and_check_writes_nothing(tmp_path: Path) -> None:
    storage = tmp_path / "acme"
    config = _load(f'acme = {{ names = ["Www.Example.com."], email = "ops@example.com", storage = "{storage}", renew_before = "30d" }}')
    acme = config.certificates["site"].acme  # type: ignore[attr-defined]
    assert acme.names == ["www.example.com"] and acme.renew_before == 30 * 86400
    assert acme.challenge == "http-01" and acme.check_interval == 12 * 3600 and acme.retry_interval == 3600
    assert acme.directory == "https://acme-v02.api.letsencrypt.org/directory"
    assert not storage.exists()  # validation (ferryman check) creates nothing
    store = cert_store(config, config.listeners["web"])  # type: ignore[attr-defined]
    assert store is not None and store.select("www.example.com").names == ("www.example.com",)
    assert certificate_specs(config)["site"].cert == str(storage / "certificates" / "site.placeholder.pem")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ('acme = { names = [] }', "certificates.site.acme.names", "at least 1"),
        ('acme = { names = ["*.example.com"] }', "certificates.site.acme.names[0]", "wildcard needs the dns-01"),
        ('acme = { names = ["localhost"] }', "certificates.site.acme.names[0]", "DNS name with a dot"),
        ('acme = { names = ["10.0.0.1"] }', "certificates.site.acme.names[0]", "DNS name with a dot"),
        ('acme = { names = ["a.test", "A.test"] }', "certificates.site.acme", "listed twice"),
        ('acme = { names = ["a.test"], directory = "http://ca.test/dir" }', "certificates.site.acme.directory", "https://"),
        ('acme = { names = ["a.test"], email = "nobody" }', "certificates.site.acme.email", "e-mail address"),
        ('acme = { names = ["a.test"], challenge = "dns-01" }', "certificates.site.acme.challenge", "http-01"),
        ('acme = { names = ["a.test"], renew_before = "0s" }', "certificates.site.acme.renew_before", "greater than 0"),
        ('acme = { names = ["a.test"], contact = "x" }', "certificates.site.acme.contact", "unknown key"),
        ('cert = "a.pem"\nkey = "a.key"\nacme = { names = ["a.test"] }', "certificates.site", "leave out cert, key and names"),
        ('names = ["a.test"]', "certificates.site", "give cert and key"),
    ],
)
def test_structural_mistakes_name_their_path(body: str, path: str, message: str) -> None:
    errors = _errors(body)
    assert any(p == path and message in m for p, m in errors), errors


def test_storage_ca_and_reachability_are_checked(tmp_path: Path) -> None:
    errors = _errors('acme = { names = ["a.test"], storage = "relative/dir", ca = "/nonexistent/ca.pem", challenge = "tls-alpn-01" }', tls="")
    assert ("certificates.site.acme.storage", "'relative/dir' must be an absolute path") in errors
    assert any(p == "certificates.site.acme.ca" and "/nonexistent/ca.pem" in m for p, m in errors), errors
    assert any(p == "certificates.site.acme.challenge" and "no listener lists it in tls" in m for p, m in errors), errors


def test_http01_needs_an_http_listener(tmp_path: Path) -> None:
    text = f"""
[listeners.raw]
addr = "127.0.0.1:0"
upstream = "app"
[upstreams.app]
backends = ["127.0.0.1:1"]
[certificates.site]
acme = {{ names = ["a.test"], storage = "{tmp_path}" }}
"""
    with pytest.raises(ConfigError) as info:
        load_text(text)
    assert ("certificates.site.acme.challenge", "http-01 is answered by http listeners: the config has none") in info.value.errors


def test_the_certificate_name_must_be_a_file_name(tmp_path: Path) -> None:
    text = BASE.format(body="", tls='tls = ["../site"]').replace("[certificates.site]", f'[certificates."../site"]\nacme = {{ names = ["a.test"], storage = "{tmp_path}" }}')
    with pytest.raises(ConfigError) as info:
        load_text(text)
    assert any(p == "certificates.../site" and "file name" in m for p, m in info.value.errors), info.value.errors


def test_an_unreadable_stored_certificate_is_a_check_error(tmp_path: Path) -> None:
    (tmp_path / "certificates").mkdir()
    (tmp_path / "certificates" / "site.pem").write_text("not a certificate")
    errors = _errors(f'acme = {{ names = ["a.test"], storage = "{tmp_path}" }}')
    assert any(p == "certificates.site" and "stored certificate" in m for p, m in errors), errors

"""``-c etcd://...``: every accepted form, every mistake named, the password never shown,
the TLS parameters (``ca``, ``cert``, ``key``, ``tls``) checked together and shown."""

from __future__ import annotations

import pytest

from ferryman.config.etcd_url import DEFAULT_TIMEOUT, EtcdUrl, is_etcd_url, parse_etcd_url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("etcd://127.0.0.1:2379/ferryman", EtcdUrl(((("127.0.0.1", 2379),)), "/ferryman")),
        ("etcd://10.0.0.1:2379,10.0.0.2:2380/ferryman", EtcdUrl((("10.0.0.1", 2379), ("10.0.0.2", 2380)), "/ferryman")),
        ("etcd://etcd-0.internal/ferryman/", EtcdUrl((("etcd-0.internal", 2379),), "/ferryman")),  # default port, trailing slash
        ("etcd://[::1]:2379,[fe80::1]/a/b", EtcdUrl((("::1", 2379), ("fe80::1", 2379)), "/a/b")),
        ("ETCD://h:1/p?timeout=250ms", EtcdUrl((("h", 1),), "/p", 0.25)),
        ("etcd://h:1/p?user=root&password=a%2Bb%26c+d", EtcdUrl((("h", 1),), "/p", DEFAULT_TIMEOUT, "root", "a+b&c+d")),
        ("etcd://h:1/my%20prefix", EtcdUrl((("h", 1),), "/my prefix")),
        ("etcd://h:1/p?tls=true", EtcdUrl((("h", 1),), "/p", tls=True)),
        ("etcd://h:1/p?tls=TRUE", EtcdUrl((("h", 1),), "/p", tls=True)),
        ("etcd://h:1/p?tls=false", EtcdUrl((("h", 1),), "/p")),
        ("etcd://h:1/p?ca=/etc/etcd/ca.pem", EtcdUrl((("h", 1),), "/p", tls=True, ca="/etc/etcd/ca.pem")),
        ("etcd://h:1/p?ca=ca.pem&tls=true", EtcdUrl((("h", 1),), "/p", tls=True, ca="ca.pem")),  # relative: to the working directory
        (
            "etcd://h:1,g:2/p?cert=/c/me.pem&key=/c/me%26you.key",  # mutual TLS with the system's CAs
            EtcdUrl((("h", 1), ("g", 2)), "/p", tls=True, cert="/c/me.pem", key="/c/me&you.key"),
        ),
        (
            "etcd://h:1/p?user=u&password=pw&ca=a.pem&cert=c.pem&key=k.pem&timeout=1s",
            EtcdUrl((("h", 1),), "/p", 1.0, "u", "pw", True, "a.pem", "c.pem", "k.pem"),
        ),
    ],
)
def test_accepted_forms(text: str, expected: EtcdUrl) -> None:
    assert is_etcd_url(text)
    assert parse_etcd_url(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://h:1/p", "expected etcd://HOST:PORT"),
        ("etcd:/h:1/p", "expected etcd://HOST:PORT"),
        ("etcd://h:1", "no key prefix"),
        ("etcd://h:1/", "no key prefix"),
        ("etcd:///p", "no etcd endpoint"),
        ("etcd://h:1//p//q", "empty path segment"),
        ("etcd://h:x/p", "port 'x' is not a number"),
        ("etcd://h:/p", "empty port"),
        ("etcd://h:0/p", "port 0 is out of range"),
        ("etcd://h:65536/p", "port 65536 is out of range"),
        ("etcd://h:1,,g:2/p", "an empty endpoint"),
        ("etcd://h:1,h:1/p", "listed twice"),
        ("etcd://::1:2379/p", "in brackets"),
        ("etcd://[::1/p", "missing ']'"),
        ("etcd://[nope]:1/p", "is not an IPv6 address"),
        ("etcd://[::1]x/p", "expected ':PORT' after ']'"),
        ("etcd://h$st:1/p", "is not a host name or address"),
        ("etcd://root:pw@h:1/p", "put credentials in the query"),
        ("etcd://h:1/p?timeout=soon", "timeout: 'soon' is not a duration"),
        ("etcd://h:1/p?timeout=0s", "timeout: must be more than 0"),
        ("etcd://h:1/p?user=root", "user and password go together"),
        ("etcd://h:1/p?password=pw", "user and password go together"),
        ("etcd://h:1/p?user=&password=pw", "user: must not be empty"),
        ("etcd://h:1/p?colour=red", "unknown parameter 'colour' (known: timeout, user, password, ca, cert, key, tls)"),
        ("etcd://h:1/p?cert=c.pem", "cert and key go together"),
        ("etcd://h:1/p?ca=a.pem&key=k.pem", "cert and key go together"),
        ("etcd://h:1/p?ca=", "ca: must name a PEM file"),
        ("etcd://h:1/p?cert=c.pem&key=%20", "key: must name a PEM file"),
        ("etcd://h:1/p?tls=yes", "tls: expected true or false, got 'yes'"),
        ("etcd://h:1/p?tls=false&ca=a.pem", "tls=false contradicts ca, cert and key"),
        ("etcd://h:1/p?ca=a.pem&ca=b.pem", "parameter 'ca' is given twice"),
        ("etcds://h:1/p", "no etcds:// scheme: write etcd://HOST:PORT/PREFIX?tls=true"),
        ("etcd://h:1/p?timeout=1s&timeout=2s", "parameter 'timeout' is given twice"),
        ("etcd://h:1/p?timeout", "expected NAME=VALUE pairs"),
        ("etcd://h:1/p#top", "a fragment"),
    ],
)
def test_mistakes_are_named(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_etcd_url(text)
    assert message in str(caught.value)


def test_files_are_not_urls() -> None:
    assert not is_etcd_url("ferryman.toml")
    assert not is_etcd_url("/etc/etcd.toml")
    assert is_etcd_url("ETCDS://h/p")  # taken as a URL, so that the error can point to tls=true


def test_the_redacted_url_shows_the_tls_parameters() -> None:
    url = parse_etcd_url("etcd://h:1/p?password=s3cret&ca=/pki/ca%20bundle.pem&cert=/pki/c.pem&user=root&key=/pki/c.key")
    assert url.redacted() == "etcd://h:1/p?user=root&ca=/pki/ca%20bundle.pem&cert=/pki/c.pem&key=/pki/c.key"
    assert parse_etcd_url(url.redacted() + "&password=s3cret") == url
    assert parse_etcd_url("etcd://h:1/p?tls=true").redacted() == "etcd://h:1/p?tls=true"
    assert parse_etcd_url("etcd://h:1/p?tls=true&ca=a.pem").redacted() == "etcd://h:1/p?ca=a.pem"  # ca implies TLS
    assert parse_etcd_url("etcd://h:1/p?tls=false").redacted() == "etcd://h:1/p"


def test_the_redacted_url_keeps_everything_but_the_password() -> None:
    url = parse_etcd_url("etcd://h:1,[::1]:2/p?timeout=2s&user=r%20oot&password=s3cret")
    assert url.redacted() == "etcd://h:1,[::1]:2/p?timeout=2s&user=r%20oot"
    assert str(url) == url.redacted() and "s3cret" not in repr(url.redacted())
    assert parse_etcd_url(url.redacted() + "&password=x") == EtcdUrl(url.endpoints, "/p", 2.0, "r oot", "x")
    assert parse_etcd_url("etcd://h/p").redacted() == "etcd://h:2379/p"

"""``-c etcd://...``: every accepted form, every mistake named, the password never shown."""

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
        ("etcd://h:1/p?colour=red", "unknown parameter 'colour' (known: timeout, user, password)"),
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


def test_the_redacted_url_keeps_everything_but_the_password() -> None:
    url = parse_etcd_url("etcd://h:1,[::1]:2/p?timeout=2s&user=r%20oot&password=s3cret")
    assert url.redacted() == "etcd://h:1,[::1]:2/p?timeout=2s&user=r%20oot"
    assert str(url) == url.redacted() and "s3cret" not in repr(url.redacted())
    assert parse_etcd_url(url.redacted() + "&password=x") == EtcdUrl(url.endpoints, "/p", 2.0, "r oot", "x")
    assert parse_etcd_url("etcd://h/p").redacted() == "etcd://h:2379/p"

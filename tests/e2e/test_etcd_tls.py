"""A config kept in a TLS-only etcd (``?ca=...``, ``&cert=...&key=...``): served and followed
through a watch over TLS, pushed over mutual TLS, and every TLS failure (an unknown CA, a
wrong host name, a missing or refused client certificate, a plain-HTTP endpoint, a bad file)
refused with the endpoint or the parameter named. Real etcd, real certificates."""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.certs import Authority, Issued
from support.etcd import Etcd, EtcdTls, running_etcd, site_keys
from support.process import (
    LOCAL,
    HttpOrigin,
    ferryman_cli,
    free_port,
    http_get,
    running,
    wait_until,
)

from ferryman.config.etcd import EtcdSource
from ferryman.config.etcd_watch import EtcdWatcher

RELOAD_TIMEOUT = 15.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, Issued]:
    """A CA etcd does not know, and a client certificate it signed."""
    authority = Authority(tmp_path_factory.mktemp("stranger"), cn="stranger CA")
    return authority, authority.issue("stranger", client=True, file="stranger")


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory, pki: Authority) -> Iterator[Etcd]:
    """HTTPS only; any client may connect."""
    with running_etcd(tmp_path_factory.mktemp("etcd-tls"), EtcdTls.make(pki)) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_etcd(tmp_path_factory: pytest.TempPathFactory, pki: Authority) -> Iterator[Etcd]:
    """HTTPS only, and a client certificate signed by ``pki`` required."""
    with running_etcd(tmp_path_factory.mktemp("etcd-mtls"), EtcdTls.make(pki, client_cert_auth=True)) as server:
        yield server


def as_toml(prefix: str, keys: dict[str, str]) -> str:
    return "".join(f"[{key.removeprefix(prefix + '/').replace('/', '.')}]\n{value}\n" for key, value in keys.items())


def body(port: int) -> bytes:
    return http_get(port, "/")[1]


def admin_source(port: int) -> dict:
    import http.client
    import json

    conn = http.client.HTTPConnection(LOCAL, port, timeout=10)
    try:
        conn.request("GET", "/api/v1/config/source", headers={"X-Ferryman-UI": "1"})
        response = conn.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        conn.close()


# serving over TLS ------------------------------------------------------------------------------
def test_run_over_tls_follows_a_changed_key(tls_etcd: Etcd, origins: tuple[HttpOrigin, HttpOrigin], prefix: str) -> None:
    a, b = origins
    port, admin = free_port(), free_port()
    for key, value in site_keys(prefix, port, a.addr, admin=admin).items():
        tls_etcd.put(key, value)
    url = tls_etcd.url(prefix, tls_etcd.tls_query(client=False))
    with running(url) as proc:  # type: ignore[arg-type]
        proc.wait_ready()
        assert body(port) == b"a"
        tls_etcd.put(f"{prefix}/upstreams/app", f'backends = ["{b.addr}"]\n')
        wait_until(lambda: body(port) == b"b", RELOAD_TIMEOUT, "the change to arrive through the watch over TLS")
        source = admin_source(admin)
        assert source["url"] == url  # the CA's path is shown: it is no secret
        assert tomllib.loads(source["text"])["upstreams"]["app"]["backends"] == [b.addr]
        assert proc.stop(10) == 0


def test_mutual_tls_push_run_and_watch(mtls_etcd: Etcd, origins: tuple[HttpOrigin, HttpOrigin], prefix: str, tmp_path: Path) -> None:
    a, b = origins
    port = free_port()
    url = mtls_etcd.url(prefix, mtls_etcd.tls_query())
    config = tmp_path / "site.toml"
    config.write_text(as_toml(prefix, site_keys(prefix, port, a.addr)))
    pushed = ferryman_cli("config", "push", str(config), url)
    assert pushed.returncode == 0 and "4 key(s) written" in pushed.stdout, pushed.stderr
    assert f"key={mtls_etcd.tls.client_key}" in pushed.stdout  # type: ignore[union-attr]
    assert mtls_etcd.get(f"{prefix}/upstreams/app") == f'backends = ["{a.addr}"]\nconnect_timeout = "2s"\n'
    with running(url) as proc:  # type: ignore[arg-type]
        proc.wait_ready()
        assert body(port) == b"a"
        mtls_etcd.put(f"{prefix}/upstreams/app", f'backends = ["{b.addr}"]\n')
        wait_until(lambda: body(port) == b"b", RELOAD_TIMEOUT, "the change to arrive through the watch over mutual TLS")
        assert proc.stop(10) == 0
    pulled = ferryman_cli("config", "pull", url)
    assert pulled.returncode == 0 and tomllib.loads(pulled.stdout)["upstreams"]["app"]["backends"] == [b.addr], pulled.stderr


def test_the_watcher_over_mutual_tls_reports_a_change_and_stops(mtls_etcd: Etcd, prefix: str) -> None:
    """In process: the watch stream is a TLS connection; a put is reported with its revision,
    and stop() ends the read blocked on it (the thread is gone, not left for the idle timeout)."""
    mtls_etcd.put(f"{prefix}/server", "workers = 1\n")
    source = EtcdSource.parse(mtls_etcd.url(prefix, mtls_etcd.tls_query()))
    source.load()
    seen: list[int] = []
    changed = threading.Event()
    watcher = EtcdWatcher(source, lambda revision: (seen.append(revision), changed.set()), idle_timeout=120)
    watcher.start()
    try:
        written = mtls_etcd.put(f"{prefix}/server", "workers = 2\n")
        assert changed.wait(RELOAD_TIMEOUT), "the watcher reported no change"
        assert seen[-1] == written
    finally:
        watcher.stop(timeout=10)
    assert watcher._thread is not None and not watcher._thread.is_alive()


def test_failover_skips_an_endpoint_whose_certificate_does_not_match(tls_etcd: Etcd, prefix: str) -> None:
    """``localhost`` is not in etcd's certificate (only the IP is): that endpoint fails its
    handshake and the next one, the same etcd by its IP, answers."""
    tls_etcd.put(f"{prefix}/server", "workers = 1\n")
    url = f"etcd://localhost:{tls_etcd.port},{tls_etcd.endpoint}{prefix}?{tls_etcd.tls_query(client=False)}"
    checked = ferryman_cli("check", "-c", url)
    assert checked.returncode == 0 and "ok at revision" in checked.stdout, checked.stderr


# refused, with the reason -----------------------------------------------------------------------
def test_an_unknown_ca_or_host_name_is_refused_naming_the_endpoint(tls_etcd: Etcd, stranger: tuple[Authority, Issued], prefix: str) -> None:
    endpoint = tls_etcd.endpoint
    cases = [
        (f"etcd://{endpoint}{prefix}?ca={stranger[0].cert}", f"{endpoint}: TLS: etcd's certificate is not trusted: unable to get local issuer certificate (is ca= the CA"),
        (f"etcd://{endpoint}{prefix}?tls=true", f"{endpoint}: TLS: etcd's certificate is not trusted: unable to get local issuer certificate"),  # the system's CAs
        (f"etcd://localhost:{tls_etcd.port}{prefix}?{tls_etcd.tls_query(client=False)}", f"localhost:{tls_etcd.port}: TLS: etcd's certificate is not trusted: Hostname mismatch, certificate is not valid for 'localhost'"),
        (f"etcd://{endpoint}{prefix}", f"{endpoint}: Remote end closed connection without response (if etcd serves TLS only: add ca=PATH or tls=true"),
    ]
    for url, message in cases:
        result = ferryman_cli("check", "-c", url)
        assert result.returncode == 1, (url, result.stdout, result.stderr)
        assert f"cannot reach etcd ({message}" in result.stderr, (url, result.stderr)


def test_mutual_tls_without_a_good_client_certificate_is_refused(mtls_etcd: Etcd, stranger: tuple[Authority, Issued], prefix: str) -> None:
    endpoint, ca = mtls_etcd.endpoint, mtls_etcd.tls.ca  # type: ignore[union-attr]
    none = ferryman_cli("check", "-c", mtls_etcd.url(prefix, f"ca={ca}"))
    assert none.returncode == 1
    assert f"{endpoint}: TLS: etcd " in none.stderr and "the URL gives none: add cert=PATH&key=PATH" in none.stderr, none.stderr
    client = stranger[1]
    other = ferryman_cli("config", "pull", mtls_etcd.url(prefix, f"ca={ca}&cert={client.cert}&key={client.key}"))
    assert other.returncode == 1
    assert f"{endpoint}: TLS: etcd " in other.stderr and "client certificate" in other.stderr and "--trusted-ca-file" in other.stderr, other.stderr


def test_a_plain_http_endpoint_is_named_as_not_speaking_tls(prefix: str) -> None:
    origin = HttpOrigin("plain")
    try:
        result = ferryman_cli("check", "-c", f"etcd://{origin.addr}{prefix}?tls=true&timeout=2s")
    finally:
        origin.close()
    assert result.returncode == 1
    assert f"{origin.addr}: TLS: the endpoint does not speak TLS" in result.stderr, result.stderr


def test_a_bad_tls_file_is_refused_before_etcd_is_contacted(pki: Authority, tmp_path: Path, prefix: str) -> None:
    """Exit 2 (a bad URL), naming the parameter and the path; the endpoint is a closed port,
    so reaching etcd would give exit 1 instead."""
    client = pki.issue("client", client=True, file="client")
    other = pki.issue("other", client=True, file="other")
    dead = f"{LOCAL}:{free_port()}"
    missing = tmp_path / "missing.pem"
    for command, query, message in (
        (("check", "-c"), f"ca={missing}", f"bad etcd URL: ca={missing}: cannot read it: No such file or directory"),
        (("check", "-c"), f"ca={client.key}", f"bad etcd URL: ca={client.key}: no PEM certificate in it"),
        (("config", "pull"), f"cert={client.cert}&key={other.key}", f"bad etcd URL: key={other.key} is not the private key of cert={client.cert}"),
        (("config", "pull"), f"cert={client.cert}", "bad etcd URL: cert and key go together"),
    ):
        result = ferryman_cli(*command, f"etcd://{dead}{prefix}?{query}")
        assert result.returncode == 2 and message in result.stderr, (query, result.stderr)

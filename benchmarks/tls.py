#!/usr/bin/env python3
"""HTTPS and HTTP/2 benchmark: ferryman vs nginx vs haproxy terminating TLS.

One command, from the repo root::

    python benchmarks/tls.py [--rounds N] [--duration S] [--quick] [--contenders a,b]
                             [--scenarios a,b] [--with-floor] [--python PATH|optimized]
                             [--write-results]

An nginx origin serves ``/small`` over plain HTTP/1.1; every contender terminates TLS (one
ECDSA P-256 certificate, made for the run; TLS 1.2/1.3 with each server's default ciphers)
with one worker and proxies to the origin over a keep-alive pool. Scenarios:

- ``tls-new-conn``: wrk with ``Connection: close``, so every request is a new TCP connection
  and a TLS handshake: handshakes per second. wrk resumes: it offers the session ticket of
  its previous connection, so after the first handshake of each of its connection slots
  every handshake is a TLS 1.3 resumption with an X25519 key exchange (no certificate, no
  signature), for every contender that issues tickets (all do by default).
- ``tls-keepalive``: wrk over kept-alive TLS connections: the cost of the record layer.
- ``h2-small``: h2load ``-c10 -m10`` over TLS with ALPN ``h2`` (ten connections, ten
  concurrent streams each): HTTP/2 small requests.

Rounds are interleaved and ratios are medians of paired ratios, as in ``l7.py``.

With ``--with-floor``, ``python-floor`` (``floor_proxy.py --cert --key``: the least a Python
proxy spends per TLS handshake, per TLS request and, with ``floor_h2.py`` on the ``h2``
library, per HTTP/2 request on this interpreter) runs in every scenario, on ferryman's interpreter
(``--python``), with the same certificate, and gets a table of its own: how much ferryman
costs above that floor, and how far the floor is from nginx. ``--with-python-bare`` and
``--with-nginx-bare`` add two servers that answer ``/small`` themselves (``tls_bare.py``, and
nginx's ``return 200``), in the same two scenarios: what TLS alone costs Python against nginx.
"""

from __future__ import annotations

import datetime as dt
import re
import ssl
import sys
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # keep benchmarks/ free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))

# imported after the sys.path tweak that makes it importable
from common import (
    BENCH_DIR,
    REPO_DIR,
    SMALL_BODY,
    Contender,
    CostComparison,
    Harness,
    ProcessGroup,
    Scenario,
    Service,
    entry,
    free_ports,
    nginx_http_block,
    nginx_main_block,
    run_bounded,
    run_wrk,
    settle_contenders,
    start_ferryman,
    start_floor_proxy,
    start_haproxy,
    start_nginx,
    start_origin_nginx,
)
from common import main as run_main

CONTENDERS = ("ferryman", "nginx", "haproxy")
TOOLS = ("nginx", "haproxy", "wrk", "h2load")
INSTALL_HINT = "apt-get install -y nginx haproxy wrk nghttp2-client"
CPU = {"cpu_unit": "CPU µs/req", "cpu_per": 1e6}
SCENARIOS = {
    "tls-new-conn": Scenario(
        "wrk -t1 -c50 -H 'Connection: close' over TLS, GET /small: a TLS handshake per "
        "request", "req/s", **CPU,
    ),
    "tls-keepalive": Scenario("wrk -t1 -c50 over kept-alive TLS, GET /small", "req/s", **CPU),
    "h2-small": Scenario("h2load -c10 -m10 over TLS (ALPN h2), GET /small", "req/s", **CPU),
}
NOTES = (
    "Targets (issue): TLS handshakes/s (tls-new-conn) ≥ 0.8x nginx; h2-small ≥ 0.4x nginx.",
    "Every contender: one worker, one ECDSA P-256 certificate, TLS terminated, HTTP/1.1 "
    "keep-alive pool to an nginx origin. nginx `ssl_session_cache` off and haproxy's default "
    "cache; all issue TLS 1.3 session tickets (their default), and wrk offers its previous "
    "connection's ticket: after the first handshake of each wrk connection, every handshake is "
    "a resumption with an X25519 key exchange (no certificate or signature; nginx's "
    "`$ssl_session_reused` says `r` for all but those first ones).",
    "python-floor (--with-floor): `benchmarks/floor_proxy.py --cert --key`, see its table.",
)
FLOOR_SCENARIOS = ("tls-new-conn", "tls-keepalive", "h2-small")
FLOOR_NOTE = (
    "python-floor: `benchmarks/floor_proxy.py --cert CERT --key KEY` on ferryman's "
    "interpreter, only with `--with-floor`: uvloop's `create_server(ssl=...)` with Python's "
    "`ssl` module (TLS 1.2+, the module's default ciphers, ALPN `h2` and `http/1.1`, the same "
    "certificate), httptools parsers, one LIFO keep-alive pool to the origin; an `h2` client "
    "is served by `benchmarks/floor_h2.py` (the `h2` library with its header validation off, "
    "each stream forwarded as HTTP/1.1 over a pool of its own, HEADERS + DATA back). No "
    "hooks, routing, filters, timeouts, logging or validation beyond the libraries' own. It "
    "is the floor of a Python TLS proxy on this interpreter, not a product: `ferryman CPU "
    "µs/req above python-floor` is what ferryman's features cost per TLS handshake "
    "(tls-new-conn), per TLS request (tls-keepalive) and per HTTP/2 request (h2-small) above "
    "it, `python-floor vs nginx` how close any Python proxy on this interpreter (and, in "
    "h2-small, on the `h2` library) can come to nginx."
)
BARE_SCENARIOS = ("tls-new-conn", "tls-keepalive")  # tls_bare.py speaks HTTP/1.1 only
BARE_NOTE = (
    "python-bare (--with-python-bare): `benchmarks/tls_bare.py`, uvloop's `create_server(ssl=...)` "
    "with the floor's TLS context on ferryman's interpreter, answering every request itself "
    "(200, the same 100-byte body); nginx-bare (--with-nginx-bare): nginx answering `return 200` "
    "with that body, the nginx contender's TLS settings. No proxying in either: what the TLS "
    "handshake (tls-new-conn) and the record layer (tls-keepalive) alone cost Python here, "
    "against nginx."
)
COMPARISONS = (
    CostComparison("ferryman vs the Python floor", "ferryman", "python-floor", "nginx",
                   (FLOOR_NOTE,)),
    CostComparison("bare TLS servers, no proxying: Python vs nginx", "python-bare", "nginx-bare",
                   "nginx", (BARE_NOTE,)),
)


# --------------------------------------------------------------------------- certificate


def make_certificate(workdir: Path) -> tuple[Path, Path, Path]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1/localhost: (cert, key, cert+key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    paths = workdir / "cert.pem", workdir / "key.pem", workdir / "both.pem"
    paths[0].write_bytes(cert_pem)
    paths[1].write_bytes(key_pem)
    paths[2].write_bytes(cert_pem + key_pem)
    return paths


# --------------------------------------------------------------------------- contenders


def start_nginx_tls(group: ProcessGroup, workdir: Path, origin: int, cert: Path, key: Path) -> Contender:
    (port,) = free_ports(1)
    body = f"""
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 64;
        keepalive_requests 100000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2 backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        http2_max_concurrent_streams 128;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    conf = nginx_main_block(workdir, "nginx") + nginx_http_block(workdir, "nginx", body)
    return Contender("nginx", port, [start_nginx(group, workdir, "nginx", conf)])


def start_haproxy_tls(group: ProcessGroup, workdir: Path, origin: int, both: Path) -> Contender:
    (port,) = free_ports(1)
    conf = f"""
global
    nbthread 1
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    maxconn 8000

frontend https_in
    bind 127.0.0.1:{port} ssl crt {both} alpn h2,http/1.1
    default_backend origin

backend origin
    server origin 127.0.0.1:{origin}
"""
    return Contender("haproxy", port, [start_haproxy(group, workdir, conf)])


def start_ferryman_tls(group: ProcessGroup, workdir: Path, origin: int, cert: Path, key: Path) -> Contender:
    (port,) = free_ports(1)
    conf = f"""
[server]
workers = 1
log_level = "warning"

[listeners.https]
addr = "127.0.0.1:{port}"
protocol = "http"
tls = ["bench"]
upstream = "origin"

[certificates.bench]
cert = "{cert}"
key = "{key}"

[upstreams.origin]
backends = ["127.0.0.1:{origin}"]
"""
    return Contender("ferryman", port, [start_ferryman(group, workdir, conf)])


def start_nginx_bare(group: ProcessGroup, workdir: Path, cert: Path, key: Path) -> Contender:
    """nginx answering ``/small`` itself over TLS (no proxying), with the nginx contender's
    TLS settings."""
    (port,) = free_ports(1)
    body = f"""
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location = /small {{
            default_type text/plain;
            return 200 "{SMALL_BODY.rstrip(chr(10))}\\n";
        }}
    }}"""
    conf = nginx_main_block(workdir, "nginx-bare") + nginx_http_block(workdir, "nginx-bare", body)
    return Contender("nginx-bare", port, [start_nginx(group, workdir, "nginx-bare", conf)],
                     scenarios=BARE_SCENARIOS)


def start_python_bare(group: ProcessGroup, cert: Path, key: Path) -> Contender:
    """``tls_bare.py`` (a Python TLS server answering itself) on the group's interpreter."""
    (port,) = free_ports(1)
    argv = [group.python, str(BENCH_DIR / "tls_bare.py"), "--listen", f"127.0.0.1:{port}",
            "--cert", str(cert), "--key", str(key)]
    return Contender("python-bare", port, [group.start("python-bare", argv, cwd=REPO_DIR)],
                     scenarios=BARE_SCENARIOS)


def start_python_floor(group: ProcessGroup, origin: int, cert: Path, key: Path) -> Contender:
    """``floor_proxy.py`` terminating TLS with the run's certificate, on the group's interpreter."""
    (port,) = free_ports(1)
    svc = start_floor_proxy(group, port, origin, extra=("--cert", str(cert), "--key", str(key)))
    return Contender("python-floor", port, [svc], scenarios=FLOOR_SCENARIOS)


def verify(c: Contender) -> str | None:
    """One HTTPS GET /small through ``c`` (certificate not verified: it is the run's own)."""
    import socket

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", c.ports), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /small HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
    except (OSError, ssl.SSLError) as exc:
        return f"HTTPS GET /small failed: {type(exc).__name__}: {exc}"
    if not data.startswith(b"HTTP/1.1 200") or not data.endswith(SMALL_BODY.encode()):
        return f"HTTPS GET /small gave {data[:200]!r}"
    return None


def start(group: ProcessGroup, workdir: Path, names: list[str]) -> tuple[list[Contender], list[Service]]:
    cert, key, both = make_certificate(workdir)
    (origin_port,) = free_ports(1)
    origin = start_origin_nginx(group, workdir, origin_port)
    starters = {
        "nginx": lambda: start_nginx_tls(group, workdir, origin_port, cert, key),
        "haproxy": lambda: start_haproxy_tls(group, workdir, origin_port, both),
        "ferryman": lambda: start_ferryman_tls(group, workdir, origin_port, cert, key),
        "python-floor": lambda: start_python_floor(group, origin_port, cert, key),
        "nginx-bare": lambda: start_nginx_bare(group, workdir, cert, key),
        "python-bare": lambda: start_python_bare(group, cert, key),
    }
    contenders = [starters[n]() for n in names]
    settle_contenders(contenders, lambda c: [c.ports], verify)
    return contenders, [origin]


# --------------------------------------------------------------------------- measuring

H2LOAD_DONE = re.compile(r"finished in ([\d.]+)s, ([\d.]+) req/s")
H2LOAD_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout")
H2LOAD_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def run_h2load(url: str, duration: int, clients: int = 10, streams: int = 10) -> dict[str, Any]:
    """h2load for ``duration`` s; value = req/s of the requests that succeeded."""
    argv = ["h2load", f"-c{clients}", f"-m{streams}", "-t1", f"-D{duration}", url]
    proc = run_bounded(argv, timeout=duration + 30)
    out = proc.stdout
    done, reqs, codes = H2LOAD_DONE.search(out), H2LOAD_REQUESTS.search(out), H2LOAD_STATUS.search(out)
    if proc.returncode != 0 or not done or not reqs or not codes:
        return {"value": None, "error": f"h2load rc={proc.returncode}: {(out + proc.stderr)[-300:]}"}
    protocol = re.search(r"Application protocol: (\S+)", out)
    if not protocol or protocol.group(1) != "h2":
        return {"value": None, "error": f"h2load did not negotiate h2 (ALPN: {protocol and protocol.group(1)})"}
    seconds = float(done.group(1))
    succeeded, failed, errored, timeout = (int(reqs.group(i)) for i in (4, 5, 6, 7))
    non2xx = sum(int(codes.group(i)) for i in (2, 3, 4))
    if succeeded == 0:
        return {"value": None, "error": f"h2load: no request succeeded: {out[-300:]}"}
    return {
        "value": succeeded / seconds if seconds else None,
        "units": succeeded,
        "seconds": seconds,
        "socket_errors": {"failed": failed, "errored": errored, "timeout": timeout},
        "non2xx": non2xx,
        "error": None,
    }


def measure(scenario: str, c: Contender, duration: int) -> dict[str, Any]:
    url = f"https://127.0.0.1:{c.ports}/small"
    if scenario == "h2-small":
        return run_h2load(url, duration)
    return run_wrk(url, duration, 50, close=scenario == "tls-new-conn")


HARNESS = Harness(
    name="tls",
    title="HTTPS and HTTP/2 benchmark",
    heading="## HTTPS and HTTP/2",
    reference="nginx",
    contenders=CONTENDERS,
    scenarios=SCENARIOS,
    tools=TOOLS,
    install_hint=INSTALL_HINT,
    start=start,
    measure=measure,
    notes=NOTES,
    meta={"wrk": {"threads": 1, "connections": 50}, "h2load": {"clients": 10, "streams": 10}},
    optional={
        "python-floor": "benchmarks/floor_proxy.py --cert --key, the floor of a Python TLS "
                        "and HTTP/2 proxy on ferryman's interpreter",
        "nginx-bare": "nginx answering /small itself over TLS (no proxying), in tls-new-conn "
                      "and tls-keepalive; its table is against python-bare",
        "python-bare": "benchmarks/tls_bare.py, a Python TLS server answering /small itself "
                       "(no proxying), in tls-new-conn and tls-keepalive",
    },
    optional_flags={"python-floor": "floor"},  # the bare servers: --with-nginx-bare, --with-python-bare
    comparisons=COMPARISONS,
)


def main(argv: list[str] | None = None) -> int:
    return run_main(HARNESS, argv)


if __name__ == "__main__":
    entry(HARNESS)

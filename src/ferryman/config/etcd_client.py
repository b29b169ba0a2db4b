"""A small, blocking etcd v3 client over etcd's JSON gateway (HTTP/1.1, ``/v3/...``, served
by etcd 3.4 and later): read a prefix, replace it in one transaction, watch it.

Blocking on purpose: the first load runs before any event loop, ``ferryman check`` and
``config push|pull`` have none, and reloads call it from a thread. Each request opens its own
connection (config reads are rare), trying the URL's endpoints in order from the last one
that answered, so a dead member is skipped. With ``user``/``password`` a token from
``/v3/auth/authenticate`` goes with every request and is renewed once when etcd says it
expired.

With TLS (``ca``/``cert``/``key``/``tls=true`` in the URL) every request and watch goes over
HTTPS with one :class:`ssl.SSLContext`, built (its files read) when the client is made:
verification is always on, against the endpoint's host name or IP address. A failed
handshake is an endpoint failure like a refused connection: the next endpoint is tried, and
the error names each endpoint and why.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .etcd_layout import key_range
from .etcd_url import EtcdUrl

API = "/v3/"  # etcd 3.4 serves /v3/ and /v3beta/; 3.5 only /v3/
UNAUTHENTICATED = 16  # the gRPC status of an expired or unknown token
COMPACTED = "required revision has been compacted"
WRITE_ATTEMPTS = 3


class EtcdError(Exception):
    """etcd answered with an error (``code`` is its gRPC status, 0 when unknown)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No endpoint could be reached (every one refused, timed out or broke the connection)."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    revision: int  # the store's revision after the write (the one read when nothing changed)
    written: int  # keys put (new or changed)
    deleted: int  # keys removed


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def tls_context(url: EtcdUrl) -> ssl.SSLContext | None:
    """The client TLS context of ``url`` (None: plain HTTP). A ValueError names the URL
    parameter and the file when one cannot be read or holds no usable PEM."""
    if not url.tls:
        return None
    if url.ca is None:
        context = ssl.create_default_context()  # the system's CAs
    else:
        bundle = "".join(_pem_blocks("ca", url.ca, "CERTIFICATE"))
        context = ssl.create_default_context(cadata=bundle)  # only this bundle
    # create_default_context: the chain and the host name (or IP address) verified, TLS 1.2+
    context.set_alpn_protocols(["http/1.1"])  # etcd serves gRPC (h2) and the JSON gateway on one port
    if url.cert is not None and url.key is not None:
        _pem_blocks("cert", url.cert, "CERTIFICATE")
        if any("ENCRYPTED" in block for block in _pem_blocks("key", url.key, "PRIVATE KEY")):
            raise ValueError(f"key={url.key}: the private key is encrypted; give an unencrypted one (protect it by the file's permissions)")
        try:
            context.load_cert_chain(url.cert, url.key, password=_no_password)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ValueError(f"key={url.key} is not the private key of cert={url.cert}") from None
            raise ValueError(f"cert={url.cert}, key={url.key}: {_ssl_text(exc)}") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"cert={url.cert}, key={url.key}: {_reason(exc)}") from None
    return context


_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----\r?\n?", re.DOTALL)


def _pem_blocks(param: str, path: str, label: str) -> list[str]:
    """The PEM blocks of ``label`` (``CERTIFICATE``; ``PRIVATE KEY`` matches every key type)
    in the file ``param=path``; a ValueError when it cannot be read or has none."""
    try:
        with open(path, "rb") as file:
            text = file.read().decode("ascii", "replace")
    except OSError as exc:
        raise ValueError(f"{param}={path}: cannot read it: {_reason(exc)}") from None
    blocks = [m.group(0) for m in _PEM.finditer(text) if m.group(1) == label or (label == "PRIVATE KEY" and m.group(1).endswith(label))]
    if not blocks:
        what = "certificate" if label == "CERTIFICATE" else "private key"
        raise ValueError(f"{param}={path}: no PEM {what} in it (expected '-----BEGIN {label}-----')")
    if label == "CERTIFICATE":
        try:  # parse them (loading as trust anchors checks the encoding, not the use)
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata="".join(blocks))
        except ssl.SSLError as exc:
            raise ValueError(f"{param}={path}: a PEM certificate in it is damaged: {_ssl_text(exc)}") from None
    return blocks


def _no_password() -> bytes:
    raise ValueError("the private key is encrypted")


class EtcdClient:
    """Requests to the endpoints of one :class:`EtcdUrl`. Building one reads the URL's TLS
    files (a ValueError names a bad one)."""

    def __init__(self, url: EtcdUrl) -> None:
        self.url = url
        self._tls = tls_context(url)
        self._current = 0  # the endpoint that answered last: tried first
        self._token: str | None = None

    # requests ---------------------------------------------------------------------------------
    def range_prefix(self, prefix: str, revision: int | None = None) -> tuple[int, dict[str, bytes]]:
        """Every key under ``prefix`` with its value, at ``revision`` (None: the latest),
        and the revision that content is of."""
        start, end = key_range(prefix)
        body: dict[str, Any] = {"key": b64(start), "range_end": b64(end)}
        if revision is not None:
            body["revision"] = str(revision)
        answer = self.call("kv/range", body)
        entries = {unb64(kv["key"]).decode("utf-8", "replace"): unb64(kv.get("value", "")) for kv in answer.get("kvs", ())}
        return (revision if revision is not None else int(answer["header"]["revision"])), entries

    def replace_prefix(self, prefix: str, entries: Mapping[str, bytes]) -> WriteResult:
        """Make the keys under ``prefix`` exactly ``entries`` in one transaction: changed and
        new keys are put, the others deleted. The transaction only applies if nothing under the
        prefix changed since it was read; otherwise it is read and tried again."""
        start, end = key_range(prefix)
        for _ in range(WRITE_ATTEMPTS):
            revision, current = self.range_prefix(prefix)
            puts = [(k, v) for k, v in sorted(entries.items()) if current.get(k) != v]
            deletes = sorted(k for k in current if k not in entries)
            if not puts and not deletes:
                return WriteResult(revision, 0, 0)
            unchanged = {"target": "MOD", "key": b64(start), "range_end": b64(end), "result": "LESS", "mod_revision": str(revision + 1)}
            ops = [{"request_put": {"key": b64(k.encode()), "value": b64(v)}} for k, v in puts]
            ops += [{"request_delete_range": {"key": b64(k.encode())}} for k in deletes]
            answer = self.call("kv/txn", {"compare": [unchanged], "success": ops})
            if answer.get("succeeded"):
                return WriteResult(int(answer["header"]["revision"]), len(puts), len(deletes))
        raise EtcdError(f"the keys under {prefix}/ kept changing while being written ({WRITE_ATTEMPTS} attempts); try again")

    def watch(self, prefix: str, start_revision: int, idle_timeout: float) -> WatchStream:
        """A watch on every key under ``prefix`` from ``start_revision`` (see :class:`WatchStream`)."""
        start, end = key_range(prefix)
        create = {"create_request": {"key": b64(start), "range_end": b64(end), "start_revision": str(start_revision)}}
        conn, response = self._open("watch", create, keep=True)
        if response.status != 200:
            payload = response.read()
            conn.close()
            raise _error(response.status, payload)
        if conn.sock is not None:
            conn.sock.settimeout(idle_timeout)
        return WatchStream(conn, response)

    def call(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``/v3/METHOD`` and return the JSON answer; an EtcdError for etcd's errors."""
        for attempt in (1, 2):
            conn, response = self._open(method, body)
            try:
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise EtcdUnavailable(f"etcd at {_where(conn)}: {_reason(exc)}") from None
            finally:
                conn.close()
            if response.status == 200:
                return _json(payload)
            error = _error(response.status, payload)
            if attempt == 1 and self.url.user is not None and _expired(error):
                self._token = None  # the token expired (or etcd restarted): authenticate again
                continue
            raise error
        raise AssertionError("unreachable")

    def forget_token(self) -> None:
        """Authenticate again at the next request (a watch was refused for its token)."""
        self._token = None

    # connections ------------------------------------------------------------------------------
    def _open(self, method: str, body: Mapping[str, Any], keep: bool = False) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the request to the first endpoint that takes it; the open connection and its
        response (its head read)."""
        headers = {"Content-Type": "application/json"}
        if not keep:
            headers["Connection"] = "close"
        if self.url.user is not None and method != "auth/authenticate":
            headers["Authorization"] = self._authenticate()
        data = json.dumps(body).encode()
        endpoints = self.url.endpoints
        failures = []
        for step in range(len(endpoints)):
            index = (self._current + step) % len(endpoints)
            host, port = endpoints[index]
            conn = self._connection(host, port)
            connected = False
            try:
                conn.connect()  # TCP, and the TLS handshake: etcd's certificate checked here
                connected = True
                conn.request("POST", API + method, body=data, headers=headers)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                failures.append(f"{_endpoint(host, port)}: {self._why(exc, connected)}")
                continue
            self._current = index
            return conn, response
        raise EtcdUnavailable(f"cannot reach etcd ({'; '.join(failures)})")

    def _connection(self, host: str, port: int) -> http.client.HTTPConnection:
        if self._tls is None:
            return http.client.HTTPConnection(host, port, timeout=self.url.timeout)
        return http.client.HTTPSConnection(host, port, timeout=self.url.timeout, context=self._tls)

    def _why(self, exc: BaseException, connected: bool) -> str:
        """Why an endpoint failed, with a hint when TLS is the likely cause. With TLS 1.3 a
        refused client certificate shows after the handshake: as etcd's alert, or (when the
        connection closes before the alert is read) as the connection closing."""
        client_cert = self.url.cert is not None
        if isinstance(exc, ssl.SSLError) and not (connected and isinstance(exc, ssl.SSLEOFError)):
            return _tls_failure(exc, client_cert=client_cert)
        if self._tls is None:
            if isinstance(exc, http.client.RemoteDisconnected):
                return f"{_reason(exc)} (if etcd serves TLS only: add ca=PATH or tls=true to the URL)"
        elif connected and isinstance(exc, (ssl.SSLEOFError, ConnectionError, http.client.RemoteDisconnected)):
            return f"TLS: etcd closed the connection after the handshake ({_CLOSED_WITH if client_cert else _CLOSED_WITHOUT})"
        return _reason(exc)

    def _authenticate(self) -> str:
        if self._token is None:
            answer = self.call("auth/authenticate", {"name": self.url.user, "password": self.url.password})
            token = answer.get("token")
            if not isinstance(token, str):
                raise EtcdError("etcd answered /v3/auth/authenticate without a token")
            self._token = token
        return self._token


class WatchStream:
    """An open watch: :meth:`messages` yields etcd's watch responses (``{"result": ...}``) as
    they come; a quiet stream raises TimeoutError after the idle timeout, a closed one
    EtcdUnavailable. :meth:`interrupt` may be called from another thread to end a blocked read."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self.conn, self.response = conn, response
        self.where = _where(conn)

    def messages(self) -> Iterator[dict[str, Any]]:
        while True:
            try:
                line = self.response.readline()
            except TimeoutError:
                raise
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise EtcdUnavailable(f"etcd at {self.where}: watch broken: {_reason(exc)}") from None
            if not line:
                raise EtcdUnavailable(f"etcd at {self.where} closed the watch")
            if line.strip():
                yield _json(line)

    def interrupt(self) -> None:
        """From another thread: end the stream (a blocked read returns); the reader closes it."""
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """From the reading thread."""
        self.interrupt()
        self.response.close()
        self.conn.close()


def _json(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        raise EtcdError(f"etcd answered with something that is not JSON: {payload[:200]!r}") from None
    if not isinstance(value, dict):
        raise EtcdError(f"etcd answered with JSON that is not an object: {payload[:200]!r}")
    return value


def _error(status: int, payload: bytes) -> EtcdError:
    try:
        value = json.loads(payload)
    except ValueError:
        value = None
    if isinstance(value, dict) and ("message" in value or "error" in value):
        message = str(value.get("message") or value.get("error"))
        return EtcdError(message.removeprefix("etcdserver: "), int(value.get("code") or 0))
    return EtcdError(f"etcd answered HTTP {status}: {payload[:200]!r}")


def _expired(error: EtcdError) -> bool:
    return error.code == UNAUTHENTICATED or "invalid auth token" in str(error)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {_ssl_text(exc)}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


_UNKNOWN_CA = "is ca= the CA that signed etcd's certificate?"
_PLAIN = "the endpoint does not speak TLS (plain HTTP? then leave tls, ca, cert and key out)"
_REFUSED = "etcd refused the client certificate ({}): is it signed by a CA in etcd's --trusted-ca-file, for client use?"
_ALERTS = {  # OpenSSL's reason: what it means here
    "SSLV3_ALERT_BAD_CERTIFICATE": _REFUSED.format("bad certificate"),
    "TLSV1_ALERT_UNKNOWN_CA": _REFUSED.format("unknown CA"),
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": _REFUSED.format("expired"),
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": _REFUSED.format("unsupported certificate"),
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": _REFUSED.format("certificate required"),
    "WRONG_VERSION_NUMBER": _PLAIN,
    "RECORD_LAYER_FAILURE": _PLAIN,
}
_NO_CERT = "etcd requires a client certificate and the URL gives none: add cert=PATH&key=PATH"
_CLOSED_WITHOUT = "does it require a client certificate? the URL gives none: add cert=PATH&key=PATH"
_CLOSED_WITH = "did it refuse the client certificate? is it signed by a CA in etcd's --trusted-ca-file, for client use?"


def _tls_failure(exc: ssl.SSLError, *, client_cert: bool) -> str:
    """Why a TLS handshake (or the first read after it, where TLS 1.3 reports a refused
    client certificate) failed, for a person."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = (exc.verify_message or _ssl_text(exc)).rstrip(".")
        hint = f" ({_UNKNOWN_CA})" if "issuer certificate" in message or "self-signed" in message else ""
        return f"TLS: etcd's certificate is not trusted: {message}{hint}"
    reason = exc.reason or ""
    if not client_cert and reason in ("SSLV3_ALERT_BAD_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE"):
        return f"TLS: {_NO_CERT}"
    return f"TLS: {_ALERTS.get(reason) or _ssl_text(exc)}"


def _ssl_text(exc: ssl.SSLError) -> str:
    """OpenSSL's message without the ``[LIB: REASON]`` prefix and the ``(_ssl.c:N)`` suffix."""
    text = str(exc.args[1] if len(exc.args) > 1 else exc)
    return re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", text) or type(exc).__name__


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _where(conn: http.client.HTTPConnection) -> str:
    return _endpoint(conn.host, conn.port)

"""The admin API: JSON over ferryman's own HTTP engine, on the ``[admin]`` listener.

Versioned paths under ``/api/v1``; every request needs the token (``Authorization: Bearer
TOKEN``) when one is configured. Changes are logged with the client address and the
credential's name, and kept in the reload history. With workers, worker 0 serves the admin
listener; a config it applies is written to the config file and reloaded by every process
(SIGHUP to the master). The web UI (``GET /`` and ``/ui/NAME``: static files, served
without the token) calls these endpoints.

    GET  /api/v1/status            generation, version, workers, uptime
    GET  /api/v1/config            the running config and its generation
    GET  /api/v1/config/source     the config file's text (what the UI edits)
    POST /api/v1/config/validate   a TOML body: every error with its TOML path
    POST /api/v1/config/apply      validate, write the file (keeping the previous one), reload
    POST /api/v1/config/rollback   put the previous file back, reload
    (with a config from etcd, source shows the keys merged into one document with the URL,
    prefix and revision; apply writes the keys in one transaction, deleting the ones the new
    config no longer has; rollback writes back what this process's last apply replaced)
    GET  /api/v1/upstreams         backends with health, in flight, requests and failures
    POST /api/v1/upstreams/NAME/backends/ADDRESS/disable|drain|enable
                                   take a backend out of rotation (in-flight work finishes)
                                   or give it back to its health checks
    GET  /api/v1/stats             request and error rates, latency per route and upstream,
                                   open connections (see admin/stats.py)
    GET  /api/v1/history           the last reloads, applies and rollbacks (?since=ID: newer ones)
    GET  /metrics                  Prometheus exposition (when metrics are on)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .. import __version__
from ..config.etcd import EtcdError, EtcdSource
from ..config.load import load_text
from ..errors import ConfigError
from ..filters.builtin.basic_auth import BasicAuthFilter
from ..http.hooks import ProxyHttp
from ..http.session import Session
from ..observability.metrics import Snapshot
from .history import ReloadHistory
from .static import UiFiles
from .stats import LiveStats

log = logging.getLogger(__name__)

MAX_CONFIG = 1 << 20  # bytes of TOML a client may send
MAX_HASHING = 2  # password checks at once (each is a few hundred ms of CPU in a thread)
_BACKENDS = b"/api/v1/upstreams/"


class AdminApi(ProxyHttp):
    """Answers every request itself (``request_filter``); never proxies."""

    def __init__(
        self,
        runtime: Any,  # gateway.runtime.Runtime: config, generation, upstreams
        path: str | Path | None,
        *,
        token: str | None = None,
        users: Sequence[str] = (),
        reload: Callable[[], Awaitable[bool]],
        metrics: Callable[[], str] | None = None,
        snapshot: Callable[[], Snapshot] | None = None,
        history: ReloadHistory | None = None,
        workers: int = 1,
    ) -> None:
        self.runtime = runtime
        self.path = Path(path) if path is not None else None
        self.etcd: EtcdSource | None = getattr(runtime, "etcd_source", None)  # a config from etcd keys instead of a file
        self._etcd_previous: str | None = None  # what the last apply to etcd replaced (for rollback)
        self.token = token
        self._hashing = 0  # password checks running (see _basic_user)
        self.users = BasicAuthFilter("admin", BasicAuthFilter.Config(users=users, realm="ferryman admin")) if users else None
        self.reload = reload
        self.metrics = metrics
        self.history = history if history is not None else ReloadHistory()
        self.snapshot = snapshot  # the metrics of every worker, added up
        self.stats = LiveStats(snapshot if snapshot is not None else dict)
        self.workers = workers
        self.started = time.time()
        self.ui = UiFiles()
        self.routes: dict[tuple[bytes, bytes], Callable[[Session], Awaitable[None]]] = {
            (b"GET", b"/api/v1/status"): self._status,
            (b"GET", b"/api/v1/config"): self._config,
            (b"GET", b"/api/v1/config/source"): self._source,
            (b"POST", b"/api/v1/config/validate"): self._validate,
            (b"POST", b"/api/v1/config/apply"): self._apply,
            (b"POST", b"/api/v1/config/rollback"): self._rollback,
            (b"GET", b"/api/v1/upstreams"): self._upstreams,
            (b"GET", b"/api/v1/stats"): self._stats,
            (b"GET", b"/api/v1/history"): self._history,
            (b"GET", b"/metrics"): self._metrics,
        }

    async def request_filter(self, session: Session) -> bool:
        if session.request.method in (b"GET", b"HEAD"):
            asset = self.ui.find(session.request.target.split(b"?", 1)[0])
            if asset is not None:  # the UI's files: no data in them, no token needed
                fresh = self.ui.fresh(asset, session.header(b"if-none-match"))
                session.respond(304 if fresh else 200, b"" if fresh else asset.body, list(asset.headers))
                return True
        if not await self._authorized(session):
            self._refuse(session)
            return True
        if session.request.method not in (b"GET", b"HEAD") and session.vars.get("admin_user") != "token" and session.header(b"x-ferryman-ui") is None:
            # a browser sends Basic credentials (or none, to an open admin) for any page that
            # posts here; the UI's header is one a page of another site cannot add
            _json(session, 403, {"error": "a change needs the Bearer token, or the X-Ferryman-UI: 1 header (which pages of other sites cannot send)"})
            return True
        path = session.request.target.split(b"?", 1)[0]
        handler = self.routes.get((session.request.method, path))
        if handler is None and path.startswith(_BACKENDS) and session.request.method == b"POST":
            handler = self._backend_action
        if handler is None:
            known = any(p == path for _, p in self.routes)
            _json(session, 405 if known else 404, {"error": f"{'method not allowed' if known else 'no such endpoint'}: {session.method_str} {session.target_str}"})
            return True
        await handler(session)
        return True

    def upstream_peer(self, session: Session) -> Any:  # never reached: every request is answered
        raise RuntimeError("the admin API does not proxy")

    async def _authorized(self, session: Session) -> bool:
        """Open when neither a token nor users are configured; else a Bearer token or HTTP
        Basic credentials of a user. Who was let in goes to ``session.vars["admin_user"]``."""
        if self.token is None and self.users is None:
            return True
        given = session.header(b"authorization") or b""
        if self.token is not None and given[:7].lower() == b"bearer " and hmac.compare_digest(given[7:].strip(), self.token.encode()):
            session.vars["admin_user"] = "token"
            return True
        user = await self._basic_user(given) if self.users is not None and given else None
        if user is not None:
            session.vars["admin_user"] = f"user {user}"
            return True
        return False

    async def _basic_user(self, given: bytes) -> str | None:
        """The user of Basic credentials. A password hash takes a few hundred ms by design:
        it runs in a thread, at most MAX_HASHING at once; beyond that new credentials are
        refused unchecked, so a flood of guesses cannot stall this worker's proxying."""
        users = self.users
        assert users is not None
        known, user = users.cached(given)
        if known or self._hashing >= MAX_HASHING:
            return user
        self._hashing += 1
        try:
            user = await asyncio.get_running_loop().run_in_executor(None, users.verify, given)
        finally:
            self._hashing -= 1
        users.remember(given, user)
        return user

    def _refuse(self, session: Session) -> None:
        """401 with the challenges this listener accepts. The web UI (``x-ferryman-ui``) gets
        no Basic challenge: a browser would answer it with its own password dialog."""
        methods = " or ".join(m for m, on in (("Authorization: Bearer TOKEN", self.token is not None), ("HTTP Basic credentials", self.users is not None)) if on)
        challenges = []
        if self.token is not None:
            challenges.append((b"www-authenticate", b'Bearer realm="ferryman admin"'))
        if self.users is not None and session.header(b"x-ferryman-ui") is None:
            challenges.append((b"www-authenticate", b'Basic realm="ferryman admin", charset="UTF-8"'))
        _json(session, 401, {"error": f"valid credentials are required ({methods})"}, challenges)

    # endpoints -------------------------------------------------------------------------------
    async def _status(self, session: Session) -> None:
        _json(session, 200, {
            "version": __version__,
            "generation": self.runtime.generation,
            "workers": self.workers,
            "pid": os.getpid(),
            "uptime": time.time() - self.started,
            "path": str(self.path) if self.path else None,
        })

    async def _config(self, session: Session) -> None:
        config = self.runtime.config
        _json(session, 200, {
            "generation": self.runtime.generation,
            "path": str(self.path) if self.path else None,
            "config": config.model_dump(mode="json") if config is not None else None,
        })

    async def _source(self, session: Session) -> None:
        if self.etcd is not None:
            await self._etcd_text(session, self.etcd)
            return
        if self.path is None:
            _json(session, 409, {"error": "ferryman was started without a config file: there is no text to show"})
            return
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            _json(session, 500, {"error": f"cannot read {self.path}: {exc}"})
            return
        _json(session, 200, {"path": str(self.path), "generation": self.runtime.generation, "text": text})

    async def _validate(self, session: Session) -> None:
        text = await self._body_text(session)
        if text is None:
            return
        errors = _errors(text)
        _json(session, 200, {"valid": not errors, "errors": errors})

    async def _apply(self, session: Session) -> None:
        text = await self._body_text(session)
        if text is None:
            return
        if self.etcd is None and self.path is None:
            _json(session, 409, {"error": "ferryman was started without a config file: nothing to apply to"})
            return
        errors = _errors(text)
        if errors:
            summary = "\n".join(f"{e['path']}: {e['message']}" if e["path"] else e["message"] for e in errors)
            self.history.add("apply", False, self.runtime.generation, f"refused, nothing applied:\n{summary}", _who(session))
            _json(session, 422, {"applied": False, "errors": errors})
            return
        if self.etcd is not None:
            await self._etcd_apply(session, self.etcd, text)
            return
        assert self.path is not None
        previous = self.path.read_text()
        _write(self.path.with_name(self.path.name + ".previous"), previous)
        _write(self.path, text)
        log.warning("admin: %s applied a new config (%d bytes)", _who(session), len(text))
        self.history.expect("apply", _who(session))
        ok = await self.reload()
        _json(session, 200 if ok else 500, {"applied": ok, "generation": self.runtime.generation})

    async def _rollback(self, session: Session) -> None:
        if self.etcd is not None:
            await self._etcd_rollback(session, self.etcd)
            return
        if self.path is None:
            _json(session, 409, {"error": "ferryman was started without a config file"})
            return
        backup = self.path.with_name(self.path.name + ".previous")
        if not backup.exists():
            _json(session, 409, {"error": "no previous config to roll back to"})
            return
        current = self.path.read_text()
        _write(self.path, backup.read_text())
        _write(backup, current)  # a second rollback goes forward again
        log.warning("admin: %s rolled the config back", _who(session))
        self.history.expect("rollback", _who(session))
        ok = await self.reload()
        _json(session, 200 if ok else 500, {"rolled_back": ok, "generation": self.runtime.generation})

    # a config from etcd keys ------------------------------------------------------------------
    async def _etcd_text(self, session: Session, etcd: EtcdSource) -> None:
        try:
            revision, text = await asyncio.to_thread(etcd.pull)
        except (ConfigError, EtcdError) as exc:
            message = exc.render() if isinstance(exc, ConfigError) else f"{etcd.name}: {exc}"
            _json(session, 502, {"error": f"cannot read the config from etcd: {message}"})
            return
        _json(session, 200, {
            "source": "etcd", "path": etcd.name, "url": etcd.name, "prefix": etcd.prefix, "revision": revision,
            "loaded_revision": etcd.revision, "generation": self.runtime.generation, "text": text,
        })

    async def _etcd_apply(self, session: Session, etcd: EtcdSource, text: str) -> None:
        """Write the (valid) config's keys in one transaction, reload (every process, with workers)."""
        try:
            previous = await _etcd_write(etcd, text)
        except ConfigError as exc:  # valid, but not storable as keys (an entry name with "/")
            _json(session, 422, {"applied": False, "errors": [{"path": path, "message": message} for path, message in exc.errors]})
            return
        except EtcdError as exc:
            self.history.add("apply", False, self.runtime.generation, f"etcd refused the write: {exc}", _who(session))
            _json(session, 502, {"applied": False, "error": f"{etcd.name}: {exc}"})
            return
        self._etcd_previous = previous
        log.warning("admin: %s applied a new config to %s (%d bytes)", _who(session), etcd.name, len(text))
        self.history.expect("apply", _who(session))
        ok = await self.reload()
        _json(session, 200 if ok else 500, {"applied": ok, "generation": self.runtime.generation})

    async def _etcd_rollback(self, session: Session, etcd: EtcdSource) -> None:
        if self._etcd_previous is None:
            _json(session, 409, {"error": "no previous config to roll back to (with etcd, a rollback undoes this process's last apply)"})
            return
        try:
            current = await _etcd_write(etcd, self._etcd_previous)
        except (ConfigError, EtcdError) as exc:
            _json(session, 502, {"rolled_back": False, "error": f"{etcd.name}: {exc}"})
            return
        self._etcd_previous = current  # a second rollback goes forward again
        log.warning("admin: %s rolled the config in %s back", _who(session), etcd.name)
        self.history.expect("rollback", _who(session))
        ok = await self.reload()
        _json(session, 200 if ok else 500, {"rolled_back": ok, "generation": self.runtime.generation})

    async def _upstreams(self, session: Session) -> None:
        """Backends with health, the operator's flag, and their counters added up over every
        worker (from the metrics; this process's own counts where no series exists)."""
        snapshot = self.snapshot() if self.snapshot is not None else {}

        def total(metric: str, name: str, key: str, local: int) -> int:
            value = snapshot.get((metric, (name, key)))
            return int(value) if isinstance(value, (int, float)) else local

        out = {}
        for name, upstream in self.runtime.upstreams.items():
            out[name] = {
                "lb": upstream.config.lb,
                "members": list(upstream.config.members),
                "backends": [
                    {
                        "address": b.key, "weight": b.weight, "healthy": b.healthy, "disabled": b.disabled,
                        "active": total("ferryman_backend_active_connections", name, b.key, b.active),
                        "requests": total("ferryman_backend_requests_total", name, b.key, b.requests),
                        "failures": total("ferryman_backend_failures_total", name, b.key, b.failures),
                    }
                    for b in upstream.balancer.backends
                ],
            }
        _json(session, 200, {"upstreams": out})

    async def _backend_action(self, session: Session) -> None:
        parts = session.request.target.split(b"?", 1)[0][len(_BACKENDS):].decode("latin-1").split("/")
        if len(parts) != 4 or parts[1] != "backends" or parts[3] not in ("disable", "drain", "enable"):
            _json(session, 404, {"error": "expected /api/v1/upstreams/NAME/backends/ADDRESS/disable|drain|enable"})
            return
        name, _, address, action = (unquote(part) for part in parts)  # a client may percent-encode ":"
        upstream = self.runtime.upstreams.get(name)
        if upstream is None:
            _json(session, 404, {"error": f"no upstream named {name!r}"})
            return
        backend = next((b for b in upstream.balancer.backends if b.key == address), None)
        if backend is None:
            _json(session, 404, {"error": f"upstream {name!r} has no backend {address!r} (known: {', '.join(b.key for b in upstream.balancer.backends)})"})
            return
        backend.set_disabled(action != "enable")
        log.warning("admin: %s: %s backend %s of upstream %s", _who(session), action, address, name)
        _json(session, 200, {"upstream": name, "address": address, "disabled": backend.disabled, "healthy": backend.healthy})

    async def _stats(self, session: Session) -> None:
        _json(session, 200, self.stats.report())

    async def _history(self, session: Session) -> None:
        query = session.request.target.partition(b"?")[2].decode("latin-1")
        since = 0
        for pair in query.split("&"):
            key, _, value = pair.partition("=")
            if key == "since":
                if not (value.isascii() and value.isdigit()):
                    _json(session, 400, {"error": f"since must be an entry id (a non-negative integer), got {value!r}"})
                    return
                since = int(value)
        _json(session, 200, {"size": self.history.entries.maxlen, "entries": self.history.to_json(since)})

    async def _metrics(self, session: Session) -> None:
        if self.metrics is None:
            _json(session, 404, {"error": "metrics are not collected"})
            return
        body = self.metrics().encode()
        session.respond(200, body, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")])

    async def _body_text(self, session: Session) -> str | None:
        body = await session.read_body(limit=MAX_CONFIG)
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            _json(session, 400, {"error": f"the body is not UTF-8 TOML: {exc}"})
            return None


def _errors(text: str) -> list[dict[str, str]]:
    try:
        load_text(text, source="request")
    except ConfigError as exc:
        return [{"path": path, "message": message} for path, message in exc.errors]
    return []


async def _etcd_write(etcd: EtcdSource, text: str) -> str | None:
    """Make the keys hold ``text``; what they held before (None if it did not parse)."""

    def write() -> str | None:
        try:
            previous: str | None = etcd.pull()[1]
        except ConfigError:
            previous = None
        etcd.push(text, "request")
        return previous

    return await asyncio.to_thread(write)


def _json(session: Session, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload, indent=1).encode() + b"\n"
    session.respond(status, body, [(b"content-type", b"application/json"), (b"cache-control", b"no-store"), *(headers or [])])


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically (a reader never sees half a file)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def _who(session: Session) -> str:
    """The client and the credential it used, for the change log and the history."""
    client = session.client_ip or "a local client"
    who = session.vars.get("admin_user")
    return f"{client} ({who})" if who else client

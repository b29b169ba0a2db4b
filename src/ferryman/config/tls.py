"""TLS objects from the config (certificates, listener settings, upstream options), and
their checks with TOML paths: the files are read at check time, as ``nginx -t`` does."""

from __future__ import annotations

import ssl
from collections.abc import Iterable

from ..acme.challenges import tls_alpn_responder
from ..acme.storage import Storage, check_storage, safe_name
from ..net.tls import CertificateSpec, CertStore, ServerTlsSettings, TlsOptions, load_certificate
from .model import AcmeConfig, Config, ListenerConfig, UpstreamConfig


def certificate_specs(config: Config, only: Iterable[str] | None = None) -> dict[str, CertificateSpec]:
    """The certificates (``only`` these names): an ``acme`` one is its stored file (key and
    chain), or a self-signed placeholder until the first issuance (made here if missing)."""
    wanted = set(config.certificates) if only is None else set(only)
    specs = {}
    for name, c in config.certificates.items():
        if name not in wanted:
            continue
        if c.acme is None:
            specs[name] = CertificateSpec(name, c.cert, c.key, tuple(c.names))  # type: ignore[arg-type]
            continue
        try:
            path = Storage(c.acme.storage).serving_file(name, tuple(c.acme.names))
        except OSError as exc:
            raise ValueError(f"certificates.{name}.acme.storage: cannot write {exc.filename}: {exc.strerror}") from exc
        specs[name] = CertificateSpec(name, path, path, tuple(c.acme.names))
    return specs


def server_settings(cfg: ListenerConfig) -> ServerTlsSettings:
    options = {
        "alpn": tuple(cfg.tls_alpn), "min_version": cfg.tls_min_version, "session_tickets": cfg.tls_session_tickets,
        "client_ca": cfg.tls_client_ca, "client_verify": cfg.tls_client_verify, "strict_sni": cfg.tls_strict_sni,
    }
    if cfg.tls_ciphers is not None:
        options["ciphers"] = cfg.tls_ciphers
    return ServerTlsSettings(**options)  # type: ignore[arg-type]


def cert_store(config: Config, cfg: ListenerConfig) -> CertStore | None:
    """The certificates an http listener serves (None without ``tls``)."""
    if not cfg.tls:
        return None
    specs = certificate_specs(config, cfg.tls)
    store = CertStore([specs[name] for name in cfg.tls], default=cfg.tls_default or cfg.tls[0], settings=server_settings(cfg))
    store.set_acme_responder(tls_alpn_responder(config, cfg))
    return store


def refresh(store: CertStore, config: Config, cfg: ListenerConfig) -> None:
    """On reload: re-read the listener's certificates (renewed files at the same paths too)."""
    specs = certificate_specs(config, cfg.tls)
    store.replace([specs[name] for name in cfg.tls], default=cfg.tls_default or cfg.tls[0], settings=server_settings(cfg))
    store.set_acme_responder(tls_alpn_responder(config, cfg))


def tls_options(cfg: UpstreamConfig) -> TlsOptions | None:
    tls = cfg.tls
    if tls is False:
        return None
    if tls is True:
        return TlsOptions()
    return TlsOptions(verify=tls.verify, ca_file=tls.ca, sni=tls.sni, cert=tls.cert, key=tls.key, alpn=tuple(tls.alpn), min_version=tls.min_version)


def check_tls(config: Config) -> list[tuple[str, str]]:
    """Every TLS problem of a structurally valid config, with its TOML path."""
    errors: list[tuple[str, str]] = []
    for name, cert in config.certificates.items():
        if cert.acme is not None:
            errors += check_acme(config, name, cert.acme)
            continue
        try:
            load_certificate(CertificateSpec(name, cert.cert, cert.key, tuple(cert.names)))  # type: ignore[arg-type]
        except ValueError as exc:
            errors.append((f"certificates.{name}", str(exc)))
    for name, cfg in config.listeners.items():
        path = f"listeners.{name}"
        if cfg.tls:
            if cfg.protocol != "http":
                errors.append((f"{path}.tls", "TLS termination is for http listeners; a tcp listener can route TLS by name with sni_upstreams"))
            for index, cert in enumerate(cfg.tls):
                if cert not in config.certificates:
                    errors.append((f"{path}.tls[{index}]", f"no certificate named {cert!r} (known: {', '.join(sorted(config.certificates)) or 'none'})"))
            if cfg.tls_default is not None and cfg.tls_default not in cfg.tls:
                errors.append((f"{path}.tls_default", f"{cfg.tls_default!r} is not one of this listener's tls certificates"))
            try:
                server_settings(cfg)
            except ValueError as exc:
                errors.append((f"{path}.tls", str(exc)))
        if cfg.sni_upstreams:
            if cfg.protocol != "tcp":
                errors.append((f"{path}.sni_upstreams", "routing by SNI without terminating TLS is for tcp listeners"))
            for pattern, upstream in cfg.sni_upstreams.items():
                if upstream not in config.upstreams:
                    errors.append((f"{path}.sni_upstreams.{pattern}", f"no upstream named {upstream!r}"))
                if pattern.startswith("*") and not pattern.startswith("*."):
                    errors.append((f"{path}.sni_upstreams.{pattern}", "a wildcard is \"*.example.com\" (one label)"))
    for name, cfg in config.upstreams.items():
        try:
            tls_options(cfg)
        except ValueError as exc:
            errors.append((f"upstreams.{name}.tls", str(exc)))
    for name, cfg in config.listeners.items():
        if cfg.protocol != "http":
            for upstream in {cfg.upstream, *cfg.sni_upstreams.values()} - {None}:
                if upstream in config.upstreams and config.upstreams[upstream].tls is not False:  # type: ignore[index]
                    errors.append((f"upstreams.{upstream}.tls", f"TLS to backends is for http listeners; listener {name!r} is {cfg.protocol}"))
    return errors


def check_acme(config: Config, name: str, acme: AcmeConfig) -> list[tuple[str, str]]:
    """An ``acme`` certificate: a usable name, storage and CA file, a stored certificate that
    loads, and a listener where its challenge can be answered. Writes nothing."""
    path = f"certificates.{name}"
    errors: list[tuple[str, str]] = []
    try:
        safe_name(name)
    except ValueError as exc:
        errors.append((path, f"with acme the name is a file name: {exc}"))
        return errors
    problem = check_storage(acme.storage)
    if problem:
        errors.append((f"{path}.acme.storage", problem))
    if acme.ca is not None:
        try:
            ssl.create_default_context(cafile=acme.ca)
        except (OSError, ssl.SSLError) as exc:
            errors.append((f"{path}.acme.ca", f"cannot load CA file {acme.ca}: {getattr(exc, 'strerror', None) or exc}"))
    stored = Storage(acme.storage).certificate_path(name)
    if not problem and stored.exists():
        try:
            load_certificate(CertificateSpec(name, str(stored), str(stored), tuple(acme.names)))
        except ValueError as exc:
            errors.append((path, f"stored certificate: {exc}"))
    if acme.challenge == "http-01":
        if not any(listener.protocol == "http" for listener in config.listeners.values()):
            errors.append((f"{path}.acme.challenge", "http-01 is answered by http listeners: the config has none"))
    elif not any(name in listener.tls for listener in config.listeners.values()):
        errors.append((f"{path}.acme.challenge", "tls-alpn-01 is answered by a TLS listener serving this certificate: no listener lists it in tls"))
    return errors

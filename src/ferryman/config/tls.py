"""TLS objects from the config (certificates, listener settings, upstream options), and
their checks with TOML paths: the files are read at check time, as ``nginx -t`` does."""

from __future__ import annotations

from ..net.tls import CertificateSpec, CertStore, ServerTlsSettings, TlsOptions, load_certificate
from .model import Config, ListenerConfig, UpstreamConfig


def certificate_specs(config: Config) -> dict[str, CertificateSpec]:
    return {name: CertificateSpec(name, c.cert, c.key, tuple(c.names)) for name, c in config.certificates.items()}


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
    specs = certificate_specs(config)
    return CertStore([specs[name] for name in cfg.tls], default=cfg.tls_default or cfg.tls[0], settings=server_settings(cfg))


def refresh(store: CertStore, config: Config, cfg: ListenerConfig) -> None:
    """On reload: re-read the listener's certificates (renewed files at the same paths too)."""
    specs = certificate_specs(config)
    store.replace([specs[name] for name in cfg.tls], default=cfg.tls_default or cfg.tls[0], settings=server_settings(cfg))


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
    for name, spec in certificate_specs(config).items():
        try:
            load_certificate(spec)
        except ValueError as exc:
            errors.append((f"certificates.{name}", str(exc)))
    for name, cfg in config.listeners.items():
        path = f"listeners.{name}"
        if cfg.tls:
            if cfg.protocol != "http":
                errors.append((f"{path}.tls", "TLS termination is for http listeners; a tcp listener can route TLS by name with sni_upstreams"))
            if cfg.proxy_protocol:
                errors.append((f"{path}.tls", "a PROXY header before TLS is not supported yet: give either tls or proxy_protocol"))
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

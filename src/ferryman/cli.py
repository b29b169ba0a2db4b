"""Command line: ``ferryman run | check | reload | upgrade | config push|pull | version``.

``-c`` names a TOML file or etcd keys (``etcd://HOST:PORT[,HOST:PORT...]/PREFIX``)."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .errors import ConfigError

CONFIG_HELP = "TOML config file, or etcd keys: etcd://HOST:PORT[,HOST:PORT...]/PREFIX[?timeout=5s&user=U&password=P&ca=PATH&cert=PATH&key=PATH&tls=true]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferryman", description="A programmable network proxy and load balancer.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve a config file")
    run.add_argument("-c", "--config", required=True, help=CONFIG_HELP)
    check = sub.add_parser("check", help="validate a config file and print every error")
    check.add_argument("-c", "--config", required=True, help=CONFIG_HELP)
    reload = sub.add_parser("reload", help="validate a config file, then tell the running ferryman (SIGHUP) to load it")
    reload.add_argument("-c", "--config", required=True, help=CONFIG_HELP)
    reload.add_argument("--pid", type=int, help="process to signal (default: the config's server.pid_file)")
    upgrade = sub.add_parser("upgrade", help="validate a config file, then tell the running ferryman (SIGUSR2) to hand its "
                             "listeners to a new process started from the installed code, and exit once that one serves")
    upgrade.add_argument("-c", "--config", required=True, help="TOML config file")
    upgrade.add_argument("--pid", type=int, help="process to signal (default: the config's server.pid_file)")
    config_cmd = sub.add_parser("config", help="copy a config between a TOML file and etcd keys")
    actions = config_cmd.add_subparsers(dest="action", required=True)
    push = actions.add_parser("push", help="validate a TOML file, then make the etcd keys under PREFIX hold exactly it "
                              "(one transaction: changed keys are written, keys it no longer has deleted)")
    push.add_argument("file", help="TOML config file")
    push.add_argument("url", help="etcd://HOST:PORT[,HOST:PORT...]/PREFIX")
    pull = actions.add_parser("pull", help="print the config held by the etcd keys under PREFIX as one TOML document")
    pull.add_argument("url", help="etcd://HOST:PORT[,HOST:PORT...]/PREFIX")
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)

    if args.command == "version":
        from . import compiled_core

        print(f"ferryman {__version__} ({'compiled core' if compiled_core() else 'pure Python'})")
        return 0
    if args.command == "config":
        return _config_command(args)
    from .config.etcd import EtcdError, EtcdSource, is_etcd_url
    from .config.load import load_file

    source, name = None, args.config
    try:
        if is_etcd_url(args.config):
            source = EtcdSource.parse(args.config)
            name = source.name  # never the password
            config = source.load()
        else:
            config = load_file(args.config)
    except ValueError as exc:
        print(f"ferryman: -c: bad etcd URL: {exc}", file=sys.stderr)
        return 2
    except EtcdError as exc:
        print(f"ferryman: {name}: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        print(f"{name}: {len(exc.errors)} error(s); config rejected", file=sys.stderr)
        return 2
    if args.command == "check":
        where = f" at revision {source.revision}" if source is not None else ""
        print(f"{name}: ok{where} ({len(config.listeners)} listeners, {len(config.upstreams)} upstreams)")
        return 0
    if args.command in ("reload", "upgrade"):
        return _signal(config, args.pid, args.command)
    if source is not None:
        return _run(config, None, source)
    return _run(config, args.config)


def _config_command(args: argparse.Namespace) -> int:
    """``config push FILE URL`` / ``config pull URL``."""
    from pathlib import Path

    from .config.etcd import EtcdError, EtcdSource

    try:
        source = EtcdSource.parse(args.url)
    except ValueError as exc:
        print(f"ferryman: bad etcd URL: {exc}", file=sys.stderr)
        return 2
    try:
        if args.action == "pull":
            revision, text = source.pull()
            print(f"# {source.name} at revision {revision}\n{text}", end="")
            return 0
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"ferryman: cannot read {args.file}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            return 1
        result = source.push(text, args.file)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        print(f"{exc.source}: {len(exc.errors)} error(s); nothing written", file=sys.stderr)
        return 2
    except EtcdError as exc:
        print(f"ferryman: {source.name}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.file} → {source.name}: {result.written} key(s) written, {result.deleted} deleted, revision {result.revision}")
    return 0


def _signal(config, pid: int | None, command: str) -> int:  # noqa: ANN001 - Config, imported lazily
    """``reload`` (SIGHUP) or ``upgrade`` (SIGUSR2) the running process."""
    import os
    import signal

    if pid is None:
        if not config.server.pid_file:
            print("ferryman: no --pid given and the config sets no server.pid_file", file=sys.stderr)
            return 2
        try:
            pid = int(open(config.server.pid_file).read().strip())
        except (OSError, ValueError) as exc:
            print(f"ferryman: cannot read pid from {config.server.pid_file}: {exc}", file=sys.stderr)
            return 1
    try:
        os.kill(pid, signal.SIGHUP if command == "reload" else signal.SIGUSR2)
    except OSError as exc:
        print(f"ferryman: cannot signal process {pid}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"config valid; {command} signalled to process {pid}")
    return 0


def _run(config, path: str | None, source=None) -> int:  # noqa: ANN001 - Config, EtcdSource: imported lazily
    from .gateway.app import serve
    from .net.listener import BindError

    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )
    try:
        return serve(config, path, source)
    except BindError as exc:
        print(f"ferryman: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

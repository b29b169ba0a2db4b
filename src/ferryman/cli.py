"""Command line: ``ferryman run | check | reload | upgrade | version``."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferryman", description="A programmable network proxy and load balancer.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve a config file")
    run.add_argument("-c", "--config", required=True, help="TOML config file")
    check = sub.add_parser("check", help="validate a config file and print every error")
    check.add_argument("-c", "--config", required=True, help="TOML config file")
    reload = sub.add_parser("reload", help="validate a config file, then tell the running ferryman (SIGHUP) to load it")
    reload.add_argument("-c", "--config", required=True, help="TOML config file")
    reload.add_argument("--pid", type=int, help="process to signal (default: the config's server.pid_file)")
    upgrade = sub.add_parser("upgrade", help="validate a config file, then tell the running ferryman (SIGUSR2) to hand its "
                             "listeners to a new process started from the installed code, and exit once that one serves")
    upgrade.add_argument("-c", "--config", required=True, help="TOML config file")
    upgrade.add_argument("--pid", type=int, help="process to signal (default: the config's server.pid_file)")
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)

    if args.command == "version":
        print(f"ferryman {__version__}")
        return 0
    from .config.load import load_file

    try:
        config = load_file(args.config)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        print(f"{args.config}: {len(exc.errors)} error(s); config rejected", file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"{args.config}: ok ({len(config.listeners)} listeners, {len(config.upstreams)} upstreams)")
        return 0
    if args.command in ("reload", "upgrade"):
        return _signal(config, args.pid, args.command)
    return _run(config, args.config)


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


def _run(config, path: str) -> int:  # noqa: ANN001 - Config, imported lazily
    from .gateway.app import serve
    from .net.listener import BindError

    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )
    try:
        return serve(config, path)
    except BindError as exc:
        print(f"ferryman: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `fasterdata` command line: one sub-command per process kind, each defined by its own part."""

from __future__ import annotations

import argparse
import sys

from fasterdata.analyzers import cli as analyzers_cli
from fasterdata.analyzers.glcache import cli as gl_cli
from fasterdata.config.settings import ConfigError
from fasterdata.console import cli as console_cli
from fasterdata.proxy import cli as proxy_cli
from fasterdata.proxy import logs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fasterdata",
        description="PostgreSQL wire-protocol proxy that taps every statement into Redis Streams, "
        "and the workers that turn that stream into insight.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    proxy_cli.add_parser(sub)
    analyzers_cli.add_parser(sub)
    gl_cli.add_parser(sub)
    console_cli.add_parser(sub)

    c = sub.add_parser("config", help="check a settings file, or show the settings in force",
                       description="Settings come from a YAML file < FASTERDATA_* environment < flags.")
    csub = c.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = csub.add_parser(
        "check", help="validate a settings FILE for every command, and the rules file it names (or a rules "
        "FILE itself); exit 2 naming each problem",
        description="Offline: reads FILE, and for a settings file the rules file `analyze` would read; the "
        "environment is not consulted. A rules file is known by its top-level rules:, security: or anomaly:.")
    check.add_argument("file", metavar="FILE")
    show = csub.add_parser("show", help="print the effective settings of every command, secrets masked")
    show.add_argument("--config", metavar="FILE", help="YAML settings file")
    csub.add_parser("reference", help="print the configuration reference (Markdown) generated from the model")

    d = sub.add_parser(
        "demo", help="run the whole pipeline with a sample shop workload",
        description="Start the proxy and an analyzer in front of this machine's PostgreSQL and Redis "
        "(embedded ones when none answer), drive a shop-with-ledger workload through the proxy and show the "
        "business metrics moving. Ctrl-C stops it and removes everything it created.")
    d.add_argument("--duration", type=float, metavar="SECONDS", help="stop by itself after this long")
    d.add_argument("--shoppers", type=int, default=4, metavar="N", help="concurrent client sessions [4]")
    d.add_argument("--rate", type=float, default=5.0, metavar="ORDERS",
                   help="orders per second per shopper [5]")
    d.add_argument("--embedded", action="store_true",
                   help="use embedded PostgreSQL and Redis even if the machine has its own")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "proxy":
        return proxy_cli.run(args)
    if args.command in ("analyze", "top"):
        return analyzers_cli.run(args)
    if args.command == "gl":
        return gl_cli.run(args)
    if args.command == "config":
        return config_command(args)
    if args.command == "console":
        return console_cli.run(args)
    from .demo.run import main as demo

    logs.setup()
    return demo(args.duration, args.shoppers, args.rate, args.embedded)


def config_command(args: argparse.Namespace) -> int:
    import yaml

    from fasterdata.config import settings as config_settings

    from .config_check import check

    try:
        if args.config_command == "check":
            report = check(args.file)
            if report.problems:
                print("\n".join(report.problems), file=sys.stderr)
                return 2
            print("\n".join(report.checked))
        elif args.config_command == "show":
            print(yaml.safe_dump(config_settings.effective(args.config), sort_keys=False), end="")
        else:
            print(config_settings.reference_markdown())
    except ConfigError as exc:
        print(exc.describe(), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`fasterdata analyze` and `fasterdata top`: argument parsers and entry points.

The umbrella command line (fasterdata/cli.py) calls `add_parser(subparsers)` and, for these commands,
`run(args)`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from fasterdata.config.analyzer_settings import AnalyzerSettings
from fasterdata.config.redisurl import redacted
from fasterdata.config.settings import ConfigError, add_common_arguments, add_metrics_access_arguments, load

from .readmodel import SORTS
from .rules import RulesError
from .rules import load as load_rules

log = logging.getLogger("fasterdata.analyze")
COMMANDS = ("analyze", "top")


def add_parser(subparsers: Any) -> None:
    """Add `analyze` and `top` to the `fasterdata` sub-command parser."""
    p = subparsers.add_parser(
        "analyze", help="run an analyzer worker",
        description="Consume <prefix>:statements in the consumer group 'analyzers': statement stats, "
        "business metrics from rules, security findings and anomaly alerts, applied exactly once. "
        "Run as many as you like. SIGTERM/SIGINT finish the current batch and stop; SIGHUP reads the "
        "rules file again (a file that does not load is reported and the rules in force stay).")
    p.add_argument("--metrics", metavar="HOST:PORT", help="Prometheus /metrics and /healthz; '' disables "
                   "[127.0.0.1:9931]")
    p.add_argument("--rules", metavar="FILE", help="rules file [the shipped config/rules.yaml]")
    p.add_argument("--consumer", metavar="NAME", help="consumer name in the group [<host>-<pid>]")
    p.add_argument("--batch", type=int, metavar="N",
                   help="statements per read and atomic commit, about (a bundled entry holds several) [1000]")
    p.add_argument("--claim-idle", type=float, metavar="SECONDS",
                   help="reclaim entries pending this long in another consumer [30]")
    p.add_argument("--block", type=float, metavar="SECONDS", help="how long one read waits [1]")
    add_metrics_access_arguments(p)
    add_common_arguments(p)
    p.set_defaults(command="analyze")

    t = subparsers.add_parser(
        "top", help="live view of statements, business metrics, alerts and lag",
        description="A terminal view read from Redis (works over ssh). q or Ctrl-C quits, s changes the sort. "
        "Transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, DEALLOCATE …) is folded into one line.")
    t.add_argument("--once", action="store_true", help="print one frame and exit (piped: nothing is cut)")
    t.add_argument("--json", action="store_true", dest="json_out",
                   help="print the statements, business metrics, alerts and streams as JSON and exit")
    t.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="refresh period [2]")
    t.add_argument("--sort", choices=SORTS, default="time", help="rank statements by [time]")
    t.add_argument("--db", metavar="NAME", help="only statements of this database")
    t.add_argument("--app", metavar="NAME", help="only statements of this application_name")
    t.add_argument("--user", metavar="NAME", help="only statements of this user (that user's numbers)")
    t.add_argument("--all", action="store_false", dest="fold",
                   help="show transaction-control statements instead of folding them")
    t.add_argument("--limit", type=int, default=10, metavar="N", help="statements shown [10]")
    add_common_arguments(t)
    t.set_defaults(command="top")


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in AnalyzerSettings.model_fields and v is not None}


def run(args: argparse.Namespace) -> int:
    """Run `analyze` or `top` from parsed arguments; returns the exit status."""
    from fasterdata.proxy import logs

    try:
        settings = load("analyze", args.config, _flags(args))
    except ConfigError as exc:
        print(exc.describe(), file=sys.stderr)
        return 2
    assert isinstance(settings, AnalyzerSettings)
    logs.setup(settings.log_level, settings.log_format)
    if args.command == "top":
        return run_top(settings, args)
    return run_analyze(settings)


def run_top(settings: AnalyzerSettings, args: argparse.Namespace) -> int:
    import redis

    from . import top
    from .redisconn import connect

    try:
        client = connect(settings.redis, decode_responses=True)
        return top.run(client, settings.prefix, once=args.once, interval=args.interval, shards=settings.stream_shards,
                       sort=args.sort, db=args.db, app=args.app, user=args.user, fold=args.fold,
                       json_out=args.json_out, n=max(1, args.limit))
    except redis.ConnectionError as exc:
        print(f"fasterdata top: cannot reach Redis at {redacted(settings.redis)}: {exc}", file=sys.stderr)
        return 1


def run_analyze(settings: AnalyzerSettings) -> int:
    import redis
    from prometheus_client import CollectorRegistry

    from fasterdata.proxy.httpd import EndpointError, serve_in_thread

    from .redisconn import ShardingError
    from .worker import Worker, tune_gc

    try:
        rules = load_rules(settings.rules)
    except RulesError as exc:
        print(exc.describe(), file=sys.stderr)
        return 2
    try:
        worker = Worker(settings, rules)
    except ShardingError as exc:
        print(f"fasterdata analyze: {exc}", file=sys.stderr)
        return 2
    except redis.ConnectionError as exc:
        print(f"fasterdata analyze: cannot reach Redis at {redacted(settings.redis)}: {exc}", file=sys.stderr)
        return 1
    registry = CollectorRegistry()
    for collector in worker.collectors():
        registry.register(collector)
    try:
        http = serve_in_thread(settings, registry, ready=worker.ready, health=worker.health)
    except EndpointError as exc:
        log.error("%s", exc)
        return 1

    def stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the current batch", signum)
        worker.stop.set()

    def reload(_signum: int, _frame: Any) -> None:
        worker.reload.set()

    if threading.current_thread() is threading.main_thread():  # a process of its own, not a test's thread
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)
        tune_gc()
    log.info("analyzer %s on %s (group %s, %d rules%s)", worker.consumer, ", ".join(worker.streams.names),
             worker.group, len(rules.rules), ", Redis Cluster" if worker.streams.cluster else "")
    try:
        worker.run()
    except redis.AuthenticationError as exc:
        log.error("redis refused us: %s", exc)
        return 1
    finally:
        if http is not None:
            http.close()
    log.info("stopped")
    return 0

"""`fasterdata console`: the web console, served by the project's HTTP endpoint (proxy/httpd.py).

It reads the `analyze` settings (Redis, prefix, stream_shards, and the metrics endpoint's basic auth and
TLS, which guard the console alike) and listens on --listen. `--screenshots DIR` writes a PNG of every
view instead, through a headless chromium, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Any

from fasterdata.config.analyzer_settings import AnalyzerSettings
from fasterdata.config.common import hostport, split_hostport
from fasterdata.config.redisurl import redacted
from fasterdata.config.settings import ConfigError, add_common_arguments, add_metrics_access_arguments, load

log = logging.getLogger("fasterdata.console")
DEFAULT_LISTEN = "127.0.0.1:9940"


def add_parser(subparsers: Any) -> None:
    c = subparsers.add_parser(
        "console", help="web console: top statements, fingerprints, business metrics, alerts, pipeline, ledger",
        description="A web page over what the analyzers keep in Redis, updated live. Reads the analyze "
        "settings; the metrics endpoint's basic auth and TLS (--metrics-user …) guard it alike.")
    c.add_argument("--listen", metavar="HOST:PORT", default=DEFAULT_LISTEN, help=f"where to serve [{DEFAULT_LISTEN}]")
    c.add_argument("--proxy-metrics", metavar="URL", action="append", default=[],
                   help="a proxy's /metrics URL, for its sent, spooled and dropped counts (repeatable; the "
                   "console's --metrics-user and password are sent to it)")
    c.add_argument("--gl-table", metavar="TABLE", action="append", default=[],
                   help="ledger table whose cached days to show (repeatable) [gl_entries, and any other found "
                   "cached under the prefix]")
    c.add_argument("--screenshots", metavar="DIR", help="write a PNG of each view into DIR (headless chromium) "
                   "and exit")
    add_metrics_access_arguments(c)
    add_common_arguments(c)
    c.set_defaults(command="console")


@dataclass
class ConsoleAccess:
    """httpd's `Access` for the console: its own address, the metrics endpoint's credentials and certificate."""

    metrics: str
    metrics_user: str | None
    metrics_password: str | None
    metrics_tls_cert: str | None
    metrics_tls_key: str | None


def access_for(settings: AnalyzerSettings, listen: str) -> ConsoleAccess:
    return ConsoleAccess(listen, settings.metrics_user, settings.metrics_password, settings.metrics_tls_cert,
                         settings.metrics_tls_key)


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in AnalyzerSettings.model_fields and v is not None}


def run(args: argparse.Namespace) -> int:
    import redis

    from fasterdata.analyzers.redisconn import connect
    from fasterdata.proxy import logs

    try:
        settings = load("analyze", args.config, _flags(args))
        hostport(args.listen, DEFAULT_LISTEN)
    except ConfigError as exc:
        print(exc.describe(), file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"fasterdata console: --listen {exc}", file=sys.stderr)
        return 2
    assert isinstance(settings, AnalyzerSettings)
    logs.setup(settings.log_level, settings.log_format)
    try:
        # a Redis that stops answering costs a view a timeout, never a hung console
        client = connect(settings.redis, decode_responses=True, socket_timeout=10, socket_connect_timeout=5)
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"fasterdata console: cannot reach Redis at {redacted(settings.redis)}: {exc}", file=sys.stderr)
        return 1
    from .proxies import ProxyMetrics
    from .reads import FreshReads, ModelReads

    proxies = ProxyMetrics(args.proxy_metrics, settings.metrics_user, settings.metrics_password)
    reads = FreshReads(ModelReads(client, settings.prefix, settings.stream_shards,
                                  proxies if args.proxy_metrics else None, tuple(args.gl_table or ["gl_entries"])))
    if args.screenshots:
        from .screenshots import ScreenshotError, write_screenshots

        try:
            for path in write_screenshots(reads, access_for(settings, "127.0.0.1:0"), args.screenshots):
                print(path)
        except ScreenshotError as exc:
            print(f"fasterdata console: {exc}", file=sys.stderr)
            return 1
        return 0
    reads.warm()
    return asyncio.run(serve(reads, access_for(settings, args.listen)))


async def serve(reads: Any, access: ConsoleAccess) -> int:
    """Serve until SIGTERM or SIGINT."""
    from prometheus_client import CollectorRegistry

    from fasterdata.proxy.httpd import EndpointError, server_for

    from .routes import routes

    try:
        server = server_for(access, CollectorRegistry(), routes=routes(reads))
    except EndpointError as exc:
        log.error("%s", exc)
        return 1
    host, port = split_hostport(access.metrics)
    try:
        port = await server.start(host, port)
    except OSError as exc:
        log.error("cannot serve the console on %s: %s", access.metrics, exc.strerror or exc)
        return 1
    scheme = "https" if access.metrics_tls_cert else "http"
    print(f"fasterdata console on {scheme}://{host}:{port}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    return 0

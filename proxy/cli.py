"""`fasterdata proxy`: its flags, its settings, and the processes that serve it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
import sys
import time
from typing import Any

from fasterdata.config.settings import ConfigError, ProxySettings, add_common_arguments, load, split_hostport

from . import logs

log = logging.getLogger("fasterdata")


def add_parser(sub: Any) -> None:
    """The `proxy` sub-command, for the umbrella command line (fasterdata/cli.py)."""
    p = sub.add_parser(
        "proxy", help="run the wire proxy",
        description="Forward PostgreSQL clients to an upstream server, byte for byte, and capture every "
        "statement. Point your DSN's port at --listen. SIGTERM/SIGINT stop accepting and give busy sessions "
        "--shutdown-grace; SIGHUP reads --tls-cert/--tls-key again. Every flag may also come from a "
        "FASTERDATA_<NAME> environment variable or the --config file (`fasterdata config reference`).")
    p.add_argument("--listen", metavar="HOST:PORT", help="address clients connect to [127.0.0.1:6432]")
    p.add_argument("--upstream", metavar="HOST:PORT", help="PostgreSQL server [127.0.0.1:5432]")
    p.add_argument("--upstream-sslmode", choices=["disable", "prefer", "require", "verify-ca",
                                                  "verify-full"], help="TLS to the upstream, as libpq [prefer]")
    p.add_argument("--upstream-sslrootcert", metavar="FILE", help="CA file for verify-ca / verify-full")
    p.add_argument("--upstream-sslservername", metavar="NAME", help="host name to verify [upstream host]")
    p.add_argument("--tls-cert", metavar="FILE", help="certificate for TLS with clients")
    p.add_argument("--tls-key", metavar="FILE", help="private key for --tls-cert")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="Prometheus /metrics, /healthz, /readyz; '' disables [127.0.0.1:9930]")
    p.add_argument("--connect-timeout", type=float, metavar="SECONDS", help="reaching the upstream [5]")
    p.add_argument("--client-login-timeout", type=float, metavar="SECONDS",
                   help="time a new client has to send its startup packet [60]")
    p.add_argument("--shutdown-grace", type=float, metavar="SECONDS",
                   help="time busy sessions get after SIGTERM/SIGINT [30]")
    p.add_argument("--max-client-conn", type=int, metavar="N", help="client connections allowed [1000]")
    p.add_argument("--max-message-size", type=int, metavar="BYTES",
                   help="largest client message accepted [1073741823]")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes sharing the port via SO_REUSEPORT; worker i serves metrics on port+i [1]")
    p.add_argument("--allow-client", dest="allow_clients", action="append", metavar="CIDR",
                   help="client network allowed to connect (repeatable); none given: everyone")
    p.add_argument("--metrics-user", metavar="USER", help="basic-auth user for the metrics endpoint")
    p.add_argument("--metrics-password", metavar="PASSWORD", help="basic-auth password for --metrics-user")
    p.add_argument("--metrics-tls-cert", metavar="FILE", help="serve the metrics endpoint over HTTPS")
    p.add_argument("--metrics-tls-key", metavar="FILE", help="private key for --metrics-tls-cert")
    p.add_argument("--no-capture", dest="capture", action="store_const", const=False,
                   help="forward only; capture no statements")
    p.add_argument("--no-log-connections", dest="log_connections", action="store_const", const=False,
                   help="no info line per client session (connection-per-request applications); refusals "
                   "and errors are still logged")
    p.add_argument("--data-plane", choices=["python", "native"],
                   help="who moves a session's bytes after its login: a compiled loop, or asyncio (the "
                   "reference; also where the compiled extension was not built) [native]")
    add_common_arguments(p)


def _flags(args: argparse.Namespace, model: type) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in model.model_fields and v is not None}


def run(args: argparse.Namespace) -> int:
    try:
        settings = load("proxy", args.config, _flags(args, ProxySettings))
    except ConfigError as exc:
        print(exc.describe(), file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.log_format)
    return run_proxy(settings)


def run_proxy(settings: ProxySettings) -> int:
    import uvloop

    if settings.workers == 1:
        return uvloop.run(_serve_proxy(settings, 0))
    return _run_workers(settings, lambda index: uvloop.run(_serve_proxy(settings, index)))


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_QUICK_DEATH = 5.0  # seconds: a worker dying sooner after its start counts towards a crash loop
_CRASH_LOOP = 3  # quick deaths in a row before the parent gives up


def _run_workers(settings: ProxySettings, serve: Any) -> int:
    """Fork one process per worker and supervise them.

    SIGTERM/SIGINT/SIGHUP are passed on. A worker that dies while nobody asked it to stop is
    started again on the same index (same metrics port and spool); a worker that keeps dying right
    after its start (a port taken, a bad certificate) makes the parent stop the others and exit 1
    rather than spin. Signals are blocked around each fork, and stay blocked in the child until its
    event loop has handlers, so a SIGTERM during start-up is never lost nor fatal.
    """
    import os

    children: dict[int, tuple[int, float]] = {}  # pid -> (index, start time)
    stopping: list[int] = []  # the signal that stops everything, once one came

    def spawn(index: int) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                for sig in _STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)  # until the worker's loop installs its own
                code = 1
                try:
                    code = serve(index)
                finally:
                    os._exit(code)
            children[pid] = (index, time.monotonic())
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    def forward(signum: int, _frame: Any) -> None:
        if signum != signal.SIGHUP and not stopping:
            stopping.append(signum)
        for child in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for sig in _STOP_SIGNALS:
        signal.signal(sig, forward)
    for index in range(settings.workers):
        spawn(index)
    worst = 0
    quick = 0
    while children:
        pid, status = os.wait()
        if pid not in children:
            continue
        index, started = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            worst = max(worst, code & 0xFF)
            continue
        quick = quick + 1 if time.monotonic() - started < _QUICK_DEATH else 0
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if quick >= _CRASH_LOOP:
            log.error("worker %d (pid %d) ended with %s right after starting, %d times in a row: stopping",
                      index, pid, how, quick)
            forward(signal.SIGTERM, None)
            worst = 1
            continue
        log.error("worker %d (pid %d) ended with %s; starting it again", index, pid, how)
        spawn(index)
    return worst


async def _serve_proxy(settings: ProxySettings, index: int) -> int:
    from prometheus_client import CollectorRegistry

    from .capture import Capture, CaptureCollector
    from .httpd import MetricsServer
    from .server import ProxyServer
    from .sink import SinkCollector, sink_for, spool_unusable
    from .stats import ProxyCollector, ProxyStats

    registry = CollectorRegistry()
    sink = capture = None
    stats = ProxyStats()
    ready: Any = lambda: None  # noqa: E731
    if settings.capture:
        sink = sink_for(settings, spool_path(settings, index))
        try:
            await sink.start()
        except OSError as exc:
            log.error("%s", spool_unusable(spool_path(settings, index), exc))
            return 1
        capture = Capture(sink.put)
        registry.register(SinkCollector(sink))
        registry.register(CaptureCollector(capture))
        ready = sink.readiness
    server = ProxyServer(settings, stats, capture=capture)
    registry.register(ProxyCollector(server.stats, lambda: len(server.clients)))
    if server.dataplane is not None:
        from .dataplane import DataPlaneCollector

        registry.register(DataPlaneCollector(server.dataplane))
    metrics = None
    if settings.metrics:
        try:
            metrics = MetricsServer(registry, ready,
                                    user=settings.metrics_user, password=settings.metrics_password,
                                    tls_cert=settings.metrics_tls_cert, tls_key=settings.metrics_tls_key)
        except (OSError, ssl.SSLError) as exc:
            log.error("cannot load the metrics certificate %s: %s", settings.metrics_tls_cert, exc)
            return 1
        try:
            host, port = split_hostport(settings.metrics)
            await metrics.start(host, port + index if port else 0)
        except OSError as exc:
            log.error("cannot serve metrics on %s: %s", settings.metrics, exc.strerror or exc)
            return 1
    # Clients are let in last, so whoever can connect can also scrape /metrics and /readyz.
    try:
        await server.start(reuse_port=settings.workers > 1)
    except OSError as exc:
        log.error("cannot listen on %s: %s", settings.listen, exc.strerror or exc)
        if metrics is not None:
            await metrics.close()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_tls)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # a worker is born with them blocked
    await stop.wait()
    log.info("signal received: stopping")
    await server.shutdown()
    if sink is not None:
        await sink.close(timeout=10.0)
    if metrics is not None:
        await metrics.close()
    log.info("stopped")
    return 0


def spool_path(settings: ProxySettings, index: int) -> str:
    """Stable per listen address and worker, so a restarted proxy replays what its predecessor spooled."""
    import os
    import tempfile

    directory = settings.spool_dir or os.path.join(tempfile.gettempdir(), "fasterdata-spool")
    listen = settings.listen.replace(":", "_").replace("/", "_")
    return os.path.join(directory, f"{settings.prefix}-{listen}-w{index}.spool")


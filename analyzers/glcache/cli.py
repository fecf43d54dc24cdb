"""`fasterdata gl warm|get|journal|stats|serve|follow`: the hot GL cache from the command line.

Hook into the main CLI with ``add_parser(subparsers)`` and dispatch ``args.command == "gl"`` to ``run(args)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

from fasterdata.config.gl_settings import GLSettings, load_gl
from fasterdata.config.settings import (
    ConfigError,
    add_common_arguments,
    add_metrics_access_arguments,
    split_hostport,
)

log = logging.getLogger("fasterdata.glcache")

_FLAGS = ("dsn", "redis", "prefix", "table", "date_column", "key_column", "ttl", "memory_bytes", "flight",
          "metrics", "group", "consumer", "log_level", "log_format", "metrics_user", "metrics_password",
          "metrics_tls_cert", "metrics_tls_key")


def _common(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--dsn", help="PostgreSQL DSN or URI [host=127.0.0.1 port=5432 dbname=postgres]")
    p.add_argument("--table", help="ledger table [gl_entries]")
    p.add_argument("--date-column", dest="date_column", metavar="COLUMN", help="day column [trx_date]")
    p.add_argument("--key-column", dest="key_column", metavar="COLUMN", help="unique row key [id]")
    p.add_argument("--ttl", type=float, metavar="SECONDS", help="Redis TTL of a cached day [129600]")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `gl` and its sub-commands to the main CLI's subparsers."""
    gl = subparsers.add_parser(
        "gl", help="hot GL cache: one day of the ledger as Arrow, in memory and Redis",
        description="Load a day of the ledger from PostgreSQL into Arrow (LZ4 IPC in Redis), keep it fresh "
        "from the statement stream, and serve it.")
    sub = gl.add_subparsers(dest="gl_command", metavar="ACTION", required=True)

    p = sub.add_parser("warm", help="load DATE from PostgreSQL into the cache now")
    p.add_argument("date", metavar="DATE", help="YYYY-MM-DD")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr [when stderr is a terminal]")
    _common(p)

    p = sub.add_parser("get", help="write DATE to a file (.parquet, .arrow/.feather/.ipc, .csv)")
    p.add_argument("date", metavar="DATE")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output file; the format follows the extension")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    _common(p)

    p = sub.add_parser("journal", help="totals per (debit, credit) account pair for DATE")
    p.add_argument("date", metavar="DATE")
    p.add_argument("--trial-balance", action="store_true",
                   help="per-account debits, credits and balance instead")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="[table]")
    _common(p)

    p = sub.add_parser("stats", help="what is cached (days, rows, bytes, TTL) as JSON")
    p.add_argument("--invalidate", metavar="DATE", nargs="?", const="all",
                   help="drop DATE (or every cached day) first")
    _common(p)

    p = sub.add_parser("serve", help="Arrow Flight server for cached days (+ stream follower, /metrics)")
    p.add_argument("--flight", metavar="HOST:PORT", help="Flight address [127.0.0.1:8815]")
    p.add_argument("--metrics", metavar="HOST:PORT", help="Prometheus address, '' disables [127.0.0.1:9932]")
    p.add_argument("--no-follow", dest="follow", action="store_const", const=False,
                   help="do not follow the statement stream")
    add_metrics_access_arguments(p)
    _common(p)

    p = sub.add_parser("follow", help="follow <prefix>:statements (group glcache) to keep cached days fresh")
    p.add_argument("--metrics", metavar="HOST:PORT", help="Prometheus address, '' disables [127.0.0.1:9932]")
    p.add_argument("--group", help="consumer group [glcache]")
    p.add_argument("--consumer", help="consumer name [host-pid]")
    add_metrics_access_arguments(p)
    _common(p)
    return gl


def settings_from(args: argparse.Namespace) -> GLSettings:
    flags = {k: getattr(args, k) for k in (*_FLAGS, "follow") if getattr(args, k, None) is not None}
    return load_gl(getattr(args, "config", None), flags)


def run(args: argparse.Namespace) -> int:
    """Run `fasterdata gl …`; the exit status."""
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(exc.describe("fasterdata gl"), file=sys.stderr)
        return 2
    from .cache import GLCache

    problem = _bad_day(args)
    if problem:
        print(f"fasterdata gl {args.gl_command}: {problem}", file=sys.stderr)
        return 2
    from fasterdata.proxy import logs

    logs.setup(settings.log_level, settings.log_format)

    with GLCache(settings) as cache:
        try:
            return _COMMANDS[args.gl_command](cache, args)
        except BrokenPipeError:  # `… | head`: the reader left; not an error
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            return 0
        except ValueError as exc:
            print(f"fasterdata gl: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # a clean message, not a traceback, for operational errors
            import psycopg

            from .catalog import CatalogError
            from .copyout import CopyError

            if isinstance(exc, (CatalogError, CopyError, psycopg.Error)):
                print(f"fasterdata gl: {exc}", file=sys.stderr)
                return 1
            raise


def _bad_day(args: argparse.Namespace) -> str:
    """What is wrong with the DATE argument (or --invalidate's), '' if nothing."""
    from .cache import day_str

    given = [("DATE", getattr(args, "date", None))]
    if getattr(args, "invalidate", None) not in (None, "all"):
        given.append(("--invalidate DATE", args.invalidate))
    for name, value in given:
        if value is None:
            continue
        try:
            day_str(value)
        except ValueError:
            return f"{name} must be a day as YYYY-MM-DD, not {value!r}"
    return ""


def _progress(cache: Any, day: str, wanted: bool | None) -> Any:
    """A tqdm bar whose total is the planner's estimate; None when not shown."""
    if wanted is False or (wanted is None and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    total = cache.estimate_rows(day) or None
    return tqdm(total=total, unit=" rows", unit_scale=True, desc=f"gl {day}", file=sys.stderr, leave=False)


def _load(cache: Any, day: str, wanted: bool | None, force: bool) -> tuple[pa.Table, dict[str, Any]]:
    bar = _progress(cache, day, wanted)

    def tick(rows: int, _bytes: int) -> None:
        if bar is not None:
            bar.update(rows - bar.n)

    try:
        if force:
            info = cache.warm(day, progress=tick)
            return cache.get_day(day), info
        return cache.get_day(day), {}
    finally:
        if bar is not None:
            bar.close()


def _warm(cache: Any, args: argparse.Namespace) -> int:
    """A warm that stored nothing failed at its purpose: say why and exit 1."""
    _, info = _load(cache, args.date, args.progress, force=True)
    if not info["cached"]:
        print(f"fasterdata gl warm: {info['date']} was read ({info['rows']} rows) but not cached: "
              f"{info['not_cached']}", file=sys.stderr)
        return 1
    print(json.dumps(info))
    return 0


def write_table(table: pa.Table, out: str) -> str:
    """Write by extension: parquet, arrow/feather/ipc (LZ4), csv. Returns the format used."""
    import pyarrow as pa

    suffix = Path(out).suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        pq.write_table(table, out)
        return "parquet"
    if suffix in (".arrow", ".feather", ".ipc"):
        import pyarrow.feather as feather

        feather.write_feather(table.unify_dictionaries(), out, compression="lz4")
        return "arrow"
    if suffix == ".csv":
        import pyarrow.csv as pacsv

        plain = pa.table({f.name: (table.column(f.name).cast(f.type.value_type)
                                   if pa.types.is_dictionary(f.type) else table.column(f.name))
                          for f in table.schema})
        pacsv.write_csv(plain, out)
        return "csv"
    raise ValueError(f"--out {out}: use a .parquet, .arrow/.feather/.ipc or .csv file name")


def _get(cache: Any, args: argparse.Namespace) -> int:
    suffix = Path(args.out).suffix.lower()
    if suffix not in (".parquet", ".pq", ".arrow", ".feather", ".ipc", ".csv"):
        raise ValueError(f"--out {args.out}: use a .parquet, .arrow/.feather/.ipc or .csv file name")
    table, _ = _load(cache, args.date, args.progress, force=False)
    fmt = write_table(table, args.out)
    print(json.dumps({"date": args.date, "rows": table.num_rows, "out": args.out, "format": fmt}))
    return 0


def _journal(cache: Any, args: argparse.Namespace) -> int:
    result = cache.trial_balance(args.date) if args.trial_balance else cache.journal(args.date)
    if args.format == "json":
        print(json.dumps(result.to_pylist(), default=str))
    elif args.format == "csv":
        import pyarrow as pa
        import pyarrow.csv as pacsv

        out = pa.BufferOutputStream()
        pacsv.write_csv(result, out)
        sys.stdout.write(out.getvalue().to_pybytes().decode())
    else:
        print(format_table(result))
    return 0


def format_table(table: pa.Table) -> str:
    """Aligned text: numbers right, text left; decimals printed exactly."""
    import pyarrow as pa

    rows = [[("" if v is None else str(v)) for v in row.values()] for row in table.to_pylist()]
    names = table.column_names
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(f.type) or pa.types.is_decimal(f.type) for f in table.schema]

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True))
        return "  ".join(padded)

    return "\n".join([line(names), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _stats(cache: Any, args: argparse.Namespace) -> int:
    if args.invalidate:
        cache.invalidate(None if args.invalidate == "all" else args.invalidate)
    print(json.dumps(cache.describe_cache(), indent=2, default=str))
    return 0


def _metrics_server(settings: GLSettings) -> Any:
    """The process's Prometheus series (the default registry) on the shared endpoint, on a thread."""
    from prometheus_client import REGISTRY

    from fasterdata.proxy.httpd import EndpointError, serve_in_thread

    try:
        return serve_in_thread(settings, REGISTRY)
    except EndpointError as exc:
        raise SystemExit(f"fasterdata gl: {exc}") from None


def _wait_for_signal() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _serve(cache: Any, args: argparse.Namespace) -> int:
    from .flight import GLFlightServer
    from .follow import Follower, start_thread

    s = cache.settings
    _metrics_server(s)
    stop = _wait_for_signal()
    follower = None
    if s.follow:
        follower = Follower(cache)
        _, follow_stop = start_thread(follower)
    host, port = split_hostport(s.flight)
    # The server answers from construction on; its serve() is not called because it would take over
    # SIGINT/SIGTERM, which we handle to stop the follower too.
    server = GLFlightServer(cache, f"grpc://{host}:{port}")
    log.info("gl serve: Flight on grpc://%s:%d, following %s", host, server.port, bool(follower))
    print(json.dumps({"flight": f"grpc://{host}:{server.port}", "follow": bool(follower)}), flush=True)
    while not stop.wait(0.5):
        pass
    server.shutdown()
    if follower is not None:
        follow_stop.set()
    return 0


def _follow(cache: Any, args: argparse.Namespace) -> int:
    from .follow import Follower

    _metrics_server(cache.settings)
    stop = _wait_for_signal()
    follower = Follower(cache)
    follower.ensure_group()
    print(json.dumps({"stream": follower.stream, "group": follower.group, "consumer": follower.consumer}),
          flush=True)
    follower.run(stop)
    follower.close()
    return 0


_COMMANDS = {"warm": _warm, "get": _get, "journal": _journal, "stats": _stats, "serve": _serve,
             "follow": _follow}

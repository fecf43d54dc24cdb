"""`fasterdata demo`: the whole pipeline on this machine, from one command, cleaned up on Ctrl-C.

PostgreSQL and Redis (the machine's, else embedded), the proxy and one analyzer as child processes
(exactly as an operator would run them), and the shop workload sending its SQL through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg
import redis
import yaml

from . import shop
from .services import Services, find_or_start

log = logging.getLogger("fasterdata.demo")

PREFIX = "fasterdata-demo"
OWNER = f"{PREFIX}:owner"  # one demo per Redis: its clean-up deletes every {PREFIX}:* key
OWNER_TTL = 30  # seconds; renewed every 5 s while the demo runs


def fasterdata_command() -> str:
    """How a shell runs this install's `fasterdata`: the bare name only when PATH finds this very script
    (an inactive virtualenv's is not on PATH), else its absolute path, else the interpreter with -m."""
    script = Path(sys.executable).parent / "fasterdata"
    if script.is_file() and os.access(script, os.X_OK):
        found = shutil.which("fasterdata")
        if found and Path(found).resolve() == script.resolve():
            return "fasterdata"
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m fasterdata"


def demo_rules(directory: Path) -> Path:
    """The shipped rules with the demo's schema setup allowed to run DDL: its CREATE TABLEs are no finding."""
    shipped = importlib.resources.files("fasterdata.config") / "rules.yaml"
    rules = yaml.safe_load(shipped.read_text()) or {}
    security = rules.setdefault("security", {})
    allowed = security.setdefault("ddl_allowed_apps", [])
    if shop.SETUP_APP not in allowed:
        allowed.append(shop.SETUP_APP)
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def _port(preferred: int) -> int:
    """The preferred port when it is free, else any free one."""
    for candidate in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port")


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the {what} exited with code {proc.returncode}; see its log above")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise SystemExit(f"the {what} did not start listening on port {port} within {timeout:g}s")


def business_metrics(metrics_port: int) -> dict[str, float]:
    """Sum each fasterdata_business_<rule> family (the day's value from Redis) from the analyzer's /metrics
    (all label sets); this worker's tallies (`…_processed_total`, rows_only) are left out."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("fasterdata_business_"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name.endswith(("_created", "_bucket", "_processed_total")) \
                    or name == "fasterdata_business_rows_only_total":
                continue
            with contextlib.suppress(ValueError):
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


class Demo:
    def __init__(self, duration: float | None, shoppers: int, rate: float, embedded: bool) -> None:
        self.duration = duration
        self.shoppers = shoppers
        self.rate = rate
        self.embedded = embedded
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.services: Services | None = None
        self.database = f"fasterdata_demo_{os.getpid()}"
        self.owner: redis.Redis | None = None  # set once this demo holds OWNER
        self.scratch: Path | None = None  # the demo's own files (its rules)

    def start_child(self, what: str, args: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "fasterdata", *args],
                                cwd=Path(__file__).resolve().parents[2], start_new_session=True)
        self.children.append((what, proc))
        return proc

    async def run(self) -> int:
        s = self.services = find_or_start(embedded=self.embedded)
        log.info("using %s and %s", s.pg_origin, s.redis_origin)
        r = redis.Redis.from_url(s.redis_url)
        if not r.set(OWNER, os.getpid(), nx=True, ex=OWNER_TTL):
            holder = r.get(OWNER)
            log.error("another fasterdata demo (pid %s) is using this Redis (key %s); stop it first",
                      holder.decode() if holder else "?", OWNER)
            return 2
        self.owner = r
        with psycopg.connect(s.pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}"')
            conn.execute(f'CREATE DATABASE "{self.database}"')
        port, proxy_metrics, analyzer_metrics, console_port = _port(6432), _port(9930), _port(9931), _port(9940)
        common = ["--redis", s.redis_url, "--prefix", PREFIX]
        proxy = self.start_child("proxy", [
            "proxy", "--listen", f"127.0.0.1:{port}", "--upstream", s.pg_upstream,
            "--metrics", f"127.0.0.1:{proxy_metrics}", *common])
        self.scratch = Path(tempfile.mkdtemp(prefix="fasterdata-demo-"))
        rules = demo_rules(self.scratch)
        analyzer = self.start_child("analyzer", [
            "analyze", "--metrics", f"127.0.0.1:{analyzer_metrics}", "--rules", str(rules), *common])
        console = self.start_child("console", [
            "console", "--listen", f"127.0.0.1:{console_port}",
            "--proxy-metrics", f"http://127.0.0.1:{proxy_metrics}/metrics", *common])
        _wait_port(port, proxy, "proxy")
        _wait_port(analyzer_metrics, analyzer, "analyzer")
        _wait_port(console_port, console, "console")
        dsn = f"host=127.0.0.1 port={port} user={s.pg_user} dbname={self.database}"
        await shop.create_schema(dsn)
        redis_cli = "redis-cli" + ("" if s.redis_url.startswith("redis://127.0.0.1:6379") else f" -u {s.redis_url}")
        if s.redis_url.startswith("unix://"):
            redis_cli = f"redis-cli -s {s.redis_url.removeprefix('unix://')}"
        newest_sql = f"{redis_cli} --raw XREVRANGE {PREFIX}:statements + - COUNT 2 | tr '\\0' '\\n' | grep -x -A1 sql"
        print(f"""
fasterdata demo is running ({s.pg_origin}; {s.redis_origin}).

  Connect through the proxy:  psql "{dsn}"
  Web console:                http://127.0.0.1:{console_port}/
  Proxy metrics:              http://127.0.0.1:{proxy_metrics}/metrics
  Analyzer metrics:           http://127.0.0.1:{analyzer_metrics}/metrics
  SQL as captured (newest):   {newest_sql}
  Business events:            {redis_cli} XREVRANGE {PREFIX}:events + - COUNT 3
  Alerts:                     {redis_cli} XREVRANGE {PREFIX}:alerts + - COUNT 3
  Live view:                  {fasterdata_command()} top --redis {shlex.quote(s.redis_url)} --prefix {PREFIX}

Press Ctrl-C to stop; everything the demo created is removed.
""", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        stats = shop.ShopStats()
        workload = asyncio.gather(*(shop.shopper(dsn, i, stats, stop, self.rate, 200)
                                    for i in range(self.shoppers)))
        started = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5)
            shown = ", ".join(f"{k.removeprefix('fasterdata_business_')}={v:,.{0 if v.is_integer() else 2}f}"
                              for k, v in sorted(business_metrics(analyzer_metrics).items()))
            print(f"[{time.monotonic() - started:5.0f}s] orders committed={stats.committed} "
                  f"rolled back={stats.rolled_back} | business: {shown or '(waiting for the analyzer)'}",
                  flush=True)
            for what, proc in self.children:
                if proc.poll() is not None:
                    log.error("the %s exited with code %s; stopping the demo", what, proc.returncode)
                    stop.set()
            if self.duration and time.monotonic() - started >= self.duration:
                stop.set()
            with contextlib.suppress(redis.RedisError):
                r.expire(OWNER, OWNER_TTL)
        await workload
        return 0

    def cleanup(self) -> None:
        """Stop children, drop the demo database and keys, stop embedded services."""
        for _what, proc in self.children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for what, proc in self.children:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                log.warning("the %s did not stop in 30 s; killing it", what)
                proc.kill()
                proc.wait()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        s = self.services
        if s is None:
            return
        with contextlib.suppress(psycopg.Error), psycopg.connect(s.pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        if self.owner is not None:  # another demo's keys are not ours to delete
            with contextlib.suppress(redis.RedisError, OSError):
                keys = list(self.owner.scan_iter(match=f"{PREFIX}:*", count=1000))
                if keys:
                    self.owner.delete(*keys)
        s.close()


def main(duration: float | None = None, shoppers: int = 4, rate: float = 5.0, embedded: bool = False) -> int:
    import uvloop

    logging.getLogger("pgserver").setLevel(logging.WARNING)  # its start-up chatter buries the banner
    demo = Demo(duration, shoppers, rate, embedded)
    try:
        return uvloop.run(demo.run())
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
        demo.cleanup()
        if demo.owner is not None:
            print("demo stopped; its database, Redis keys and processes are gone.", flush=True)

#!/usr/bin/env python3
"""Soak: the proxy at ~70% of its measured maximum rate for a long time, with Redis restarted halfway.

What a short benchmark cannot show: memory or descriptors creeping up over time, and statements lost
across a Redis outage under steady load. Steps:

1. a short `pgbench -S -c 8` through the proxy (capture on) measures the maximum rate;
2. `pgbench -S --rate <70% of it>` runs through the proxy for --minutes;
3. halfway, the private redis-server the proxy writes to is SIGKILLed and started again after
   --redis-down seconds (append-only file, fsync always, so what it had confirmed survives);
4. meanwhile the proxy's RSS and open descriptors are sampled every --sample-every seconds, and a
   reader drains the stream (counting, then trimming what it read) like an analyzer would;
5. at the end: statements pgbench executed (transactions × 1) against `kind=stmt` entries of the run
   in the stream, pgbench failures, duplicates, RSS/fds at start, peak and end.

    .venv/bin/python bench/soak/run.py                 # 30 minutes
    .venv/bin/python bench/soak/run.py --minutes 2     # smoke check, ~3 minutes in all
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import psycopg
import redis
from prometheus_client.parser import text_string_to_metric_families

from fasterdata.proxy.streamkeys import stream_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # bench/: benchkit
from benchkit import ensure_database, loadavg, proc_tree, publish  # noqa: E402

sys.path.insert(0, str(ROOT))
from fasterdata.proxy.events import events_of  # noqa: E402

HOST = "127.0.0.1"
SQL_PREFIX = "SELECT abalance FROM pgbench_accounts"  # the one statement of pgbench -S (simple protocol)


# -- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], object], what: str, timeout: float, interval: float = 0.1) -> None:
    """Poll ``check()`` until truthy; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what} after {timeout:g}s")
        time.sleep(interval)


def scrape(port: int) -> dict[str, float]:
    """Samples of a /metrics endpoint on loopback, by name (labelled ones summed)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


class PrivateRedis:
    """A redis-server of our own on a free port, so killing it disturbs nobody (AOF, fsync always)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "redis"
        self.dir.mkdir()
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        log = self.dir / "redis.log"
        seen = log.stat().st_size if log.exists() else 0
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", HOST, "--port", str(self.port), "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}; see {log}")
            return log.exists() and b"Ready to accept connections" in log.read_bytes()[seen:]

        wait_for(ready, "redis-server to start", 30, 0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class Proxy:
    """`fasterdata proxy` as operators run it, in front of the machine's PostgreSQL, writing to our Redis."""

    def __init__(self, workdir: Path, redis_url: str, prefix: str, stream_maxlen: int = 0) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.log = workdir / "proxy.log"
        exe = Path(sys.executable).parent / "fasterdata"
        cmd = [str(exe) if exe.exists() else "fasterdata", "proxy", "--listen", f"{HOST}:{self.port}",
               "--upstream", f"{HOST}:5432", "--upstream-sslmode", "disable",
               "--metrics", f"{HOST}:{self.metrics_port}", "--redis", redis_url, "--prefix", prefix,
               "--log-level", "warning", "--shutdown-grace", "5"]
        # run.py: no MAXLEN (0), so the count at the end does not depend on the reader keeping up (it trims
        # instead); pipeline.py keeps the proxy's default cap, as analyzers do not trim.
        env = {**os.environ, "FASTERDATA_SPOOL_DIR": str(workdir / "spool"),
               "FASTERDATA_STREAM_MAXLEN": str(stream_maxlen)}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=ROOT, env=env)

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the proxy exited {self.proc.returncode}:\n{self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.5):
                return True
            return False

        wait_for(listening, "the proxy to listen", 30, 0.05)

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_port)

    def stop(self) -> int:
        """SIGTERM and the exit code (SIGKILL after a bounded wait: never leave a proxy behind)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


# -- /proc sampling --------------------------------------------------------------------------------


def rss_kb(pids: Sequence[int]) -> int:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def fd_count(pids: Sequence[int]) -> int:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total


@dataclass
class Sample:
    t: float  # seconds since the soak run started
    rss_kb: int
    fds: int
    sessions: float


class Sampler(threading.Thread):
    """RSS and descriptors of the proxy's process tree every ``every`` seconds, on its own thread."""

    def __init__(self, proxy: Proxy, every: float, t0: float) -> None:
        super().__init__(daemon=True)
        self.proxy, self.every, self.t0 = proxy, every, t0
        self.samples: list[Sample] = []
        self.halt = threading.Event()

    def take(self) -> None:
        pids = proc_tree(self.proxy.proc.pid)
        try:
            sessions = self.proxy.metrics().get("fasterdata_proxy_connections_active", -1.0)
        except OSError:
            sessions = -1.0
        self.samples.append(Sample(time.monotonic() - self.t0, rss_kb(pids), fd_count(pids), sessions))

    def run(self) -> None:
        while not self.halt.wait(self.every):
            if self.proxy.proc.poll() is not None:
                return
            self.take()


# -- the stream reader -----------------------------------------------------------------------------


@dataclass
class Tally:
    """What the reader saw in the stream."""

    run_stmts: int = 0  # kind=stmt of the soak run's pgbench statement, without err
    run_errors: int = 0  # the same statement with err
    run_other: int = 0  # other kind=stmt of the soak run's application (pgbench's own start-up queries)
    other_apps: int = 0  # kind=stmt of other applications (the max-rate measurement)
    txn_end: int = 0
    out_of_order: int = 0  # a session's txid not above its previous one: a duplicate or a reordering
    entries: int = 0
    reconnects: int = 0
    last_txid: dict[str, int] = field(default_factory=dict)


class Reader(threading.Thread):
    """Reads the stream as an analyzer would, tallies it, then XTRIMs what it read (bounded Redis memory).
    A subclass with ``trim = False`` only reads (pipeline.py: the analyzers' group still needs the entries)."""

    trim = True

    def __init__(self, url: str, key: str, app: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.app = url, key, app
        self.tally = Tally()
        self.halt = threading.Event()
        self.empty_reads = 0  # reads that found nothing new (each waits up to 0.5 s)
        self.last_id = "0-0"
        self.error = ""

    def run(self) -> None:
        r = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=10)
        while not self.halt.is_set():
            try:
                got = r.xread({self.key: self.last_id}, count=5000, block=500)
            except (redis.ConnectionError, redis.TimeoutError):
                self.tally.reconnects += 1
                self.halt.wait(0.5)  # Redis is being restarted: try again
                continue
            except redis.RedisError as exc:
                self.error = str(exc)
                return
            if not got:
                self.empty_reads += 1
                continue
            entries = got[0][1]
            for _id, fields in entries:
                for ev in events_of(fields):  # bundled, packed or flat: the proxy's stream_entry
                    self.count(ev)
            self.last_id = entries[-1][0]
            if self.trim:
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    r.xtrim(self.key, minid=self.last_id, approximate=False)

    def count(self, ev: dict[str, str]) -> None:
        t = self.tally
        t.entries += 1
        if ev.get("kind") == "txn_end":
            t.txn_end += 1
            return
        if ev.get("app") != self.app:
            t.other_apps += 1
            return
        sid, txid = ev.get("sid", ""), int(ev.get("txid") or 0)
        if txid <= t.last_txid.get(sid, 0):
            t.out_of_order += 1
        t.last_txid[sid] = txid
        if not ev.get("sql", "").startswith(SQL_PREFIX):
            t.run_other += 1
        elif "err" in ev:
            t.run_errors += 1
        else:
            t.run_stmts += 1


# -- pgbench ---------------------------------------------------------------------------------------

_TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.M)
_TXNS = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_LAT = re.compile(r"^latency average = ([\d.]+) ms", re.M)
_LAG = re.compile(r"^rate limit schedule lag: avg ([\d.]+) \(max ([\d.]+)\) ms", re.M)
_PROGRESS = re.compile(r"^progress: ([\d.]+) s, ([\d.]+) tps, lat ([\d.]+) ms", re.M)


@dataclass
class Bench:
    """pgbench's summary and its per-interval progress lines."""

    rc: int
    txns: int
    failed: int
    tps: float
    lat_ms: float
    lag_ms: float | None
    lag_max_ms: float | None
    progress: list[tuple[float, float, float]]  # (seconds, tps, latency ms)
    out: str


def pg_env(port: int, dbname: str, user: str, app: str) -> dict[str, str]:
    return {**os.environ, "PGHOST": HOST, "PGPORT": str(port), "PGUSER": user, "PGDATABASE": dbname,
            "PGAPPNAME": app, "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10"}


def pgbench_cmd(args: argparse.Namespace, seconds: int, rate: int | None) -> list[str]:
    cmd = ["pgbench", "-n", "-S", "-M", "simple", "-c", str(args.clients), "-j", str(min(2, args.clients)),
           "-T", str(seconds), "-P", str(args.progress)]
    if rate is not None:
        cmd += ["-R", str(rate)]
    return cmd


def parse_bench(rc: int, out: str) -> Bench:
    def num(rx: re.Pattern[str], default: float = 0.0) -> float:
        m = rx.search(out)
        return float(m.group(1)) if m else default

    lag = _LAG.search(out)
    return Bench(rc, int(num(_TXNS)), int(num(_FAILED)), num(_TPS), num(_LAT),
                 float(lag.group(1)) if lag else None, float(lag.group(2)) if lag else None,
                 [(float(a), float(b), float(c)) for a, b, c in _PROGRESS.findall(out)], out)


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Outage:
    at_s: float = 0.0
    down_s: float = 0.0
    noticed: bool = False  # the proxy's fasterdata_sink_redis_up went to 0
    before: dict[str, float] = field(default_factory=dict)


def restart_redis(server: PrivateRedis, proxy: Proxy, down: float, t0: float) -> Outage:
    """SIGKILL the proxy's Redis, keep it down ``down`` seconds, start it again on the same port."""
    o = Outage(at_s=time.monotonic() - t0, before=proxy.metrics())
    t = time.monotonic()
    server.kill()
    with contextlib.suppress(RuntimeError):
        wait_for(lambda: proxy.metrics().get("fasterdata_sink_redis_up") == 0, "the proxy to notice", down, 0.2)
        o.noticed = True
    time.sleep(max(0.0, down - (time.monotonic() - t)))  # the outage's length, chosen, not measured
    server.start()
    o.down_s = time.monotonic() - t
    return o


def drained(proxy: Proxy, reader: Reader) -> bool:
    """Everything the proxy emitted is confirmed by Redis, and the reader has since found nothing new twice."""
    m = proxy.metrics()
    if not (m.get("fasterdata_proxy_connections_active", 1) == 0 and m.get("fasterdata_sink_queued", 1) == 0
            and m.get("fasterdata_sink_spool_events", 1) == 0 and m.get("fasterdata_sink_redis_up", 0) == 1):
        return False
    seen = reader.empty_reads
    wait_for(lambda: reader.empty_reads >= seen + 2 or not reader.is_alive(), "the reader to reach the end", 60)
    return True


def mib(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def report(args: argparse.Namespace, info: dict[str, str], peak: Bench, target: int, bench: Bench,
           outage: Outage, samples: list[Sample], tally: Tally, final: dict[str, float], rc: int,
           drain_s: float) -> tuple[str, bool]:
    """The Markdown report and whether the soak passed (nothing lost or doubled, no failures, clean exit)."""
    executed = bench.txns  # -S: one statement per transaction
    lost = executed - tally.run_stmts
    ok = (lost == 0 and bench.failed == 0 and bench.rc == 0 and tally.out_of_order == 0 and tally.run_errors == 0
          and final.get("fasterdata_sink_dropped_total", 0) == 0 and rc == 0)
    first, last = samples[0], samples[-1]
    top_rss = max(samples, key=lambda s: s.rss_kb)
    top_fds = max(samples, key=lambda s: s.fds)
    windows = bench.progress
    worst_tps = min(windows, key=lambda w: w[1]) if windows else None
    worst_lat = max(windows, key=lambda w: w[2]) if windows else None
    b = outage.before
    rows = [
        (f"maximum rate (pgbench -S -c {args.clients}, {args.max_seconds} s, through the proxy)",
         f"{peak.tps:,.0f} tps ({peak.failed} failed)"),
        ("target rate (--rate)", f"{target:,} tps ({args.fraction:.0%} of the maximum)"),
        ("soak run", f"{args.minutes:g} min planned; pgbench -S -M simple -c {args.clients} -R {target}"),
        ("achieved", f"{bench.tps:,.0f} tps; latency avg {bench.lat_ms:.3f} ms; schedule lag avg "
                     f"{bench.lag_ms if bench.lag_ms is not None else float('nan'):.3f} ms "
                     f"(max {bench.lag_max_ms if bench.lag_max_ms is not None else float('nan'):.1f} ms)"),
        (f"worst {args.progress} s window", "—" if worst_tps is None or worst_lat is None else
         f"{worst_tps[1]:,.0f} tps at {worst_tps[0]:.0f} s; latency {worst_lat[2]:.2f} ms at {worst_lat[0]:.0f} s"),
        ("pgbench transactions / failed", f"{bench.txns:,} / {bench.failed}"),
        ("Redis restart", f"SIGKILL at {outage.at_s:.0f} s, back after {outage.down_s:.1f} s; proxy noticed: "
                          f"{'yes' if outage.noticed else 'no'}"),
        ("sink during/after the outage", "spooled {:,.0f}, replayed {:,.0f}, dropped {:,.0f}, deduplicated {:,.0f}, "
         "send errors {:,.0f}".format(
             final.get("fasterdata_sink_spooled_total", 0) - b.get("fasterdata_sink_spooled_total", 0),
             final.get("fasterdata_sink_replayed_total", 0) - b.get("fasterdata_sink_replayed_total", 0),
             final.get("fasterdata_sink_dropped_total", 0),
             final.get("fasterdata_sink_deduplicated_total", 0),
             final.get("fasterdata_sink_send_errors_total", 0))),
        ("statements executed (transactions × 1)", f"{executed:,}"),
        ("kind=stmt entries of the run in the stream", f"{tally.run_stmts:,} (+{tally.run_other} pgbench start-up "
                                                       f"queries, {tally.run_errors} with err)"),
        ("**lost** (executed − in stream)", f"**{lost:,}**"),
        ("duplicated or out of order (txid not increasing per session)", f"{tally.out_of_order}"),
        ("stream entries read in all", f"{tally.entries:,} (max-rate run {tally.other_apps:,}, "
                                       f"txn_end {tally.txn_end}); reader reconnects {tally.reconnects}"),
        ("drain after pgbench ended", f"{drain_s:.1f} s"),
        ("proxy RSS MiB start / peak / end",
         f"{mib(first.rss_kb)} / {mib(top_rss.rss_kb)} (at {top_rss.t:.0f} s) / {mib(last.rss_kb)}"),
        ("proxy open descriptors start / peak / end",
         f"{first.fds} / {top_fds.fds} (at {top_fds.t:.0f} s) / {last.fds}"),
        ("proxy exit code on SIGTERM", str(rc)),
        ("**result**", "**PASS**" if ok else "**FAIL**"),
    ]
    table = ["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    step = max(1, len(samples) // 20)
    series = ["| t s | RSS MiB | open fds | sessions |", "|---|---|---|---|"]
    series += [f"| {s.t:.0f} | {mib(s.rss_kb)} | {s.fds} | {s.sessions:.0f} |"
               for s in [*samples[::step], *([last] if (len(samples) - 1) % step else [])]]
    head = [
        f"# fasterdata soak{' (smoke check)' if args.minutes < 10 else ''}",
        "",
        f"- run: {info['started']} UTC; command: `{' '.join(['.venv/bin/python', *sys.argv])}`",
        f"- machine: nproc={os.cpu_count()}; load average before/after: {info['load_before']} / {info['load_after']}",
        f"- PostgreSQL {info['postgres']}; {info['pgbench']}; {info['redis']}; proxy at {info['commit']}",
        f"- database {args.dbname}: {info['db_note']}; a private redis-server (appendonly, fsync always) "
        f"killed and restarted once halfway; RSS and descriptors of the proxy's process tree every "
        f"{args.sample_every:g} s",
    ]
    pstep = max(1, len(windows) // 20)
    progress = ["| t s | tps | latency ms |", "|---|---|---|"]
    progress += [f"| {t:.0f} | {tps:,.0f} | {lat:.2f} |" for t, tps, lat in windows[::pstep]]
    doc = "\n".join([*head, "", *table, "", "Samples (RSS and descriptors over the run):", "", *series, "",
                     f"pgbench progress (-P {args.progress}; latency includes the schedule lag):", "", *progress])
    return doc, ok


def first_line(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0].strip()
    except (OSError, IndexError):
        return "?"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="length of the rate-limited run [30]")
    p.add_argument("--fraction", type=float, default=0.7, help="share of the measured maximum rate [0.7]")
    p.add_argument("--max-seconds", type=int, default=15, help="length of the maximum-rate measurement [15]")
    p.add_argument("--clients", type=int, default=8, help="pgbench -c (-j 2) [8]")
    p.add_argument("--redis-down", type=float, default=5.0, help="seconds Redis stays down halfway [5]")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS/fd samples [5]")
    p.add_argument("--progress", type=int, default=10, help="pgbench -P interval, seconds [10]")
    p.add_argument("--drain-timeout", type=float, default=300.0,
                   help="most seconds to wait for the stream to catch up after pgbench [300]")
    p.add_argument("--dbname", default="fdsoak", help="database, created and initialised if missing [fdsoak]")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s [10]")
    p.add_argument("--user", default="postgres", help="database user [postgres]")
    p.add_argument("--output", default=str(HERE / "results.md"), help="Markdown file, overwritten ['' skips]")
    args = p.parse_args(argv)
    if args.minutes <= 0 or not 0 < args.fraction <= 1 or args.clients < 1 or args.max_seconds < 1:
        p.error("--minutes > 0, 0 < --fraction ≤ 1, --clients ≥ 1, --max-seconds ≥ 1")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so the finally block stops everything we started


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("pgbench", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (apt-get install -y postgresql-client redis-server)")
    signal.signal(signal.SIGTERM, _terminate)
    info = {"started": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
            "load_before": loadavg(),
            "pgbench": first_line(["pgbench", "--version"]), "redis": first_line(["redis-server", "--version"]),
            "commit": first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])}
    info["db_note"] = ensure_database(args.dbname, args.user, args.scale)
    with psycopg.connect(host=HOST, port=5432, dbname="postgres", user=args.user) as conn:
        info["postgres"] = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    token = f"{os.getpid()}-{secrets.token_hex(3)}"
    prefix, app = f"fdsoak-{token}", f"fdsoak-run-{token}"
    workdir = Path(tempfile.mkdtemp(prefix="fdsoak-"))
    server = proxy = reader = sampler = None
    bench_proc: subprocess.Popen[str] | None = None
    try:
        server = PrivateRedis(workdir)
        proxy = Proxy(workdir, server.url, prefix)
        wait_for(lambda: proxy.metrics().get("fasterdata_sink_redis_up") == 1, "the sink to connect", 30)
        reader = Reader(server.url, stream_name(prefix), app)
        reader.start()

        print(f"measuring the maximum rate: pgbench -S -c {args.clients} for {args.max_seconds} s …", flush=True)
        run = subprocess.run(pgbench_cmd(args, args.max_seconds, None), capture_output=True, text=True,
                             env=pg_env(proxy.port, args.dbname, args.user, f"fdsoak-max-{token}"),
                             timeout=args.max_seconds + 120)
        peak = parse_bench(run.returncode, run.stdout + run.stderr)
        if peak.rc != 0 or peak.tps <= 0:
            raise RuntimeError(f"the maximum-rate run failed:\n{peak.out[-2000:]}")
        target = max(1, round(peak.tps * args.fraction))
        seconds = max(1, round(args.minutes * 60))
        print(f"maximum {peak.tps:,.0f} tps; soak at {target:,} tps for {seconds} s", flush=True)

        t0 = time.monotonic()
        sampler = Sampler(proxy, args.sample_every, t0)
        sampler.take()
        sampler.start()
        out_path = workdir / "pgbench.out"
        with out_path.open("w") as out:
            bench_proc = subprocess.Popen(pgbench_cmd(args, seconds, target), stdout=out, stderr=subprocess.STDOUT,
                                          text=True, env=pg_env(proxy.port, args.dbname, args.user, app))
        time.sleep(seconds / 2)  # halfway: the outage
        if bench_proc.poll() is not None:
            raise RuntimeError(f"pgbench ended before the Redis restart:\n{out_path.read_text()[-2000:]}")
        print(f"{time.monotonic() - t0:.0f} s: killing Redis for {args.redis_down:g} s", flush=True)
        outage = restart_redis(server, proxy, args.redis_down, t0)
        print(f"{time.monotonic() - t0:.0f} s: Redis is back", flush=True)
        rc_bench = bench_proc.wait(timeout=seconds + 300)
        bench = parse_bench(rc_bench, out_path.read_text())
        print(f"pgbench done: {bench.txns:,} transactions, {bench.failed} failed; draining …", flush=True)
        t_end = time.monotonic()
        with contextlib.suppress(RuntimeError):
            wait_for(lambda: drained(proxy, reader), "the stream to catch up", args.drain_timeout, 0.5)
        drain_s = time.monotonic() - t_end
        sampler.halt.set()
        sampler.join(30)
        sampler.take()  # the end: after the drain, sessions closed
        final = proxy.metrics()
        rc = proxy.stop()
        reader.halt.set()
        reader.join(30)
        if reader.error:
            raise RuntimeError(f"the stream reader failed: {reader.error}")
    finally:
        if bench_proc is not None and bench_proc.poll() is None:
            bench_proc.kill()
            bench_proc.wait()
        if sampler is not None:
            sampler.halt.set()
        if reader is not None:
            reader.halt.set()
        if proxy is not None:
            proxy.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    info["load_after"] = loadavg()
    doc, ok = report(args, info, peak, target, bench, outage, sampler.samples, reader.tally, final, rc, drain_s)
    publish(doc, args.output)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""What does the fasterdata proxy cost? pgbench through several paths, measured in turns in one run.

Paths: direct to PostgreSQL, through PgBouncer (the C reference every operator knows), through a plain
uvloop byte forwarder (forwarder.py: the floor under any proxy written on uvloop), and through the
fasterdata proxy with capture on and with --no-capture, each on the Python data plane (--data-plane
python), and with capture on and off on the native one, the default. The rate lanes (pgbench -R, -c 4)
report the latency each path adds over direct. This machine is shared and noisy, so the paths are never
measured in separate sessions: each repeat runs every path once, in a rotated order, and the report gives
medians and ratios of neighbouring runs rather than absolute numbers alone.

    .venv/bin/python bench/proxy/run.py --duration 10 --repeats 3
    .venv/bin/python bench/proxy/run.py --quick
    .venv/bin/python bench/proxy/run.py --paths direct pgbouncer inline native --workloads select rate2000
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import platform
import pwd
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import psycopg
import redis

from fasterdata.proxy.streamkeys import held_key, stream_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # bench/: benchkit
from benchkit import ensure_database, loadavg, proc_tree, publish, redis_cpu_seconds, terminate  # noqa: E402

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# pgbench's -n skips its own vacuum/truncate; we do that directly (not through the path under test)
# so setup traffic is neither timed nor counted as captured statements.
PREPARE_SQL = ("VACUUM pgbench_branches", "VACUUM pgbench_tellers", "TRUNCATE pgbench_history")


@dataclass(frozen=True)
class Workload:
    """One pgbench script and how many SQL statements each of its transactions sends."""

    name: str
    label: str
    args: tuple[str, ...]
    statements_per_txn: int  # see `pgbench --show-script=tpcb-like`: BEGIN, 3 UPDATE, SELECT, INSERT, END
    clients: int | None = None  # pgbench -c; None: --clients


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("select", "select-only (-S), simple protocol (-M simple)", ("-S", "-M", "simple"), 1),
        Workload("select-prepared", "select-only (-S), prepared (-M prepared)", ("-S", "-M", "prepared"), 1),
        Workload("tpcb", "TPC-B-like (builtin), simple protocol (-M simple)", ("-M", "simple"), 7),
        Workload("rate2000", "fixed rate 2,000 tps (-R 2000 -c 4), select-only, prepared",
                 ("-S", "-M", "prepared", "-R", "2000"), 1, clients=4),
        Workload("rate8000", "fixed rate 8,000 tps (-R 8000 -c 4), select-only, prepared",
                 ("-S", "-M", "prepared", "-R", "8000"), 1, clients=4),
    )
}

# Paths --paths may pick: key → what the report calls it.
PATHS = {
    "direct": "direct",
    "pgbouncer": "pgbouncer",
    "forwarder": "uvloop forwarder",
    "inline": "fasterdata capture on",
    "off": "fasterdata capture off",
    "native": "fasterdata native capture on",
    "native-off": "fasterdata native capture off",
}


@dataclass
class Target:
    """A way to reach the database: a port, and the process (if any) whose cost we charge to it."""

    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    stream_key: str | None = None  # only for the capture-on proxy
    log: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None


@dataclass
class Run:
    """One pgbench run through one target; None fields mean "not measured for this path"."""

    ok: bool
    tps: float = 0.0
    txns: int = 0
    failed: int = 0
    avg_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_s: float | None = None
    cpu_helper_s: float | None = None  # of cpu_s, the proxy's child processes (--proxy-workers)
    redis_cpu_s: float | None = None  # the Redis server's CPU over the run (capture paths only)
    wall_s: float = 0.0
    hwm_kb: int | None = None
    expected: int = 0
    captured: int | None = None
    stream_seen: bool = False
    error: str = ""


@dataclass
class Cell:
    """All runs of one (workload, target) pair, plus the ratios paired within each repeat."""

    runs: list[Run] = field(default_factory=list)
    vs_direct: list[float] = field(default_factory=list)
    vs_pgbouncer: list[float] = field(default_factory=list)
    added_avg_us: list[float] = field(default_factory=list)  # mean latency over direct's, same repeat
    added_p99_us: list[float] = field(default_factory=list)


# -- /proc ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime+stime of the tree (all threads), plus children already reaped by it."""
    ticks = 0
    for i, p in enumerate(proc_tree(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # After the ")" of comm, field 3 (state) is index 0: utime=14, stime=15, cutime=16, cstime=17.
        ticks += int(fields[11]) + int(fields[12])
        if i == 0:
            ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def helper_cpu_seconds(pid: int) -> float:
    """utime+stime of the process's live descendants (the workers of --proxy-workers > 1)."""
    ticks = 0
    for p in proc_tree(pid)[1:]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """Sum of a /proc/<pid>/status memory field (VmRSS, VmHWM) over the process tree, in KiB."""
    total = 0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
    return total


def reset_peak(pid: int) -> bool:
    """Reset VmHWM (clear_refs 5), so each workload gets its own peak instead of the lifetime one."""
    try:
        for p in proc_tree(pid):
            Path(f"/proc/{p}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# -- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_listening(target: Target, timeout: float = 15.0) -> None:
    """Block until the target accepts TCP connections; fail fast if its process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not target.alive():
            raise RuntimeError(f"{target.name} exited during start-up:\n{tail(target.log)}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, target.port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{target.name} did not listen on {target.port} within {timeout:g}s:\n{tail(target.log)}")


def tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop(target: Target) -> None:
    """SIGTERM, then SIGKILL after a bounded wait: never leave a proxy or PgBouncer behind."""
    if target.proc is not None:
        terminate(target.proc, 10)


def start_pgbouncer(workdir: Path, dbname: str, user: str) -> Target:
    """PgBouncer in session mode with a private config; trust auth through a one-line auth_file."""
    port = free_port()
    pdir = workdir / "pgbouncer"
    pdir.mkdir()
    (pdir / "users.txt").write_text(f'"{user}" ""\n')
    (pdir / "pgbouncer.ini").write_text(f"""\
[databases]
{dbname} = host={HOST} port=5432 dbname={dbname}

[pgbouncer]
listen_addr = {HOST}
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {pdir / "users.txt"}
admin_users = {user}
pool_mode = session
max_client_conn = 400
default_pool_size = 40
server_tls_sslmode = disable
server_idle_timeout = 60
ignore_startup_parameters = extra_float_digits,options
log_connections = 0
log_disconnections = 0
log_stats = 0
verbose = 0
""")
    cmd = ["pgbouncer"]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root; hand it the postgres user.
        pw = pwd.getpwnam("postgres")
        for p in (workdir, pdir, *pdir.iterdir()):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        cmd += ["-u", "postgres"]
    log = pdir / "pgbouncer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*cmd, str(pdir / "pgbouncer.ini")], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    target = Target("pgbouncer", port, proc, log=log)
    wait_listening(target)
    return target


def start_forwarder(workdir: Path) -> Target:
    """The reference floor: forwarder.py between pgbench and PostgreSQL."""
    port = free_port()
    log = workdir / "forwarder.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(HERE / "forwarder.py"), "--listen", f"{HOST}:{port}",
                                 "--upstream", f"{HOST}:5432"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    target = Target("uvloop forwarder", port, proc, log=log)
    wait_listening(target)
    return target


def start_proxy(name: str, workdir: Path, upstream_port: int, prefix: str, capture: bool,
                workers: int = 1, extra: Sequence[str] = ()) -> Target:
    """A fasterdata proxy as operators run it, minus the metrics port (not on the hot path)."""
    port = free_port()
    exe = Path(sys.executable).parent / "fasterdata"
    cmd = [str(exe) if exe.exists() else "fasterdata", "proxy", "--listen", f"{HOST}:{port}",
           "--upstream", f"{HOST}:{upstream_port}", "--upstream-sslmode", "disable", "--metrics", "",
           "--redis", "redis://127.0.0.1:6379/0", "--prefix", prefix, "--log-level", "warning",
           "--shutdown-grace", "2"]
    if not capture:
        cmd.append("--no-capture")
    cmd += extra
    if workers != 1:  # forked SO_REUSEPORT workers: /proc readings cover the whole process tree
        cmd += ["--workers", str(workers)]
    log = workdir / f"{name}.log"
    env = {**os.environ, "FASTERDATA_STREAM_MAXLEN": "0"}  # see stream_statements
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                env=env)
    target = Target(name, port, proc, stream_key=stream_name(prefix) if capture else None, log=log)
    wait_listening(target)
    return target


# -- database ------------------------------------------------------------------------------------


def connect(port: int, dbname: str, user: str, **kw: object) -> psycopg.Connection:
    return psycopg.connect(host=HOST, port=port, dbname=dbname, user=user, sslmode="disable",
                           connect_timeout=10, **kw)  # type: ignore[arg-type]


def prepare_tables(dbname: str, user: str) -> None:
    with connect(5432, dbname, user, autocommit=True) as conn:
        for sql in PREPARE_SQL:
            conn.execute(sql)


def pg_env() -> dict[str, str]:
    return {**os.environ, "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10"}


# -- Redis stream --------------------------------------------------------------------------------


def stream_statements(r: redis.Redis, key: str) -> tuple[int, bool]:
    """Statements the stream holds, from the sink's own count (``<stream>:held``): an entry is a bundle of
    up to 100 statements, so entries say nothing. The proxies run with stream_maxlen 0 and the stream
    is deleted before each run (clear_stream), so nothing is trimmed and the count is the run's."""
    held = r.hget(held_key(key), "statements")
    return (int(held), True) if held is not None else (0, bool(r.exists(key)))


def clear_stream(r: redis.Redis, key: str) -> None:
    """Between runs, with the proxy idle and its sink caught up: the next run starts from an empty stream."""
    r.delete(key, held_key(key))


def wait_for_stream(r: redis.Redis, key: str, target: int, limit: float, settle: float = 1.0) -> tuple[int, bool]:
    """The proxy flushes asynchronously: wait until the count reaches target or stops moving (bounded)."""
    deadline = time.monotonic() + limit
    count, seen = stream_statements(r, key)
    last_change = time.monotonic()
    while count < target and time.monotonic() < deadline and time.monotonic() - last_change < settle:
        time.sleep(0.1)
        now, seen = stream_statements(r, key)
        if now != count:
            count, last_change = now, time.monotonic()
    return count, seen


def delete_keys(r: redis.Redis, prefixes: Sequence[str]) -> int:
    n = 0
    for prefix in prefixes:
        for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            n += r.delete(key)
    return n


# -- pgbench -------------------------------------------------------------------------------------

_TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.M)
_TXNS = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)


def pgbench(port: int, wl: Workload, args: argparse.Namespace, duration: float,
            log_prefix: Path | None) -> tuple[subprocess.CompletedProcess[str], float]:
    clients = wl.clients or args.clients
    cmd = ["pgbench", "-n", *wl.args, "-c", str(clients), "-j", str(min(2, clients)),
           "-T", str(max(1, round(duration))), "-h", HOST, "-p", str(port), "-U", args.user]
    if log_prefix is not None:
        cmd += ["-l", f"--log-prefix={log_prefix}"]
    t0 = time.monotonic()
    proc = subprocess.run([*cmd, args.dbname], capture_output=True, text=True, env=pg_env(),
                          timeout=duration + 120)
    return proc, time.monotonic() - t0


def latencies(log_prefix: Path) -> tuple[list[int], int]:
    """Per-transaction latencies (µs) from pgbench -l files; "failed"/"skipped" rows are counted apart."""
    lat: list[int] = []
    bad = 0
    for path in log_prefix.parent.glob(log_prefix.name + ".*"):
        with path.open() as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
                else:
                    bad += 1
        path.unlink()
    return lat, bad


def measure(target: Target, wl: Workload, args: argparse.Namespace, logdir: Path, r: redis.Redis,
            tag: str) -> Run:
    """One timed pgbench run through target, with the proxy's CPU, peak memory and captured statements."""
    if not target.alive():
        return Run(ok=False, error=f"{target.name} is not running:\n{tail(target.log)}")
    prepare_tables(args.dbname, args.user)
    pid = target.pid
    if pid is not None:
        reset_peak(pid)
        cpu0 = cpu_seconds(pid)
        helper0 = helper_cpu_seconds(pid)
    base = 0
    if target.stream_key:
        clear_stream(r, target.stream_key)
    redis0 = redis_cpu_seconds(r) if target.stream_key else 0.0
    log_prefix = logdir / tag
    proc, wall = pgbench(target.port, wl, args, args.duration, log_prefix)
    tps, txns = _TPS.search(proc.stdout), _TXNS.search(proc.stdout)
    if proc.returncode != 0 or tps is None or txns is None:
        latencies(log_prefix)
        return Run(ok=False, error=(proc.stderr or proc.stdout).strip()[-600:])
    run = Run(ok=True, tps=float(tps.group(1)), txns=int(txns.group(1)), wall_s=wall)
    failed = _FAILED.search(proc.stdout)
    run.failed = int(failed.group(1)) if failed else 0
    run.expected = run.txns * wl.statements_per_txn
    if target.stream_key:
        now, run.stream_seen = wait_for_stream(r, target.stream_key, base + run.expected, args.capture_wait)
        run.captured = now - base
        run.redis_cpu_s = redis_cpu_seconds(r) - redis0
    if pid is not None:
        run.cpu_s = cpu_seconds(pid) - cpu0
        run.cpu_helper_s = helper_cpu_seconds(pid) - helper0
        run.hwm_kb = status_kb(pid, "VmHWM")
    lat, _bad = latencies(log_prefix)
    if lat:
        lat.sort()
        run.avg_ms = sum(lat) / len(lat) / 1000
        run.p99_ms = lat[max(0, math.ceil(0.99 * len(lat)) - 1)] / 1000
    return run


# -- idle connections ----------------------------------------------------------------------------


@dataclass
class IdleResult:
    name: str
    before_kb: int
    with_kb: int
    opened: int
    note: str = ""


def idle_connections(target: Target, args: argparse.Namespace, note: str = "") -> IdleResult:
    """RSS of a proxy holding N idle client sessions: the cost of many mostly-idle app pools."""
    assert target.pid is not None
    servers0 = pool_servers(target, args) if target.name == "pgbouncer" else None
    before = status_kb(target.pid, "VmRSS")
    conns: list[psycopg.Connection] = []
    try:
        for _ in range(args.idle):
            conns.append(connect(target.port, args.dbname, args.user, autocommit=True))
        time.sleep(0.5)
        during = status_kb(target.pid, "VmRSS")
        if servers0 is not None:
            note = (f"server connections to PostgreSQL: {servers0} before, "
                    f"{pool_servers(target, args)} with the clients idle (pool kept from the runs)")
    except psycopg.Error as exc:
        during = status_kb(target.pid, "VmRSS")
        note = f"only {len(conns)} opened: {str(exc).strip()[:120]}"
    finally:
        for c in conns:
            c.close()
    return IdleResult(target.name, before, during, len(conns), note)


def pool_servers(target: Target, args: argparse.Namespace) -> int | None:
    """PgBouncer's server connections for the bench database (session mode links one on first query)."""
    out = subprocess.run(["psql", "-h", HOST, "-p", str(target.port), "-U", args.user, "-d", "pgbouncer",
                          "-AXc", "SHOW POOLS"], capture_output=True, text=True, env=pg_env()).stdout
    lines = out.splitlines()
    if not lines:
        return None
    names = lines[0].split("|")
    wanted = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
    for line in lines[1:]:
        row = dict(zip(names, line.split("|"), strict=False))
        if row.get("database") == args.dbname:
            return sum(int(row.get(k, "0") or 0) for k in wanted)
    return None


# -- report --------------------------------------------------------------------------------------


def fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def med(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def workload_table(wl: Workload, names: Sequence[str], cells: dict[str, Cell], repeats: int) -> str:
    head = ("| path | TPS (median) | TPS min–max | vs direct | vs PgBouncer | avg latency ms | p99 latency ms "
            "| avg added µs | p99 added µs | proxy CPU µs/stmt | of which child processes | Redis CPU µs/stmt "
            "| proxy CPU % | peak RSS MiB | capture |")
    rows = [f"### {wl.name}: {wl.label}, {wl.statements_per_txn} statement(s)/transaction", "", head,
            "|" + "---|" * 15]
    for name in names:
        cell = cells[name]
        ok = [r for r in cell.runs if r.ok]
        label = name if len(ok) == repeats else f"{name} ({len(ok)}/{repeats} ok)"
        if not ok:
            rows.append(f"| {label} |" + " FAILED |" * 14)
            continue
        tps = [r.tps for r in ok]
        cpu = [r.cpu_s * 1e6 / r.expected for r in ok if r.cpu_s is not None and r.expected]
        helper = [r.cpu_helper_s * 1e6 / r.expected for r in ok if r.cpu_helper_s and r.expected]
        rcpu = [r.redis_cpu_s * 1e6 / r.expected for r in ok if r.redis_cpu_s is not None and r.expected]
        util = [100 * r.cpu_s / r.wall_s for r in ok if r.cpu_s is not None and r.wall_s]
        hwm = [r.hwm_kb for r in ok if r.hwm_kb is not None]
        rows.append(
            f"| {label} | {statistics.median(tps):,.0f} | {min(tps):,.0f}–{max(tps):,.0f} "
            f"| {fmt(med(cell.vs_direct), '.3f')} | {fmt(med(cell.vs_pgbouncer), '.3f')} "
            f"| {statistics.median([r.avg_ms for r in ok]):.3f} | {statistics.median([r.p99_ms for r in ok]):.3f} "
            f"| {fmt(med(cell.added_avg_us), '.0f')} | {fmt(med(cell.added_p99_us), '.0f')} "
            f"| {fmt(med(cpu), '.1f')} | {fmt(med(helper), '.1f')} | {fmt(med(rcpu), '.1f')} | {fmt(med(util), '.0f')} "
            f"| {fmt(max(hwm) / 1024 if hwm else None, '.1f')} | {capture_cell(ok)} |")
    return "\n".join(rows)


def capture_cell(runs: Sequence[Run]) -> str:
    """Captured ÷ executed over all repeats together, so one lossy run is not hidden by a median."""
    if all(r.captured is None for r in runs):
        return "—"
    got = sum(r.captured or 0 for r in runs)
    want = sum(r.expected for r in runs)
    pct = 100 * got / want if want else 0.0
    if not any(r.stream_seen for r in runs):
        return f"{pct:.1f}% (no stream)"
    return f"{pct:.1f}% ({got:,}/{want:,})"


def idle_table(results: Sequence[IdleResult], n: int) -> str:
    rows = [f"### {n} idle client connections", "",
            "| path | RSS before MiB | RSS with idle clients MiB | KiB per connection | note |",
            "|---|---|---|---|---|"]
    for res in results:
        per = (res.with_kb - res.before_kb) / res.opened if res.opened else None
        rows.append(f"| {res.name} | {res.before_kb / 1024:.1f} | {res.with_kb / 1024:.1f} "
                    f"| {fmt(per, '.1f')} | {res.note} |")
    return "\n".join(rows)


def versions() -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0].strip()
        except (OSError, IndexError):
            return "?"

    with connect(5432, "postgres", "postgres") as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    cpu = "?"
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "?")
    mem = Path("/proc/meminfo").read_text().split()[1]
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "proxy", "config"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "cpu": f"{os.cpu_count()} × {cpu}, {int(mem) / 1024 / 1024:.0f} GiB RAM",
        "postgres": pg,
        "pgbouncer": first_line(["pgbouncer", "--version"]),
        "pgbench": first_line(["pgbench", "--version"]),
        "python": platform.python_version(),
        "proxy": f"{commit}{' + uncommitted changes in proxy/ or config/' if dirty else ''}",
    }


def header(args: argparse.Namespace, info: dict[str, str], started: dt.datetime, db_note: str,
           load: tuple[str, str], peaks_reset: bool) -> str:
    mode = " (--quick smoke run: numbers are indicative only)" if args.quick else ""
    return "\n".join([
        f"# fasterdata proxy benchmark{mode}",
        "",
        f"- run: {started:%Y-%m-%d %H:%M} UTC; command: `{' '.join(['.venv/bin/python', *sys.argv])}`",
        f"- machine: nproc={os.cpu_count()}; {info['cpu']}; load average before/after: {load[0]} / {load[1]}",
        f"- PostgreSQL {info['postgres']}; {info['pgbouncer']}; {info['pgbench']}; Python {info['python']}; "
        f"proxy at {info['proxy']}",
        f"- pgbench -c {args.clients} -j {min(2, args.clients)} (rate lanes: -c 4) -T {args.duration:g}, "
        f"{args.repeats} repeat(s), "
        f"paths in turns with the order rotated each repeat; warm-up {args.warmup:g} s direct per workload; "
        f"fasterdata --workers {args.proxy_workers}",
        f"- database {args.dbname}: {db_note}; pgbench -n, with VACUUM/TRUNCATE done directly before each run",
        "- ratios are medians of per-repeat ratios (each path against the direct/PgBouncer run of the same "
        "repeat); latencies are medians over repeats of each run's mean and p99 from pgbench -l; \"added\" = "
        "a path's mean (p99) minus direct's in the same repeat, medians over repeats",
        "- proxy CPU = utime+stime of the proxy (or PgBouncer) process and its child processes ÷ statements "
        "executed, measured until the stream caught up (\"of which child processes\": the workers' share); "
        "Redis CPU = the Redis server's utime+stime over the same span ÷ statements (capture paths; the server "
        "is shared, so other clients' work counts too); CPU % = of one core over the run; peak RSS = VmHWM"
        + (" reset before each run (max over the workload's runs)" if peaks_reset else " (lifetime peak)"),
        "- capture = statements in the capture-on proxy's stream (the sink's `<stream>:held` count; the stream "
        "is emptied before each run and never trimmed) ÷ statements executed (transactions × "
        "statements/transaction), summed over repeats; pgbench's own start-up queries can push a complete "
        "capture a hair above 100%",
    ])


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per pgbench run [10]")
    p.add_argument("--repeats", type=int, default=3, help="rounds over all paths per workload [3]")
    p.add_argument("--clients", type=int, default=8, help="pgbench -c (threads: -j 2) [8]")
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS),
                   help="[all]")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of direct pgbench before a workload [3]")
    p.add_argument("--idle", type=int, default=200, help="idle client connections for the RSS test; 0 skips")
    p.add_argument("--capture-wait", type=float, default=10.0,
                   help="max seconds to wait for the stream to catch up after a run [10]")
    p.add_argument("--proxy-workers", type=int, default=1,
                   help="fasterdata proxy --workers for the timed runs (CPU and RSS sum the workers) [1]")
    p.add_argument("--no-forwarder", dest="forwarder", action="store_false",
                   help="leave out the plain uvloop forwarder (forwarder.py), the floor under any uvloop proxy")
    p.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS),
                   help="paths measured (direct and pgbouncer are always in) [all]")
    p.add_argument("--dbname", default="fdbench", help="bench database, created if missing [fdbench]")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s [10]")
    p.add_argument("--user", default="postgres", help="database user [postgres]")
    p.add_argument("--output", default=str(HERE / "results.md"), help="Markdown file, overwritten ['' skips]")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 s × 1 repeat, 1 s warm-up")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.warmup = 3.0, 1, 1.0
    if args.duration < 1 or args.repeats < 1 or args.clients < 1:
        p.error("--duration ≥ 1, --repeats ≥ 1 and --clients ≥ 1")
    return args


# The fasterdata paths: (--paths key, capture on, key prefix suffix, extra flags).
PROXY_PATHS: tuple[tuple[str, bool, str, tuple[str, ...]], ...] = (
    ("inline", True, "", ("--data-plane", "python")),
    ("off", False, "-off", ("--data-plane", "python")),
    ("native", True, "-native", ("--data-plane", "native")),
    ("native-off", False, "-native-off", ("--data-plane", "native")),
)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so the finally blocks stop every process we started


def rotated(seq: Sequence[Target], k: int) -> list[Target]:
    k %= len(seq)
    return [*seq[k:], *seq[:k]]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("pgbench", "pgbouncer", "psql"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (apt-get install -y postgresql-client pgbouncer)")
    signal.signal(signal.SIGTERM, _terminate)
    started = dt.datetime.now(dt.UTC)
    load_before = loadavg()
    db_note = ensure_database(args.dbname, args.user, args.scale)
    info = versions()
    r = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    prefix = f"fdbench-{os.getpid()}-{secrets.token_hex(3)}"
    idle_prefix = prefix + "-idle"
    workdir = Path(tempfile.mkdtemp(prefix="fdbench-"))
    logdir = workdir / "pgbench-logs"
    logdir.mkdir()
    targets: list[Target] = []
    tables: list[str] = []
    idle_rows: list[IdleResult] = []
    try:
        pgb = start_pgbouncer(workdir, args.dbname, args.user)
        targets.append(pgb)
        paths = [Target("direct", 5432), pgb]
        if "forwarder" in args.paths and args.forwarder:
            paths.append(start_forwarder(workdir))
        for key, capture, suffix, extra in PROXY_PATHS:
            if key in args.paths:
                paths.append(start_proxy(PATHS[key], workdir, 5432, prefix + suffix, capture=capture,
                                         workers=args.proxy_workers, extra=extra))
        targets += paths[2:]
        names = [t.name for t in paths]
        peaks_reset = all(reset_peak(t.pid) for t in paths if t.pid is not None)
        print("paths: " + ", ".join(f"{t.name} :{t.port}" for t in paths), flush=True)

        for wl in (WORKLOADS[n] for n in args.workloads):
            if args.warmup > 0:
                prepare_tables(args.dbname, args.user)
                pgbench(5432, wl, args, args.warmup, None)
            cells = {n: Cell() for n in names}
            for rep in range(args.repeats):
                order = rotated(paths, rep)
                got: dict[str, Run] = {}
                for t in order:
                    run = measure(t, wl, args, logdir, r, f"{wl.name}-{rep}-{t.name.replace(' ', '_')}")
                    got[t.name] = run
                    cells[t.name].runs.append(run)
                    if run.ok:
                        status = f"{run.tps:9,.0f} tps  avg {run.avg_ms:.3f} ms  p99 {run.p99_ms:.3f} ms"
                    else:
                        status = "FAILED: " + (run.error.splitlines() or ["?"])[-1]
                    extra = f"  captured {run.captured:,}/{run.expected:,}" if run.captured is not None else ""
                    print(f"[{wl.name} {rep + 1}/{args.repeats}] {t.name:<24} {status}{extra}", flush=True)
                for n, run in got.items():
                    if not run.ok:
                        continue
                    for ref, into in (("direct", cells[n].vs_direct), ("pgbouncer", cells[n].vs_pgbouncer)):
                        if got[ref].ok and got[ref].tps:
                            into.append(run.tps / got[ref].tps)
                    if got["direct"].ok and got["direct"].avg_ms:
                        cells[n].added_avg_us.append((run.avg_ms - got["direct"].avg_ms) * 1000)
                        cells[n].added_p99_us.append((run.p99_ms - got["direct"].p99_ms) * 1000)
            table = workload_table(wl, names, cells, args.repeats)
            tables.append(table)
            print("\n" + table + "\n", flush=True)

        if args.idle > 0:
            # The shared PostgreSQL allows ~100 connections, fewer than the proxy would open for 200
            # clients (one upstream each). So fresh proxies chain to PgBouncer, which holds idle
            # session-mode clients without server connections; the proxy's own memory is the same.
            idle = [pgb]
            for key, capture, suffix, extra in PROXY_PATHS:
                if key in args.paths:
                    idle.append(start_proxy(PATHS[key] + " (idle)", workdir, pgb.port, idle_prefix + suffix,
                                            capture=capture, extra=extra))
                    targets.append(idle[-1])
            note = f"fresh process; its {args.idle} upstream connections (one per client) go to PgBouncer"
            for t in idle:
                idle_rows.append(idle_connections(t, args, "" if t is pgb else note))
            tables.append(idle_table(idle_rows, args.idle))
            print(tables[-1] + "\n", flush=True)
    finally:
        for t in reversed(targets):
            stop(t)
        with contextlib.suppress(redis.RedisError):
            delete_keys(r, [p + suffix for p in (prefix, idle_prefix) for _k, _c, suffix, _e in PROXY_PATHS])
        shutil.rmtree(workdir, ignore_errors=True)

    load_after = loadavg()
    doc = header(args, info, started, db_note, (load_before, load_after), peaks_reset)
    publish(doc + "\n\n" + "\n\n".join(tables), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Analyzer throughput: statements/s per worker process, one worker vs two, and lag under a live load.

Not a timed test: it prints a table. The stream is realistic: a pgbench-like mix (BEGIN, three
UPDATEs, a SELECT, an INSERT into history, END) plus business inserts (orders, order_items, stock
moves, ledger postings), one third of transactions sent on the simple protocol with literals
(mostly unique texts: the normaliser's slow path), the rest extended with $n and JSON params.

    .venv/bin/python bench/analyzers/run.py [--events 200000] [--repeat 3] [--live-rate 20000] [--live-seconds 10]

Phases: (1) drain: the stream is pre-filled, workers (real `analyze` processes) consume it; rate is
measured from the first to the last acknowledgement. (2) live: a producer writes at a fixed rate
while one worker consumes; lag (age of the oldest unprocessed event) is sampled.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from fasterdata.proxy.streamkeys import stream_name

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "rules.yaml"
sys.path.insert(0, str(ROOT / "bench"))  # benchkit
sys.path.insert(0, str(ROOT))
from benchkit import redis_cpu_seconds  # noqa: E402

from fasterdata.config.analyzer_settings import AnalyzerSettings  # noqa: E402
from fasterdata.proxy.events import BUNDLE_FIELD, PACKED_FIELD, bundle, pack  # noqa: E402

DEFAULT_BATCH = AnalyzerSettings.model_fields["batch"].default
# pgbench through the proxy on the 2-core machine, 4 and 16 clients: 51–62 statements an entry (the sink's
# 5 ms linger: ~200 entries a second); 1 client, ~3,500 statements/s: 16–19 (bench/NOTES.md, session 9).
PER_ENTRY = 50
PER_ENTRY_WHY = "as pgbench through the proxy gives with 4–16 clients"


def stream_events(n: int, seed: int = 1):
    """Yield n statement events (schema v1) of the mix described above."""
    rng = random.Random(seed)
    ts = int(time.time() * 1e6)
    sid_n = 0
    produced = 0
    while produced < n:
        sid_n += 1
        sid = f"b{sid_n % 64}"
        simple = rng.random() < 1 / 3
        txid = str(sid_n)
        batch: list[tuple[str, list | None, str, int]] = []
        if rng.random() < 0.7:
            aid, tid, bid = rng.randint(1, 10**6), rng.randint(1, 100), rng.randint(1, 10)
            delta = rng.randint(-5000, 5000)
            batch = [
                ("BEGIN", None, "BEGIN", 0),
                ("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", [delta, aid], "UPDATE", 1),
                ("SELECT abalance FROM pgbench_accounts WHERE aid = $1", [aid], "SELECT", 1),
                ("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2", [delta, tid], "UPDATE", 1),
                ("UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2", [delta, bid], "UPDATE", 1),
                ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, $5)",
                 [tid, bid, aid, delta, "2024-05-01 10:00:00"], "INSERT", 1),
                ("END", None, "COMMIT", 0),
            ]
        else:
            oid = rng.randint(1, 10**9)
            total = f"{rng.randint(100, 100000) / 100:.2f}"
            sku = f"SKU-{rng.randint(1, 500)}"
            qty = rng.randint(1, 5)
            amount = f"{rng.randint(100, 10**6) / 100:.2f}"
            batch = [
                ("BEGIN", None, "BEGIN", 0),
                ("INSERT INTO orders (id, customer_id, region, currency, total) VALUES ($1, $2, $3, $4, $5)",
                 [oid, rng.randint(1, 50000), rng.choice(["eu", "us", "ap"]), "EUR", total], "INSERT", 1),
                ("INSERT INTO order_items (order_id, sku, quantity, price) VALUES ($1, $2, $3, $4)",
                 [oid, sku, qty, total], "INSERT", 1),
                ("UPDATE inventory SET qty = qty - $1 WHERE sku = $2", [qty, sku], "UPDATE", 1),
                ("INSERT INTO gl_entries (trx_date, account, side, amount) VALUES ($1, $2, $3, $4), ($5, $6, $7, $8)",
                 ["2024-05-01", "1200", "D", amount, "2024-05-01", "4000", "C", amount], "INSERT", 2),
                ("COMMIT", None, "COMMIT", 0),
            ]
        for sql, params, tag, rows in batch:
            ts += rng.randint(5, 200)
            f = {"v": "1", "kind": "stmt", "ts": str(ts), "dur_us": str(rng.randint(30, 3000)), "sid": sid,
                 "client": "10.0.0.5:41000", "user": "app", "db": "shop", "app": "bench", "pid": "1234",
                 "tag": tag, "txid": txid, "txn": "committed"}
            if rows:
                f["rows"] = str(rows)
            if params is None:
                f["proto"], f["sql"] = "simple", sql
            elif simple:
                f["proto"], f["sql"] = "simple", _inline(sql, params)
            else:
                f["proto"], f["sql"], f["params"] = "extended", sql, json.dumps(params)
            yield f
            produced += 1
            if produced >= n:
                return


def _inline(sql: str, params: list) -> str:
    for i in range(len(params), 0, -1):
        v = params[i - 1]
        lit = str(v) if isinstance(v, int) else "'" + str(v).replace("'", "''") + "'"
        sql = sql.replace(f"${i}", lit)
    return sql


def entry(events: list[dict[str, str]]) -> dict[str, str]:
    """One stream entry holding `events`, as the proxy's sink writes them: bundled, or packed when one."""
    return {BUNDLE_FIELD: bundle(events)} if len(events) > 1 else {PACKED_FIELD: pack(events[0])}


def fill(r: redis.Redis, stream: str, n: int, per_entry: int) -> None:
    pipe = r.pipeline(transaction=False)
    events = list(stream_events(n))
    for i in range(0, n, per_entry):
        pipe.xadd(stream, entry(events[i:i + per_entry]))
        if len(pipe) >= 2000:
            pipe.execute()
    pipe.execute()


def group_state(r: redis.Redis, stream: str) -> tuple[int, int]:
    """(entries delivered to the group, entries pending)."""
    try:
        for g in r.xinfo_groups(stream):
            if g["name"] == "analyzers":
                return int(g.get("entries-read") or 0), int(g["pending"])
    except redis.ResponseError:
        pass
    return 0, 0


def start_workers(url: str, prefix: str, k: int, batch: int, logdir: Path) -> list[subprocess.Popen]:
    procs = []
    for i in range(k):
        log = open(logdir / f"{prefix}-w{i}.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "fasterdata", "analyze", "--redis", url, "--prefix", prefix, "--metrics", "",
             "--rules", str(RULES), "--consumer", f"bench{i}", "--batch", str(batch), "--log-level", "warning"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    return procs


def stop(procs: list[subprocess.Popen]) -> float:
    """SIGTERM the workers and reap them; returns the CPU seconds (user + system) they used."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    cpu = 0.0
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
    return cpu


def proc_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


def cleanup(r: redis.Redis, prefix: str) -> None:
    keys = list(r.scan_iter(f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i:i + 500])


def steady_rate(samples: list[tuple[float, int]], n: int, lo: float = 0.1, hi: float = 0.9) -> float:
    """Statements/s while the acknowledged count went from lo·n to hi·n.

    The whole-run rate also counts each worker's start (imports, empty caches, the first sqlglot parses)
    and the end, where one worker may sit idle while another finishes its last batch; on a run of a few
    seconds those weigh more with two workers than with one.
    """
    start = next((t, a) for t, a in samples if a >= lo * n)
    end = next((t, a) for t, a in samples if a >= hi * n)
    return (end[1] - start[1]) / (end[0] - start[0]) if end[0] > start[0] else 0.0


def drain_rate(url: str, n: int, workers: int, batch: int, per_entry: int,
               logdir: Path) -> tuple[float, float, float, float, float]:
    """Pre-fill n events, `per_entry` an entry, let `workers` processes consume them.

    Returns (statements/s, seconds, worker CPU µs per statement, Redis CPU µs per statement, steady
    statements/s). The CPU figures do not depend on what else the machine runs; the rates do.
    """
    r = redis.Redis.from_url(url, decode_responses=True)
    prefix = f"fdbench{uuid.uuid4().hex[:6]}"
    stream = stream_name(prefix)
    try:
        fill(r, stream, n, per_entry)
        procs = start_workers(url, prefix, workers, batch, logdir)
        t0 = read0 = None
        pids = [p.pid for p in procs]
        samples: list[tuple[float, int]] = []
        while True:
            read, pending = group_state(r, stream)
            acked = min(n, (read - pending) * per_entry)  # statements
            now = time.perf_counter()
            samples.append((now, acked))
            if t0 is None and acked > 0:
                t0, read0, cpu0, rcpu0 = now, acked, proc_cpu(pids), redis_cpu_seconds(r)
            if acked >= n:
                t1 = now
                cpu, rcpu = proc_cpu(pids) - cpu0, redis_cpu_seconds(r) - rcpu0
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a worker exited early; see {logdir}")
            time.sleep(0.02)
        stop(procs)
        done = n - read0
        return done / (t1 - t0), t1 - t0, cpu / done * 1e6, rcpu / done * 1e6, steady_rate(samples, n)
    finally:
        cleanup(r, prefix)


def read_floor(url: str, n: int, batch: int, per_entry: int) -> float:
    """Redis CPU µs per statement for the part of the work no analyzer can skip: XREADGROUP and XACK.

    The same entries as a drain run, read in the same batches by a bare consumer that does nothing with
    them. Every worker design that keeps the consumer group pays at least this much in Redis.
    """
    r = redis.Redis.from_url(url)
    prefix = f"fdbench{uuid.uuid4().hex[:6]}"
    stream = stream_name(prefix)
    try:
        fill(r, stream, n, per_entry)
        r.xgroup_create(stream, "analyzers", id="0")
        rcpu0 = redis_cpu_seconds(r)
        while reply := r.xreadgroup("analyzers", "floor", {stream: ">"}, count=max(1, batch // per_entry)):
            ids = [entry_id for entry_id, _ in reply[0][1]]
            if not ids:
                break
            r.xack(stream, "analyzers", *ids)
        return (redis_cpu_seconds(r) - rcpu0) / n * 1e6
    finally:
        cleanup(r, prefix)


def live_lag(url: str, rate: int, seconds: float, batch: int, per_entry: int, logdir: Path) -> dict[str, float]:
    """A producer at `rate` statements/s, up to `per_entry` an entry, while one worker consumes; lag samples in
    seconds."""
    r = redis.Redis.from_url(url, decode_responses=True)
    prefix = f"fdbench{uuid.uuid4().hex[:6]}"
    stream = stream_name(prefix)
    r.xgroup_create(stream, "analyzers", id="0", mkstream=True)
    procs = start_workers(url, prefix, 1, batch, logdir)
    time.sleep(2.0)  # let the worker import and connect before the clock starts
    gen = stream_events(int(rate * seconds) + 1, seed=2)
    pipe = r.pipeline(transaction=False)
    lags: list[float] = []
    sent = entries = 0
    start = time.perf_counter()
    next_sample = start
    try:
        while True:
            now = time.perf_counter()
            due = min(int((now - start) * rate), int(rate * seconds))
            while sent < due:
                k = min(per_entry, due - sent)
                pipe.xadd(stream, entry([next(gen) for _ in range(k)]))
                sent += k
                entries += 1
                if len(pipe) >= 500:
                    pipe.execute()
            pipe.execute()
            if now >= next_sample:
                lags.append(oldest_unprocessed_age(r, stream))
                next_sample = now + 0.25
            if sent >= int(rate * seconds):
                break
            time.sleep(0.002)
        produced = sent / (time.perf_counter() - start)
        deadline = time.perf_counter() + 60
        while time.perf_counter() < deadline:
            read, pending = group_state(r, stream)
            if read - pending >= entries:
                break
            time.sleep(0.05)
        catch_up = time.perf_counter() - start - seconds
        stop(procs)
        return {"rate": produced, "p50": statistics.median(lags), "max": max(lags), "catch_up": max(0.0, catch_up)}
    finally:
        cleanup(r, prefix)


def oldest_unprocessed_age(r: redis.Redis, stream: str) -> float:
    oldest = None
    summary = r.xpending(stream, "analyzers")
    if summary and summary.get("min"):
        oldest = int(summary["min"].split("-")[0])
    last = next((g["last-delivered-id"] for g in r.xinfo_groups(stream) if g["name"] == "analyzers"), "0-0")
    nxt = r.xrange(stream, min="(" + last, count=1)
    if nxt:
        ms = int(nxt[0][0].split("-")[0])
        oldest = ms if oldest is None else min(oldest, ms)
    return max(0.0, time.time() - oldest / 1000) if oldest else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redis", default=os.environ.get("FASTERDATA_REDIS", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--events", type=int, default=200000)
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                    help=f"statements per batch [{DEFAULT_BATCH}: the worker's default]")
    ap.add_argument("--per-entry", type=int, default=PER_ENTRY,
                    help=f"statements a stream entry holds [{PER_ENTRY}: {PER_ENTRY_WHY}]; 1: one an entry")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration; the median is reported")
    ap.add_argument("--live-rate", type=int, default=20000)
    ap.add_argument("--live-seconds", type=float, default=10)
    args = ap.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="fdbench-"))
    print(f"machine: {os.cpu_count()} CPUs; {args.events:,} events per run, {args.per_entry} an entry; "
          f"batch {args.batch}; logs in {logdir}")
    results = {}
    spread = {}
    steady: dict[int, list[float]] = {}
    loads: list[float] = []
    for k in (1, 2):
        runs = []
        for _ in range(args.repeat):
            loads.append(os.getloadavg()[0])
            runs.append(drain_rate(args.redis, args.events, k, args.batch, args.per_entry, logdir))
        runs.sort()
        results[k] = runs[(len(runs) - 1) // 2]  # the median run (by rate), not the luckiest one
        steady[k] = [run[4] for run in runs]
        spread[k] = (runs[0][0], runs[-1][0])
    loads.append(os.getloadavg()[0])
    one, one_steady = results[1][0], statistics.median(steady[1])
    print()
    print("| workers | statements/s | per worker | vs one worker | steady statements/s (10–90 %) | steady vs one "
          "| seconds | worker CPU µs/stmt | Redis CPU µs/stmt |")
    print("|--------:|-------------:|-----------:|--------------:|---:|---:|--------:|---:|---:|")
    for k, (rate, secs, cpu, rcpu, _) in results.items():
        st = statistics.median(steady[k])
        print(f"| {k} | {rate:,.0f} | {rate / k:,.0f} | {rate / one:.2f}x | {st:,.0f} | {st / one_steady:.2f}x "
              f"| {secs:.1f} | {cpu:.1f} | {rcpu:.1f} |")
    floor = read_floor(args.redis, args.events, args.batch, args.per_entry)
    w2, r2 = results[2][2], results[2][3]
    ncpu = os.cpu_count() or 1
    print(f"\nceiling with every core busy: {ncpu} cores ÷ (worker {w2:.1f} + Redis {r2:.1f} µs/stmt, two-worker run) "
          f"= {ncpu / (w2 + r2) * 1e6:,.0f} statements/s = {ncpu / (w2 + r2) * 1e6 / one:.2f}x one worker; "
          f"XREADGROUP + XACK alone cost Redis {floor:.1f} µs/stmt, so with a free commit the ceiling would be "
          f"{ncpu / (w2 + floor) * 1e6 / one:.2f}x")
    for k, (lo, hi) in spread.items():
        print(f"{k} worker(s): {args.repeat} runs, {lo:,.0f}–{hi:,.0f} statements/s; steady "
              f"{min(steady[k]):,.0f}–{max(steady[k]):,.0f}")
    print(f"\nload average during the runs (1-min, median of {len(loads)} samples): {statistics.median(loads):.2f} "
          f"(other processes on this {os.cpu_count()}-core machine compete with the workers; CPU µs per statement "
          "depends on them far less than the rate)")
    if args.live_rate:
        live = live_lag(args.redis, args.live_rate, args.live_seconds, args.batch, args.per_entry, logdir)
        print()
        print("| live load, 1 worker | produced/s | lag p50 | lag max | catch-up after load |")
        print("|---|---:|---:|---:|---:|")
        print(f"| {args.live_seconds:.0f} s | {live['rate']:,.0f} | {live['p50'] * 1000:.0f} ms | "
              f"{live['max'] * 1000:.0f} ms | {live['catch_up']:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GL cache benchmark: one generated 1M-row day, every way of getting it into Python side by side.

    .venv/bin/python bench/glcache/run.py [--rows 1000000] [--rounds 5] [--keep] [--out FILE]

Methods run interleaved, round after round, so load from other processes on the machine hits them alike;
the table shows medians (and minimums) and the ratio to the floor, the server's own
``COPY (…) TO '/dev/null'`` (superuser), which is what PostgreSQL spends producing the rows at all.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fasterdata.analyzers.glcache.cache import GLCache  # noqa: E402

DAY = "2024-03-15"
DBNAME = "fasterdata_glbench"
VERSION = "gl-bench-v1"


def dsn(host: str, port: int, user: str, dbname: str) -> str:
    return f"host={host} port={port} user={user} dbname={dbname}"


def prepare(admin: str, target: str, rows: int) -> None:
    """Create the bench database and its ledger unless an identical one is already there."""
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DBNAME,)).fetchone():
            conn.execute(f'CREATE DATABASE "{DBNAME}"')
    with psycopg.connect(target, autocommit=True) as conn:
        row = conn.execute("SELECT obj_description(to_regclass('gl_entries'))").fetchone()
        if row and row[0] == f"{VERSION} {rows}":
            return
        print(f"generating {rows:,} rows on {DAY} (+ {rows // 10:,} on other days) …", file=sys.stderr)
        conn.execute("DROP TABLE IF EXISTS gl_entries")
        conn.execute("""CREATE TABLE gl_entries (
            id bigint PRIMARY KEY, trx_date date NOT NULL, acc_debit varchar(12) NOT NULL,
            acc_credit varchar(12) NOT NULL, amount numeric(18,2) NOT NULL,
            t_1 text, t_2 text, t_3 text, t_4 text, t_5 text)""")
        conn.execute(
            """INSERT INTO gl_entries
               SELECT g, %s::date, (1000 + (g * 7919) %% 300)::text, (2000 + (g * 104729) %% 250)::text,
                      ((g * 2654435761) %% 10000000)::numeric / 100 - 20000,
                      'CC' || (g %% 40), CASE WHEN g %% 17 = 0 THEN NULL ELSE 'DEPT-' || (g %% 12) END,
                      'P' || (g %% 500), (ARRAY['EUR','USD','GBP','CHF'])[1 + g %% 4], 'batch ' || (g %% 1000)
                 FROM generate_series(1::bigint, %s) g""", (DAY, rows))
        conn.execute(
            """INSERT INTO gl_entries
               SELECT %s + g, %s::date + (g %% 2)::int * 2 - 1, (1000 + g %% 300)::text,
                      (2000 + g %% 250)::text,
                      (g %% 100000)::numeric / 100, 'CC1', 'DEPT-1', 'P1', 'EUR', 'x'
                 FROM generate_series(1::bigint, %s) g""", (rows, DAY, rows // 10))
        conn.execute("CREATE INDEX ON gl_entries (trx_date)")
        conn.execute("VACUUM ANALYZE gl_entries")
        conn.execute(f"COMMENT ON TABLE gl_entries IS '{VERSION} {rows}'")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5432)
    ap.add_argument("--user", default="postgres", help="a superuser (for COPY TO '/dev/null')")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the bench database for the next run")
    ap.add_argument("--skip-fetchall", action="store_true", help="leave out the slow SELECT + fetchall")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.md")))
    args = ap.parse_args()

    admin = dsn(args.host, args.port, args.user, "postgres")
    target = dsn(args.host, args.port, args.user, DBNAME)
    uri = f"postgresql://{args.user}@{args.host}:{args.port}/{DBNAME}"
    prepare(admin, target, args.rows)
    query = f"SELECT * FROM gl_entries WHERE trx_date = '{DAY}'"
    prefix = f"fdglbench{uuid.uuid4().hex[:6]}"
    cache = GLCache(dsn=target, redis=args.redis, prefix=prefix, memory_bytes=4 << 30)
    cache.info()
    loadavg_start = os.getloadavg()

    def floor() -> int:
        with psycopg.connect(target) as conn:
            return conn.execute(f"COPY ({query}) TO '/dev/null'").rowcount

    def fetchall() -> int:
        with psycopg.connect(target) as conn:
            return len(conn.execute(query).fetchall())

    def connectorx() -> Any:
        import connectorx as cx

        return cx.read_sql(uri, query, return_type="arrow")

    def adbc() -> Any:
        import adbc_driver_postgresql.dbapi as adbc_pg

        with adbc_pg.connect(uri) as conn, conn.cursor() as cur:
            cur.execute(query)
            return cur.fetch_arrow_table()

    def cold() -> Any:
        return cache.get_day(DAY)

    def before_cold() -> None:
        cache.flush()
        cache.invalidate(DAY)

    def redis_warm() -> Any:
        return cache.get_day(DAY)

    def before_redis_warm() -> None:
        cache.flush()
        cache.memory.clear()
        cache.store.read(DAY)  # make sure the base is there (the store after a cold read runs behind it)

    def memory_warm() -> Any:
        return cache.get_day(DAY)

    def journal() -> Any:
        return cache.journal(DAY)

    methods: list[tuple[str, Callable[[], Any], Callable[[], None] | None, int]] = [
        ("floor: COPY … TO '/dev/null' (server only)", floor, None, 1),
        ("psycopg SELECT + fetchall", fetchall, None, 1),
        ("ConnectorX (arrow)", connectorx, None, 1),
        ("ADBC PostgreSQL (arrow)", adbc, None, 1),
        ("ours: cold (PostgreSQL → Arrow)", cold, before_cold, 1),
        ("ours: Redis-warm", redis_warm, before_redis_warm, 1),
        ("ours: memory-warm", memory_warm, None, 50),
        ("journal totals (DuckDB on cached Arrow)", journal, None, 5),
    ]
    if args.skip_fetchall:
        methods = [m for m in methods if m[1] is not fetchall]
    samples: dict[str, list[float]] = {name: [] for name, *_ in methods}
    notes: dict[str, str] = {}
    warm_up = [cold, connectorx, adbc]
    for fn in warm_up:  # first-call imports and page-cache warm-up are not what we compare
        fn()
    cache.flush()
    for r in range(args.rounds):
        for name, fn, before, repeat in methods:
            for _ in range(repeat):
                if before:
                    before()
                seconds, result = timed(fn)
                samples[name].append(seconds)
            if name not in notes and hasattr(result, "schema"):
                amount = result.schema.field("amount").type if "amount" in result.schema.names else None
                notes[name] = f"{result.num_rows:,} rows; amount: {amount}"
            elif name not in notes and isinstance(result, int):
                notes[name] = f"{result:,} rows"
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    cache.flush()
    meta = cache.store.meta(DAY) or {}
    loadavg_end = os.getloadavg()
    cache.store.clear()
    cache.close()
    if not args.keep:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)')

    floor_ms = statistics.median(samples[methods[0][0]]) * 1000
    lines = [
        "# GL cache benchmark",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.node()} · {os.cpu_count()} cores · Python "
        f"{platform.python_version()} · PostgreSQL and Redis on localhost · {args.rounds} rounds, "
        "interleaved · "
        f"load average {loadavg_start[0]:.1f} → {loadavg_end[0]:.1f} (the machine is shared: read ratios, "
        "not absolutes)",
        "",
        f"One day of `gl_entries`: {args.rows:,} rows (id bigint, trx_date date, 2 × varchar account, "
        "amount numeric(18,2), t_1..t_5 text), table also holds other days. "
        f"Cached: {meta.get('arrow_bytes', 0) / 1e6:.1f} MB Arrow → {meta.get('bytes', 0) / 1e6:.1f} MB "
        "LZ4 IPC in Redis.",
        "",
        "| method | median ms | min ms | × floor | result |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, *_ in methods:
        values = samples[name]
        med, low = statistics.median(values) * 1000, min(values) * 1000
        lines.append(f"| {name} | {med:,.2f} | {low:,.2f} | {med / floor_ms:.2f} | {notes.get(name, '')} |")
    cold_ms = statistics.median(samples["ours: cold (PostgreSQL → Arrow)"]) * 1000
    cx_ms = statistics.median(samples["ConnectorX (arrow)"]) * 1000
    adbc_ms = statistics.median(samples["ADBC PostgreSQL (arrow)"]) * 1000
    rw_ms = statistics.median(samples["ours: Redis-warm"]) * 1000
    mw_ms = statistics.median(samples["ours: memory-warm"]) * 1000
    j_ms = statistics.median(samples["journal totals (DuckDB on cached Arrow)"]) * 1000
    checks = [
        (f"cold ≤ 1.2 × floor ({cold_ms / floor_ms:.2f}×)", cold_ms <= 1.2 * floor_ms),
        (f"cold faster than ConnectorX ({cold_ms:.0f} vs {cx_ms:.0f} ms)", cold_ms < cx_ms),
        (f"cold faster than ADBC ({cold_ms:.0f} vs {adbc_ms:.0f} ms)", cold_ms < adbc_ms),
        (f"Redis-warm ≤ 30 ms ({rw_ms:.1f} ms)", rw_ms <= 30),
        (f"memory-warm < 1 ms ({mw_ms:.3f} ms)", mw_ms < 1),
        (f"journal totals ≤ 150 ms ({j_ms:.1f} ms)", j_ms <= 150),
    ]
    lines += ["", "Targets:", ""]
    lines += [f"- {'✅' if ok else '❌'} {text}" for text, ok in checks]
    lines += ["", "Notes: *cold* is `get_day` with nothing cached — the COPY streamed off the socket and "
              "parsed into Arrow (the store to Redis continues behind the returned table); *Redis-warm* is "
              "`get_day` "
              "with an empty process memory (HGETALL + LZ4 IPC decode); *memory-warm* includes the one Redis "
              "round trip that checks the copy is current. ConnectorX and ADBC return NUMERIC as "
              "their own types (see the result column); ours is decimal128(18, 2).", ""]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End to end: statements through the real proxy, captured to the stream, analysed by a worker, and
compared with SQL over the database. Skipped while the proxy does not capture yet."""

from __future__ import annotations

import psycopg
import redis

from fasterdata.analyzers.rules import parse
from fasterdata.proxy.streamkeys import stream_name
from tests.kit.analysis import drain, make_worker
from tests.kit.polling import poll, wait_until
from tests.kit.processes import ProxyProcess
from tests.kit.streams import entries
from tests.kit.workload import RULES, NoEvents, Workload, dump, measured


def captures(r: redis.Redis, proxy: ProxyProcess) -> bool:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
    stream = stream_name(proxy.prefix)
    return bool(poll(lambda: r.exists(stream) and r.xlen(stream), timeout=10, interval=0.1))


def test_business_totals_through_the_proxy(r: redis.Redis, start_proxy, scratch_db: str) -> None:
    proxy = start_proxy()
    prefix = proxy.prefix
    try:
        assert captures(r, proxy), "the proxy put nothing on <prefix>:statements"
        with psycopg.connect(proxy.dsn(scratch_db), autocommit=True, application_name="shop") as conn:
            w = Workload(conn, NoEvents(), seed=11)  # type: ignore[arg-type]
            w.setup()
            w.run_many(150)
            truth = w.truth()
        wait_until(lambda: len(entries(r, stream_name(prefix))) >= w.statements, what="the sink to flush")
        total_before = len(entries(r, stream_name(prefix)))
        worker = make_worker(prefix, parse(RULES))
        drain(worker)
        got = measured(r, prefix)
        assert got == truth, f"\nredis: {dump(got)}\nsql:   {dump(truth)}\n({total_before} events)"
        # the same fingerprint for the simple and the extended form of one statement
        texts = {f["proto"]: worker.normalize(f["sql"]).fp for _, f in entries(r, stream_name(prefix))
                 if f.get("sql", "").startswith("UPDATE inventory SET qty = qty -")}
        assert len(set(texts.values())) == 1 and set(texts) == {"simple", "extended"}
    finally:
        assert proxy.stop() == 0, proxy.log()  # flushes its sink: nothing arrives after the clean-up
        for key in r.scan_iter(f"{prefix}:*"):
            r.delete(key)

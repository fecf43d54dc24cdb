"""End to end: statements through the real proxy, captured to the stream, analysed by a worker, and
compared with SQL over the database. Skipped while the proxy does not capture yet."""

from __future__ import annotations

import time

import psycopg
import pytest
import redis

from fasterdata.analyzers.rules import parse
from tests.analyzers.kit import drain, make_worker, wait_for
from tests.analyzers.workload import RULES, NoEvents, Workload, dump, measured
from tests.conftest import ProxyProcess, entries


def captures(r: redis.Redis, proxy: ProxyProcess) -> bool:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if r.exists(f"{proxy.prefix}:statements") and r.xlen(f"{proxy.prefix}:statements"):
            return True
        time.sleep(0.1)
    return False


def test_business_totals_through_the_proxy(r: redis.Redis, start_proxy, scratch_db: str) -> None:
    proxy = start_proxy()
    prefix = proxy.prefix
    try:
        if not captures(r, proxy):
            pytest.skip("the proxy does not capture statements into <prefix>:statements yet (proxy.session)")
        with psycopg.connect(proxy.dsn(scratch_db), autocommit=True, application_name="shop") as conn:
            w = Workload(conn, NoEvents(), seed=11)  # type: ignore[arg-type]
            w.setup()
            w.run_many(150)
            truth = w.truth()
        wait_for(lambda: len(entries(r, f"{prefix}:statements")) >= w.statements, what="the sink to flush")
        total_before = len(entries(r, f"{prefix}:statements"))
        worker = make_worker(prefix, parse(RULES))
        drain(worker)
        got = measured(r, prefix)
        assert got == truth, f"\nredis: {dump(got)}\nsql:   {dump(truth)}\n({total_before} events)"
        # the same fingerprint for the simple and the extended form of one statement
        texts = {f["proto"]: worker.normalize(f["sql"]).fp for _, f in entries(r, f"{prefix}:statements")
                 if f.get("sql", "").startswith("UPDATE inventory SET qty = qty -")}
        assert len(set(texts.values())) == 1 and set(texts) == {"simple", "extended"}
    finally:
        assert proxy.stop() == 0, proxy.log()  # flushes its sink: nothing arrives after the clean-up
        for key in r.scan_iter(f"{prefix}:*"):
            r.delete(key)

"""Proof: business totals equal what SQL over the database says, after a mixed workload — also when
a worker is SIGKILLed mid-run and another takes over."""

from __future__ import annotations

import signal
import time

import psycopg
import pytest
import redis

from analyzers.rules import parse
from tests.analyzers.kit import Events, drain, make_worker, wait_for
from tests.analyzers.workload import RULES, Workload, dump, measured
from tests.conftest import direct_dsn


@pytest.fixture
def workload(scratch_db: str, events: Events):
    conn = psycopg.connect(direct_dsn(scratch_db), autocommit=True)
    day = int(time.time()) // 86400 * 86400
    events.ts = (day + 43200) * 1_000_000  # noon UTC: the whole run is one calendar day
    w = Workload(conn, events, seed=7)
    w.setup()
    yield w
    conn.close()


def test_totals_equal_sql_after_a_mixed_workload(r: redis.Redis, prefix: str, workload: Workload) -> None:
    workload.run_many(300)
    worker = make_worker(prefix, parse(RULES))
    drain(worker)
    truth, got = workload.truth(), measured(r, prefix)
    assert got == truth, f"\nredis: {dump(got)}\nsql:   {dump(truth)}"
    # the workload really exercised what it claims to
    kinds = {f.get("txn") for _, f in r.xrange(f"{prefix}:statements")}
    assert {"committed", "rolled_back", "autocommit", "open"} <= kinds
    assert r.xlen(f"{prefix}:statements") > 1500


def test_totals_survive_a_sigkilled_worker(r: redis.Redis, prefix: str, workload: Workload, start_worker) -> None:
    workload.run_many(700)
    stream = f"{prefix}:statements"
    total = r.xlen(stream)
    a = start_worker("a", "--batch", "25", "--claim-idle", "1", rules=RULES)

    def progress() -> int:
        groups = {g["name"]: g for g in r.xinfo_groups(stream)} if r.exists(stream) else {}
        g = groups.get("analyzers")
        return int(g["entries-read"] or 0) - int(g["pending"]) if g else 0

    wait_for(lambda: progress() >= total // 3, what=f"worker a to process a third\n{a.log()}", interval=0.005)
    a.stop(signal.SIGKILL)
    acked_at_kill = progress()
    pending_of_a = {c["name"]: c["pending"] for c in r.xinfo_consumers(stream, "analyzers")}.get("a", 0)
    assert acked_at_kill < total, "worker a finished before it could be killed"
    print(f"killed a with {pending_of_a} pending, {acked_at_kill}/{total} acked")
    b = start_worker("b", "--batch", "100", "--claim-idle", "1", rules=RULES)
    wait_for(lambda: progress() == total, what=f"worker b to finish\n{b.log()}")
    truth, got = workload.truth(), measured(r, prefix)
    assert got == truth, f"\nkilled with {pending_of_a} pending\nredis: {dump(got)}\nsql:   {dump(truth)}"
    assert b.stop() == 0, b.log()
    if pending_of_a:
        assert "reclaimed" in b.log()

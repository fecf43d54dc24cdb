"""Proof: business totals equal what SQL over the database says, after a mixed workload — also when
a worker is SIGKILLed mid-run and another takes over; with one stream and with three shards."""

from __future__ import annotations

import signal
import time

import psycopg
import pytest
import redis

from fasterdata.analyzers import merged
from fasterdata.analyzers.keys import shard_keys
from fasterdata.analyzers.rules import parse
from tests.kit.analysis import drain, make_worker
from tests.kit.eventwriter import Events
from tests.kit.polling import wait_until
from tests.kit.services import direct_dsn
from tests.kit.streams import entries
from tests.kit.workload import RULES, Workload, dump, measured


@pytest.fixture(params=[1, 3], ids=["one-stream", "three-shards"])
def shards(request: pytest.FixtureRequest) -> int:
    return request.param


@pytest.fixture
def workload(scratch_db: str, r: redis.Redis, prefix: str, shards: int):
    conn = psycopg.connect(direct_dsn(scratch_db), autocommit=True)
    events = Events(r, prefix, shards)
    day = int(time.time()) // 86400 * 86400
    events.ts = (day + 43200) * 1_000_000  # noon UTC: the whole run is one calendar day
    w = Workload(conn, events, seed=7, sessions=1 if shards == 1 else 7)
    w.setup()
    yield w
    conn.close()


def test_totals_equal_sql_after_a_mixed_workload(r: redis.Redis, prefix: str, workload: Workload,
                                                 shards: int) -> None:
    workload.run_many(300)
    worker = make_worker(prefix, parse(RULES), stream_shards=shards)
    drain(worker)
    truth, got = workload.truth(), measured(r, prefix, shards)
    assert got == truth, f"\nredis: {dump(got)}\nsql:   {dump(truth)}"
    # the workload really exercised what it claims to
    streams = workload.events.streams
    kinds = {f.get("txn") for s in streams for _, f in entries(r, s)}
    assert {"committed", "rolled_back", "autocommit", "open"} <= kinds
    assert sum(r.xlen(s) for s in streams) > 1500
    if shards > 1:
        assert all(r.xlen(s) for s in streams)
        # distinct customers are unioned over shards, not added: the per-shard counts overlap
        ks = shard_keys(prefix, shards)
        day = next(iter(merged.biz_days(r, ks, "customers")))
        per_shard = sum(int(r.hget(k.biz("customers", day), "-") or 0) for k in ks)
        assert per_shard > int(got["customers"]["-"])


def test_totals_survive_a_sigkilled_worker(r: redis.Redis, prefix: str, workload: Workload, start_worker,
                                           shards: int) -> None:
    workload.run_many(700)
    streams = workload.events.streams
    total = sum(r.xlen(s) for s in streams)
    env = {"FASTERDATA_STREAM_SHARDS": str(shards)}
    a = start_worker("a", "--batch", "25", "--claim-idle", "1", rules=RULES, env=env)

    def progress() -> int:
        done = 0
        for stream in streams:
            groups = {g["name"]: g for g in r.xinfo_groups(stream)} if r.exists(stream) else {}
            g = groups.get("analyzers")
            done += int(g["entries-read"] or 0) - int(g["pending"]) if g else 0
        return done

    def pending(consumer: str) -> int:
        return sum({c["name"]: c["pending"] for c in r.xinfo_consumers(s, "analyzers")}.get(consumer, 0)
                   for s in streams)

    wait_until(lambda: progress() >= total // 3, what=f"worker a to process a third\n{a.log()}", interval=0.005)
    a.stop(signal.SIGKILL)
    acked_at_kill = progress()
    pending_of_a = pending("a")
    assert acked_at_kill < total, "worker a finished before it could be killed"
    print(f"killed a with {pending_of_a} pending, {acked_at_kill}/{total} acked")
    b = start_worker("b", "--batch", "100", "--claim-idle", "1", rules=RULES, env=env)
    wait_until(lambda: progress() == total, what=f"worker b to finish\n{b.log()}")
    truth, got = workload.truth(), measured(r, prefix, shards)
    assert got == truth, f"\nkilled with {pending_of_a} pending\nredis: {dump(got)}\nsql:   {dump(truth)}"
    assert b.stop() == 0, b.log()
    if pending_of_a:
        assert "reclaimed" in b.log()

"""Plans against the machine's PostgreSQL: a slow SELECT's sample explained with its parameters by a read-only
role, an UPDATE refused, a lock that outlasts statement_timeout recorded as a timeout (once), and a side
connection that is down recorded while the worker keeps analysing."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis

from fasterdata.analyzers import readmodel as rm
from fasterdata.analyzers.plans import refusal
from tests.kit.analysis import drain, make_worker
from tests.kit.databases import scratch_database
from tests.kit.eventwriter import Events
from tests.kit.polling import wait_until
from tests.kit.ports import free_port
from tests.kit.services import RUN_ID, direct_dsn

SELECT = "SELECT name FROM items WHERE id = $1"
UPDATE = "UPDATE items SET name = $1 WHERE id = $2"


@pytest.fixture
def reader() -> Iterator[tuple[str, str]]:
    """(database, DSN of a role that may only read `items` there)."""
    role = f"fdtest_ro_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(direct_dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        with scratch_database() as db:
            with psycopg.connect(direct_dsn(db), autocommit=True) as conn:
                conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
                conn.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 20000) g")
                conn.execute("ANALYZE items")
                conn.execute(f'GRANT SELECT ON items TO "{role}"')
            yield db, direct_dsn(db, user=role)
    finally:
        with psycopg.connect(direct_dsn(), autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def _fp(r: redis.Redis, prefix: str, text: str) -> str:
    rows = rm.top_statements(r, rm.keys_for(prefix), limit=50)["rows"]
    return next(row["fp"] for row in rows if row["text"] == text)


def test_statement_kinds_explained() -> None:
    assert refusal("select", "SELECT 1") is None and refusal("select", "WITH a AS (SELECT 1) SELECT * FROM a") is None
    assert "UPDATE is not explained" in refusal("update", UPDATE)
    assert "writes" in refusal("select", "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d")
    assert "writes" in refusal("select", "SELECT * INTO t2 FROM t")
    assert refusal("ddl", "DROP TABLE t") is not None and refusal("utility", "VACUUM") is not None


def test_a_slow_select_is_explained_with_its_parameters_and_an_update_is_refused(
        r: redis.Redis, prefix: str, events: Events, reader: tuple[str, str]) -> None:
    _, dsn = reader
    with events:
        events.stmt(SELECT, [4242], tag="SELECT", rows=1, dur_us=250_000)
        events.stmt(SELECT, [7], tag="SELECT", rows=1, dur_us=900)
        events.stmt(UPDATE, ["renamed", 5], tag="UPDATE", rows=1, dur_us=300_000)
        events.stmt("SELECT count(*) FROM items", tag="SELECT", rows=1, dur_us=2_000)  # fast: not explained
    worker = make_worker(prefix, explain_dsn=dsn, explain_min_ms=100, explain_per_minute=600)
    try:
        drain(worker)
        ks = rm.keys_for(prefix)
        select_fp, update_fp = _fp(r, prefix, SELECT), _fp(r, prefix, UPDATE)
        plan = wait_until(lambda: (p := rm.plan(r, ks, select_fp)) and p["status"] == "ok" and p,
                          "the SELECT's plan")
        assert plan["params"] == [4242] and plan["sql"] == SELECT and plan["dur_us"] == 250_000
        root = plan["plan"][0]["Plan"]
        assert root["Node Type"] == "Index Scan" and root["Relation Name"] == "items"
        assert "4242" in root["Index Cond"] and plan["explain"] == "EXPLAIN (FORMAT JSON)"
        refused = wait_until(lambda: rm.plan(r, ks, update_fp), "the UPDATE's record")
        assert refused["status"] == "refused" and "UPDATE is not explained" in refused["reason"]
        assert "plan" not in refused
        assert rm.plan(r, ks, _fp(r, prefix, "SELECT count(*) FROM items")) is None
        assert rm.statement(r, ks, select_fp)["plan"]["status"] == "ok"
        assert worker.planner.counts == {"ok": 1, "refused": 1, "timeout": 0, "error": 0}

        with events:  # the same statements again, no slower: nothing is explained twice
            events.stmt(SELECT, [4243], tag="SELECT", rows=1, dur_us=260_000)
            events.stmt(UPDATE, ["again", 6], tag="UPDATE", rows=1, dur_us=300_000)
        drain(worker)
        assert not worker.planner.offer(ks[0], select_fp, "select", 260_000, ("0-1", {"sql": SELECT}))
        assert worker.planner.counts == {"ok": 1, "refused": 1, "timeout": 0, "error": 0}
    finally:
        worker.close()
    with psycopg.connect(reader[1]) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("UPDATE items SET name = 'x' WHERE id = 1")  # the role could not have written anyway


def test_a_timeout_is_recorded_once(r: redis.Redis, prefix: str, events: Events,
                                    reader: tuple[str, str]) -> None:
    db, dsn = reader
    with contextlib.ExitStack() as stack:
        locker = stack.enter_context(psycopg.connect(direct_dsn(db)))
        locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")  # EXPLAIN waits for it
        with events:
            events.stmt(SELECT, [1], tag="SELECT", rows=1, dur_us=500_000)
        worker = make_worker(prefix, explain_dsn=dsn, explain_min_ms=100, explain_timeout_ms=200,
                             explain_per_minute=600)
        stack.callback(worker.close)
        drain(worker)
        ks = rm.keys_for(prefix)
        fp = _fp(r, prefix, SELECT)
        got = wait_until(lambda: rm.plan(r, ks, fp), "the timeout's record")
        assert got["status"] == "timeout" and "200 ms" in got["reason"]
        with events:
            events.stmt(SELECT, [2], tag="SELECT", rows=1, dur_us=5_000_000)  # slower still: not in a loop
        drain(worker)
        assert worker.planner.counts["timeout"] == 1 and not worker.planner.waiting


def test_a_side_connection_that_is_down_is_recorded_and_analysis_goes_on(
        r: redis.Redis, prefix: str, events: Events) -> None:
    down = f"host=127.0.0.1 port={free_port()} dbname=postgres user=postgres connect_timeout=2"
    with events:
        events.stmt(SELECT, [1], tag="SELECT", rows=1, dur_us=400_000)
    worker = make_worker(prefix, explain_dsn=down, explain_min_ms=100, explain_per_minute=600)
    try:
        drain(worker)
        ks = rm.keys_for(prefix)
        fp = _fp(r, prefix, SELECT)
        got = wait_until(lambda: rm.plan(r, ks, fp), "the failure's record")
        assert got["status"] == "error" and "side connection unavailable" in got["reason"]
        assert json.loads(r.hget(ks[0].plan(fp), "params")) == [1]
        with events:
            for i in range(50):
                events.stmt(SELECT, [i], tag="SELECT", rows=1, dur_us=400_000 + i)
        drain(worker)
        assert rm.top_statements(r, ks)["rows"][0]["calls"] == 51
        assert worker.planner.counts["error"] == 1
    finally:
        worker.close()


def test_a_plan_is_redone_only_when_latency_regresses_and_not_too_often() -> None:
    from fasterdata.analyzers.plans import REFRESH_SECONDS, RETRY_SECONDS, Planner
    now = [1000.0]
    planner = Planner(None, "host=127.0.0.1 port=1", min_ms=100, regress=2.0, clock=lambda: now[0])
    try:
        assert not planner.wanted("a", 99_000)  # not slow
        assert planner.wanted("a", 200_000)
        planner.cache["a"] = ("ok", 200_000.0, now[0])
        assert not planner.wanted("a", 390_000)  # slower, but less than twice as slow
        assert not planner.wanted("a", 500_000)  # twice as slow, but explained a moment ago
        now[0] += REFRESH_SECONDS
        assert planner.wanted("a", 500_000) and not planner.wanted("a", 390_000)
        planner.cache["b"] = ("refused", 500_000.0, now[0])
        planner.cache["c"] = ("timeout", 500_000.0, now[0])
        now[0] += RETRY_SECONDS - 1
        assert not planner.wanted("b", 10**9) and not planner.wanted("c", 10**9)
        now[0] += 1
        assert not planner.wanted("b", 10**9) and planner.wanted("c", 10**9)  # a refusal is final
    finally:
        planner.close()

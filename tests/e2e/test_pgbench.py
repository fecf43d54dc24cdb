"""pgbench through the real proxy: exactly one event per executed statement, with the right tag, rows,
parameters and transaction outcome, in both of pgbench's query modes.

pgbench's numbers and the server's table contents are the truth; the stream must agree with both.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import psycopg
import pytest
import redis

from fasterdata.proxy.events import ALWAYS_STMT, COMMITTED, SCHEMA_VERSION
from tests.kit.metrics import settle
from tests.kit.pgbench import TPCB_KINDS, TPCB_TAGS, pgbench, tpcb_kind
from tests.kit.processes import StartProxy
from tests.kit.services import PG_USER, direct_dsn
from tests.kit.streams import statements

# Bound parameters of each TPC-B statement in prepared mode.
TPCB_PARAMS = {"BEGIN": 0, "UPDATE pgbench_accounts": 2, "SELECT abalance": 1, "UPDATE pgbench_tellers": 2,
               "UPDATE pgbench_branches": 2, "INSERT INTO pgbench_history": 4, "END": 0}


@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_pgbench_one_event_per_statement(start_proxy: StartProxy, rds: redis.Redis, bench_db: str, app_name: str,
                                         mode: str) -> None:
    proxy = start_proxy()
    per_client, clients = 30, 2
    result = pgbench(proxy.port, bench_db, app_name, "-M", mode, "-t", str(per_client), "-c", str(clients))
    assert (result.processed, result.failed) == (per_client * clients, 0), result.output
    settle(proxy)
    events = statements(rds, proxy.prefix, app=app_name)

    # Every event keeps the contract.
    for ev in events:
        assert ev.keys() >= ALWAYS_STMT, ev
        assert (ev["v"], ev["user"], ev["db"]) == (SCHEMA_VERSION, PG_USER, bench_db), ev
        assert int(ev["dur_us"]) >= 0 and int(ev["ts"]) > 0

    # Exactly N x clients events per statement of the script.
    script = [ev for ev in events if tpcb_kind(ev["sql"])]
    assert Counter(tpcb_kind(ev["sql"]) for ev in script) == {k: per_client * clients for k in TPCB_KINDS}
    for ev in script:
        kind = tpcb_kind(ev["sql"])
        assert kind is not None
        assert ev["tag"] == TPCB_TAGS[kind], ev
        assert ev["txn"] == COMMITTED, ev  # BEGIN … END: every statement of the script commits
        assert "err" not in ev, ev
        assert ev.get("rows") == (None if kind in ("BEGIN", "END") else "1"), ev
        if mode == "simple":
            assert ev["proto"] == "simple" and "params" not in ev and "stmt" not in ev, ev
        else:
            assert ev["proto"] == "extended" and ev["stmt"].startswith("P_"), ev
            params = json.loads(ev.get("params", "[]"))
            assert len(params) == TPCB_PARAMS[kind], ev
            assert all(p is not None for p in params), ev

    # Each benchmark session ran the script N times in order, one transaction number per run.
    sessions: dict[str, list[dict[str, str]]] = defaultdict(list)
    for ev in script:
        sessions[ev["sid"]].append(ev)
    assert len(sessions) == clients
    for sid, evs in sessions.items():
        kinds = [tpcb_kind(ev["sql"]) for ev in evs]
        assert kinds == list(TPCB_KINDS) * per_client, sid
        txids = [int(ev["txid"]) for ev in evs]
        assert len(set(txids)) == per_client, sid
        for i in range(per_client):
            assert len(set(txids[i * 7:(i + 1) * 7])) == 1, sid
        assert txids == sorted(txids), sid

    # pgbench's own statements (table checks, vacuum, truncate) ran on another session, in autocommit.
    setup = [ev for ev in events if not tpcb_kind(ev["sql"])]
    assert setup, "pgbench's setup statements were not captured"
    assert {ev["sid"] for ev in setup}.isdisjoint(sessions)
    assert {ev["txn"] for ev in setup} == {"autocommit"}
    assert any(ev["sql"].startswith("truncate pgbench_history") for ev in setup)

    # The server agrees: the history table holds one row per INSERT event (it was truncated first).
    with psycopg.connect(direct_dsn(bench_db)) as conn:
        history = conn.execute("SELECT count(*) FROM pgbench_history").fetchone()
    assert history is not None and history[0] == per_client * clients

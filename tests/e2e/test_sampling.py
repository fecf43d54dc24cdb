"""sample_rate through the real proxy: 0 captures nothing (and still forwards everything), 1.0 captures
every statement, and anything between captures whole transactions or none of them.
"""

from __future__ import annotations

from collections import defaultdict

import psycopg
import pytest
import redis

from tests.kit.metrics import settle, value
from tests.kit.processes import StartProxy
from tests.kit.services import direct_dsn
from tests.kit.streams import statements


@pytest.mark.parametrize(("rate", "expected"), [("0", 0), ("1.0", 7)])
def test_sample_rate_none_or_all(start_proxy: StartProxy, rds: redis.Redis, scratch_db: str, app_name: str,
                                 rate: str, expected: int) -> None:
    proxy = start_proxy(env={"FASTERDATA_SAMPLE_RATE": rate})
    with psycopg.connect(proxy.dsn(scratch_db), autocommit=True, application_name=app_name) as conn:
        conn.execute("CREATE TABLE s (id int)")
        conn.execute("INSERT INTO s VALUES (%s)", (1,))
        with conn.transaction():
            conn.execute("UPDATE s SET id = 2")
            assert conn.execute("SELECT id FROM s").fetchall() == [(2,)]
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
    samples = settle(proxy)
    with psycopg.connect(direct_dsn(scratch_db)) as conn:  # the traffic went through either way
        assert conn.execute("SELECT id FROM s").fetchall() == [(2,)]

    events = statements(rds, proxy.prefix)
    assert len(events) == expected
    assert {ev["app"] for ev in events} <= {app_name}
    captured = sum(v for (name, _labels), v in samples.items() if name == "fasterdata_proxy_statements_total")
    assert captured == expected
    assert value(samples, "fasterdata_sink_sent_total") == expected


def test_partial_sampling_keeps_transactions_whole(start_proxy: StartProxy, rds: redis.Redis, scratch_db: str,
                                                   app_name: str) -> None:
    proxy = start_proxy(env={"FASTERDATA_SAMPLE_RATE": "0.5"})
    runs = 60
    with psycopg.connect(proxy.dsn(scratch_db), autocommit=True, application_name=app_name) as conn:
        conn.execute("CREATE TABLE s (id int)")
        for i in range(runs):
            with conn.transaction():
                conn.execute("INSERT INTO s VALUES (%s)", (i,))
                conn.execute("UPDATE s SET id = id + 1000 WHERE id = %s", (i,))
    settle(proxy)
    by_txn: dict[str, list[str]] = defaultdict(list)
    for ev in statements(rds, proxy.prefix, app=app_name):
        by_txn[ev["txid"]].append(ev["tag"])
    explicit = {txid: tags for txid, tags in by_txn.items() if tags[0] == "BEGIN"}
    # Half of 60 on average; all or none of them has odds 2 x 0.5^60: never.
    assert 0 < len(explicit) < runs
    for tags in explicit.values():
        assert tags == ["BEGIN", "INSERT", "UPDATE", "COMMIT"]

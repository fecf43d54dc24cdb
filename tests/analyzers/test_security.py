"""Each security rule fires on its example and stays silent on a benign twin."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from tests.kit.analysis import drain, make_worker, rules_file
from tests.kit.eventwriter import Events

SECURITY = {
    "ddl_allowed_apps": ["migrations"],
    "sensitive_tables": ["payment_cards"],
    "max_rows": 1000,
    "new_fingerprint": {"enabled": False},
    "dedup_seconds": 60,
}

S = {"proto": "simple"}
CASES: list[tuple[str, str, dict[str, Any], str, dict[str, Any]]] = [
    ("sqli_tautology", "SELECT * FROM users WHERE name = 'x' OR 1=1", S,
     "SELECT * FROM users WHERE name = 'x' OR id = 1", S),
    ("sqli_tautology", "SELECT * FROM users WHERE name = '' OR 'a'='a'", {"proto": "extended"},  # a Parse's text
     "SELECT * FROM users WHERE name = $1 OR 'a' = $2", {"proto": "extended", "params": ["", "a"]}),  # bound
    ("sqli_union", "SELECT name FROM products WHERE id = 1 UNION SELECT usename FROM pg_user", S,
     "SELECT name FROM products UNION SELECT name FROM archived_products", S),
    ("sqli_stacked", "SELECT * FROM users WHERE id = 1; DROP TABLE users", S,
     "SELECT * FROM users WHERE note = 'a; DROP TABLE users'", S),
    ("sqli_comment", "SELECT * FROM users WHERE name = 'admin'--' AND password = 'x'", S,
     "SELECT * FROM users WHERE name = 'admin--' AND password = 'x'", S),
    ("sqli_time", "SELECT * FROM users WHERE id = 1 AND 1=(SELECT 1 FROM pg_sleep(5))", S,
     "SELECT * FROM users WHERE id = 1 AND sleep_minutes = 5", S),
    ("ddl", "DROP TABLE orders", {"app": "web"}, "DROP TABLE orders", {"app": "migrations"}),
    ("role_change", "ALTER ROLE app SUPERUSER", {"app": "web"}, "ALTER ROLE app SUPERUSER", {"app": "migrations"}),
    ("role_change", "GRANT ALL ON orders TO public", {"app": "web"}, "SELECT 1", {"app": "web"}),
    ("sensitive_read", "SELECT number FROM payment_cards WHERE customer_id = $1", {"params": [5]},
     "SELECT total FROM orders WHERE customer_id = $1", {"params": [5]}),
    ("unbounded_write", "DELETE FROM orders", {"tag": "DELETE", "rows": 5000},
     "DELETE FROM orders WHERE id = $1", {"tag": "DELETE", "rows": 1, "params": [1]}),
    ("unbounded_write", "UPDATE orders SET total = 0", {"tag": "UPDATE", "rows": 5000},
     "UPDATE orders SET total = 0 WHERE id = 4", {"tag": "UPDATE", "rows": 1}),
    ("large_read", "SELECT * FROM orders WHERE region = $1", {"params": ["eu"], "tag": "SELECT", "rows": 50000},
     "SELECT * FROM orders WHERE region = $1", {"params": ["eu"], "tag": "SELECT", "rows": 50}),
]


def alerts(r: redis.Redis, prefix: str) -> list[dict[str, str]]:
    return [f for _, f in r.xrange(f"{prefix}:alerts")]


def emit(events: Events, sql: str, kw: dict[str, Any]) -> None:
    kw = dict(kw)
    params = kw.pop("params", None)
    events.stmt(sql, params, **kw)


@pytest.mark.parametrize(("rule", "attack", "akw", "benign", "bkw"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_fires_on_its_example(r: redis.Redis, prefix: str, events: Events, rule: str, attack: str,
                                   akw: dict, benign: str, bkw: dict) -> None:
    emit(events, attack, akw)
    drain(make_worker(prefix, rules_file(security=SECURITY)))
    found = [a for a in alerts(r, prefix) if a["rule"] == rule]
    assert len(found) == 1, alerts(r, prefix)
    a = found[0]
    assert a["kind"] == "security" and a["severity"] and a["sid"] == "s1" and a["fp"] and a["evidence"]
    assert r.hget(f"{prefix}:alerts:counts", rule) == "1"


@pytest.mark.parametrize(("rule", "attack", "akw", "benign", "bkw"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_is_silent_on_the_benign_twin(r: redis.Redis, prefix: str, events: Events, rule: str, attack: str,
                                           akw: dict, benign: str, bkw: dict) -> None:
    emit(events, benign, bkw)
    drain(make_worker(prefix, rules_file(security=SECURITY)))
    assert alerts(r, prefix) == []


def test_stacked_statements_split_by_the_proxy(r: redis.Redis, prefix: str, events: Events) -> None:
    """`…WHERE id = 1; DROP TABLE users` arrives as two events, marked parts 1/2 and 2/2 of one Query."""
    t = events.ts
    events.stmt("SELECT * FROM users WHERE id = 1", tag="SELECT", rows=1, ts=t, dur_us=300, txid=7, part="1/2")
    events.stmt("DROP TABLE users", tag="DROP TABLE", ts=t + 300, dur_us=900, txid=7, app="migrations",
                part="2/2")
    # benign twins: separate Queries (no part), and a multi-statement Query of two reads
    events.stmt("SELECT * FROM users WHERE id = 1", tag="SELECT", rows=1, ts=t + 5000, dur_us=300, txid=8)
    events.stmt("DROP TABLE users", tag="DROP TABLE", ts=t + 5300, dur_us=900, txid=9, app="migrations")
    events.stmt("SELECT * FROM users WHERE id = 1", tag="SELECT", rows=1, ts=t + 20000, dur_us=300, txid=10,
                part="1/2")
    events.stmt("SELECT count(*) FROM users", tag="SELECT", rows=1, ts=t + 20300, dur_us=300, txid=10,
                part="2/2")
    drain(make_worker(prefix, rules_file(security=SECURITY)))
    found = [(a["rule"], a["evidence"]) for a in alerts(r, prefix)]
    assert found == [("sqli_stacked", "SELECT * FROM users WHERE id = $1; DROP TABLE users")]


def test_findings_carry_sqlcommenter_labels_and_are_deduplicated(r: redis.Redis, prefix: str,
                                                                 events: Events) -> None:
    sql = ("SELECT * FROM users WHERE name = 'x' OR 1=1 "
           "/*route='%2Flogin',traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/")
    with events:
        for _ in range(5):
            events.stmt(sql, proto="simple", tag="SELECT", rows=3)
    w = make_worker(prefix, rules_file(security=SECURITY))
    drain(w)
    found = alerts(r, prefix)
    assert len(found) == 1  # one alert per dedup window…
    assert r.hget(f"{prefix}:alerts:counts", "sqli_tautology") == "5"  # …but every finding counted
    assert w.counters.findings[("sqli_tautology", "high")] == 5
    assert found[0]["route"] == "/login"
    assert found[0]["traceparent"].startswith("00-4bf92f")
    assert json.loads(found[0]["comment"])["route"] == "/login"
    assert "OR 1=1" in found[0]["evidence"]


def test_new_fingerprint_per_application_after_learning(r: redis.Redis, prefix: str, events: Events) -> None:
    policy = {**SECURITY, "new_fingerprint": {"enabled": True, "learn_seconds": 600}}
    t0 = events.ts
    events.stmt("SELECT * FROM orders WHERE id = $1", [1], app="billing", ts=t0)  # learning: silent
    w = make_worker(prefix, rules_file(security=policy))
    drain(w)
    assert alerts(r, prefix) == []
    later = t0 + 3600 * 1_000_000
    events.stmt("SELECT * FROM orders WHERE id = $1", [2], app="billing", ts=later)  # known shape
    events.stmt("SELECT * FROM orders WHERE id = 3", app="billing", ts=later)  # same shape, simple
    events.stmt("SELECT * FROM orders WHERE id = $1", [2], app="reports", ts=t0 + 1)  # new app: learning
    events.stmt("SELECT email FROM customers WHERE id = $1", [9], app="billing", ts=later + 1)  # new shape!
    assert w.counters.findings == {}
    w2 = make_worker(prefix, rules_file(security=policy), consumer="w2")
    drain(w2)  # another worker: shared state
    found = alerts(r, prefix)
    assert [(a["rule"], a["app"]) for a in found] == [("new_fingerprint", "billing")]
    assert "customers" in found[0]["text"]
    # fasterdata_security_findings_total sees it as the alert counts do: once, the one that fired
    assert w2.counters.findings == {("new_fingerprint", "info"): 1}
    assert r.hget(f"{prefix}:alerts:counts", "new_fingerprint") == "1"


def test_checks_decided_once_per_fingerprint_still_follow_app_and_rows(r: redis.Redis, prefix: str,
                                                                       events: Events) -> None:
    """The worker asks once per fingerprint and application whether a check can fire: a later application
    of the same fingerprint, or a later statement with more rows, must still be judged on its own."""
    with events:
        events.stmt("DROP TABLE orders", app="migrations")
        events.stmt("DROP TABLE orders", app="web")
        events.stmt("DROP TABLE orders", app="migrations")
        for rows in (5, 10, 5000, 7):
            events.stmt("SELECT total FROM orders WHERE region = $1", ["eu"], tag="SELECT", rows=rows, app="web")
    drain(make_worker(prefix, rules_file(security=SECURITY)))
    found = sorted((a["rule"], a["app"], a["evidence"]) for a in alerts(r, prefix))
    assert found == [("ddl", "web", "DROP TABLE orders"), ("large_read", "web", "5000 rows > 1000")]


def test_evidence_counts_one_row_in_the_singular(r: redis.Redis, prefix: str, events: Events) -> None:
    events.stmt("DELETE FROM orders", tag="DELETE", rows=1)
    events.stmt("UPDATE orders SET total = 0", tag="UPDATE", rows=2)
    drain(make_worker(prefix, rules_file(security=SECURITY)))
    assert [a["evidence"] for a in alerts(r, prefix)] == ["DELETE of orders without WHERE (1 row)",
                                                          "UPDATE of orders without WHERE (2 rows)"]

"""SIGHUP makes a running worker read its rules file again: new rules count from then on, kept rules keep
their totals, removed rules stop, and a file that does not load leaves the rules in force and the worker up."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import pytest
import redis

from fasterdata.proxy.streamkeys import stream_name
from tests.analyzers.kit import samples
from tests.kit.analysis import RULES, biz, drain, group_done, make_worker, rules_file
from tests.kit.eventwriter import Events
from tests.kit.metrics import http_get
from tests.kit.polling import wait_until

INSERT = "INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4)"
BIG = {"name": "big_orders", "table": "orders", "operation": "insert", "value": "total", "aggregate": "count"}


def orders(events: Events, ids: range) -> None:
    with events:
        for i in ids:
            events.stmt(INSERT, [i, i, "eu", "10.00"], tag="INSERT", rows=1)


def sighup(w, path: Path, text: str, logged: str) -> None:
    """Rewrite the worker's rules file, SIGHUP it, and wait for its answer in the log."""
    path.write_text(text)
    w.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: logged in w.log(), what=f"{logged!r} in the log\n{w.log()}")


def test_sighup_reloads_the_rules(r: redis.Redis, prefix: str, events: Events, start_worker,
                                  tmp_path: Path) -> None:
    rules = json.loads(json.dumps(RULES))
    w = start_worker("h1", rules=rules)
    path = tmp_path / "rules-h1.json"
    stream = stream_name(prefix)
    orders(events, range(3))
    wait_until(lambda: r.exists(stream) and group_done(r, [stream]), what=f"first batch\n{w.log()}")
    unit = biz(r, prefix, "orders_placed")["-"] // 3  # sums are stored in units of 10^-scale

    rules["rules"] = [rule for rule in rules["rules"] if rule["name"] != "order_count"] + [BIG]
    sighup(w, path, json.dumps(rules), "added: big_orders; removed: order_count; changed: none")
    orders(events, range(3, 5))
    wait_until(lambda: group_done(r, [stream]) and biz(r, prefix, "orders_placed") == {"-": 5 * unit},
               what=f"second batch\n{w.log()}")
    assert biz(r, prefix, "big_orders", aggregate="count") == {"-": 2}  # from the reload on
    assert biz(r, prefix, "order_count", aggregate="count") == {"-": 3}  # removed: counts no more
    metrics = samples(http_get(w.metrics_port)[1])
    assert metrics[("fasterdata_business_orders_placed", ())] == 5  # the day's total, from Redis
    assert metrics[("fasterdata_business_orders_placed_processed_total", ())] == 5  # kept rule: its tally went on
    assert metrics[("fasterdata_business_big_orders", ())] == 2
    assert metrics[("fasterdata_business_big_orders_processed_total", ())] == 2
    assert not any(name.startswith("fasterdata_business_order_count") for name, _ in metrics)

    sighup(w, path, "rules:\n  - name: broken\n    table: orders\n    operation: upsert\n", "not loaded")
    assert "rule 'broken'" in w.log() and "operation" in w.log()
    orders(events, range(5, 6))
    wait_until(lambda: group_done(r, [stream]) and biz(r, prefix, "orders_placed") == {"-": 6 * unit},
               what=f"third batch\n{w.log()}")
    assert biz(r, prefix, "big_orders", aggregate="count") == {"-": 3}  # the rules in force stayed
    assert w.proc.poll() is None
    assert w.stop(signal.SIGTERM) == 0, w.log()


@pytest.mark.parametrize(("section", "change", "said"), [
    ("anomaly", {"enabled": False, "z": 6.0}, "changed: anomaly settings"),
    ("security", {"new_fingerprint": {"enabled": False}, "max_rows": 5}, "changed: security policy"),
])
def test_the_reload_summary_names_changed_settings(r: redis.Redis, prefix: str, events: Events, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture, section: str, change: dict,
                                                   said: str) -> None:
    """Anomaly and security settings are part of the rules file: a reload that changes them says so."""
    caplog.set_level(logging.INFO, logger="fasterdata.analyze")
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(RULES))
    w = make_worker(prefix, rules_file(), rules_path=str(path))
    changed = json.loads(json.dumps(RULES))
    changed[section] = change
    path.write_text(json.dumps(changed))
    assert w.reload_rules()
    [line] = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("SIGHUP: rules reloaded")]
    assert line.endswith(f"(added: none; removed: none; {said})"), line
    assert w.ruleset.file == rules_file(**{section: change})
    events.stmt(INSERT, [1, 1, "eu", "10.00"], tag="INSERT", rows=1)
    drain(w)  # the new rules in force
    assert biz(r, prefix, "orders_placed") == {"-": 10**6}

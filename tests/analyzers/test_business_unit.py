"""`Business` without Redis: statements in, matches and a batch's writes out; this worker's tallies."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from fasterdata.analyzers.atomic import Writes
from fasterdata.analyzers.business import OTHER, Business, Match, label_values
from fasterdata.analyzers.business_metrics import WorkerTallies
from fasterdata.analyzers.fingerprint import Normalizer
from fasterdata.analyzers.keys import Keys
from fasterdata.analyzers.rules import parse
from fasterdata.analyzers.shape import ShapeCache
from tests.kit.analysis import RULES

KEYS = Keys("unit")
TS = 1_700_000_000_000_000  # 2023-11-14 UTC
DAY = "2023-11-14"
INSERT = "INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4)"


class Feed:
    def __init__(self, rules: list[dict[str, Any]] | None = None) -> None:
        self.rules = parse({"rules": rules if rules is not None else RULES["rules"]}).rules
        self.business = Business(self.rules, KEYS, events_maxlen=500)
        self.normalize = Normalizer(1000)
        self.shapes = ShapeCache()

    def matches(self, sql: str, params: list[Any] | None = None, rows: int = 1, **ev: str) -> list[Match]:
        norm = self.normalize(sql)
        shape = self.shapes.get(norm.fp, norm.text)
        rules = self.business.candidates(shape)
        event = {"sid": "s1", "txid": "1", "app": "shop", "rows": str(rows), **ev}
        if params is not None:
            event["params"] = json.dumps(params)
        return self.business.evaluate(event, norm, shape, rules or [])

    def write(self, writes: Writes, sql: str, params: list[Any] | None = None, rows: int = 1) -> list[Match]:
        found = self.matches(sql, params, rows)
        self.business.write(writes, found, {"sid": "s1", "txid": "1", "app": "shop"}, self.normalize(sql), TS)
        return found


def by_rule(matches: list[Match]) -> dict[str, list[tuple[Any, str, int]]]:
    out: dict[str, list[tuple[Any, str, int]]] = {}
    for m in matches:
        out.setdefault(m.rule.name, []).append((m.value, m.labels, m.count))
    return out


def test_values_from_literals_and_parameters_alike() -> None:
    feed = Feed()
    bound = by_rule(feed.matches(INSERT, [1, 10, "eu", "19.99"]))
    literal = by_rule(feed.matches("INSERT INTO orders (id, customer_id, region, total) VALUES (1, 10, 'eu', 19.99)"))
    assert bound == literal
    assert bound["sales"] == [(Decimal("19.99"), "region=eu", 1)]
    assert bound["customers"] == [("10", "-", 1)]
    assert bound["orders_placed"] == [(Decimal(1), "-", 1)]


def test_multi_row_values_give_a_match_a_row() -> None:
    feed = Feed()
    got = by_rule(feed.matches("INSERT INTO orders (id, customer_id, region, total) VALUES "
                               "(1, 10, 'eu', 1.00), (2, 11, 'us', 2.50), (3, 10, 'eu', 0.01)", rows=3))
    assert got["sales"] == [(Decimal("1.00"), "region=eu", 1), (Decimal("2.50"), "region=us", 1),
                            (Decimal("0.01"), "region=eu", 1)]
    assert [v for v, _, _ in got["customers"]] == ["10", "11", "10"]


def test_the_batch_writes_aggregate_per_day_and_label() -> None:
    feed, writes = Feed(), Writes()
    for i, (customer, region, total) in enumerate([(10, "eu", "1.25"), (11, "eu", "2.50"), (10, "us", "7")]):
        feed.write(writes, INSERT, [i, customer, region, total])
    sales = KEYS.biz("sales", DAY)
    assert writes.incr[(sales, "region=eu")] == 375 and writes.incr[(sales, "region=us")] == 700  # scale 2
    assert writes.incr[(KEYS.biz("order_count", DAY), "-")] == 3
    assert writes.extremes[("MAX", KEYS.biz("biggest", DAY), "-")] == Decimal("7")
    assert writes.extremes[("MIN", KEYS.biz("smallest", DAY), "-")] == Decimal("1.25")
    assert writes.distincts[(KEYS.biz_set("customers", DAY, "-"), KEYS.biz("customers", DAY), "-")] == {"10", "11"}
    assert (KEYS.biz_days("sales"), DAY) in writes.sadd
    events = [item for item in writes.ordered if item == "B"]
    assert len(events) == 3  # one business-event op a statement, its matches inside


def test_work_without_values_counts_rows_only() -> None:
    feed = Feed()
    got = feed.matches("INSERT INTO orders (id, customer_id, region, total) SELECT * FROM staged", rows=40)
    sales = [m for m in got if m.rule.name == "sales"]
    assert [(m.value, m.count, m.rows_only) for m in sales] == [(None, 40, True)]
    assert by_rule(got)["orders_placed"] == [(Decimal(40), "-", 1)]
    assert by_rule(got)["order_count"] == [(Decimal(40), "-", 40)]


def test_skipped_rows_of_on_conflict_cannot_be_told_apart() -> None:
    feed = Feed()
    got = feed.matches("INSERT INTO orders (id, customer_id, region, total) VALUES (1, 10, 'eu', 1), "
                       "(2, 11, 'eu', 2) ON CONFLICT DO NOTHING", rows=1)
    assert {m.rows_only for m in got if m.rule.name == "sales"} == {True}
    assert feed.matches("INSERT INTO orders (id, customer_id, region, total) VALUES (1, 10, 'eu', 1) "
                        "ON CONFLICT DO NOTHING", rows=0) == []


def test_deltas_filters_and_deletes() -> None:
    feed = Feed()
    assert by_rule(feed.matches("UPDATE inventory SET qty = qty - $1 WHERE sku = $2", [3, "A"], rows=2)) == {
        "stock_moves": [(Decimal(-6), "sku=A", 1)]}
    got = by_rule(feed.matches("INSERT INTO gl_entries (account, side, amount) VALUES ('4000', 'D', 10.5), "
                               "('4000', 'C', 10.5)", rows=2))
    assert got["gl_debits"] == [(Decimal("10.5"), "-", 1)]  # match: {side: D}
    assert len(got["gl_postings"]) == 2
    assert by_rule(feed.matches("DELETE FROM orders WHERE status = 'x'", rows=4)) == {
        "cancelled": [(Decimal(4), "-", 1)]}
    assert feed.matches("DELETE FROM orders WHERE status = 'x'", rows=0) == []


def test_labels_are_escaped_and_capped() -> None:
    feed = Feed([{"name": "by_region", "table": "orders", "operation": "insert", "value": "total",
                  "labels": ["region", "@app"], "max_series": 2}])
    labels = [m.labels for r in ("a|b=c", "eu", "us")
              for m in feed.matches(INSERT, [1, 1, r, "1"])]
    assert labels == ["region=a%7Cb%3Dc|app=shop", "region=eu|app=shop", OTHER]
    assert label_values(labels[0], ["region", "app"]) == ["a|b=c", "shop"]
    assert label_values(OTHER, ["region", "app"]) == [OTHER, OTHER]
    assert label_values("-", ["region"]) == [""]  # a rule given labels since: its old unlabelled value


def test_worker_tallies_are_named_as_this_workers_and_keep_decimals() -> None:
    feed = Feed()
    tallies = WorkerTallies(feed.rules)
    for i, total in enumerate(("0.10", "0.20")):
        tallies.merge(feed.matches(INSERT, [i, 7, "eu", total]))
    samples = {(s.name, tuple(s.labels.items())): s.value for fam in tallies.collect() for s in fam.samples
               if not s.name.endswith("_created")}
    assert samples[("fasterdata_business_sales_processed_total", (("region", "eu"),))] == 0.3
    assert samples[("fasterdata_business_customers_processed_total", ())] == 2  # rows, not distinct values
    assert not any(name.startswith(("fasterdata_business_biggest", "fasterdata_business_smallest"))
                   for name, _ in samples)
    fam = next(f for f in tallies.collect() if f.name == "fasterdata_business_sales_processed")
    assert "this worker" in fam.documentation and "fasterdata_business_sales)" in fam.documentation
    kept = parse({"rules": [r for r in RULES["rules"] if r["name"] != "order_count"]}).rules
    tallies.replace(kept)
    assert tallies.values["sales"] == {"region=eu": Decimal("0.30")} and "order_count" not in tallies.values


def test_a_tally_never_takes_another_rules_name() -> None:
    rules = parse({"rules": [{"name": "sales", "table": "orders", "operation": "insert", "value": "total"},
                             {"name": "sales_processed", "table": "orders", "operation": "insert",
                              "value": "rows"}]}).rules
    assert [fam.name for fam in WorkerTallies(rules).collect()] == ["fasterdata_business_sales_processed_processed"]

"""Business rules on /metrics: the day's values from Redis (the same on every worker, after a restart too),
distinct rules as distinct counts, sums with their decimals, and this worker's tallies under their own name."""

from __future__ import annotations

from decimal import Decimal

import redis

from fasterdata.analyzers import merged
from fasterdata.analyzers.business_metrics import DayValues
from fasterdata.analyzers.keys import shard_keys
from fasterdata.analyzers.worker import Worker
from tests.kit.analysis import drain, make_worker, rules_file
from tests.kit.eventwriter import Events
from tests.kit.ports import free_port

INSERT = "INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4)"
# (customer, region, total): 7 orders from 3 customers; eu totals 0.10 + 0.20, whose float sum is not 0.3
ORDERS = [(1, "eu", "0.10"), (2, "us", "5.00"), (1, "eu", "0.20"), (3, "us", "1.50"), (2, "ap", "19.99"),
          (1, "us", "2.25"), (3, "ap", "7.00")]


def place(events: Events, orders: list[tuple[int, str, str]] = ORDERS) -> None:
    with events:
        for i, (customer, region, total) in enumerate(orders):
            events.stmt(INSERT, [i, customer, region, total], tag="INSERT", rows=1)


def exported(worker: Worker) -> dict[tuple[str, tuple], float]:
    """What the worker's collectors put on /metrics (the business families), as a scrape reads them."""
    out = {}
    for collector in worker.collectors():
        for fam in collector.collect():
            for s in fam.samples:
                if s.name.startswith("fasterdata_business_"):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_distinct_rule_exports_its_distinct_count(r: redis.Redis, prefix: str, events: Events) -> None:
    place(events)
    w = make_worker(prefix)
    drain(w)
    got = exported(w)
    assert got[("fasterdata_business_customers", ())] == 3  # what count(distinct customer_id) says
    assert got[("fasterdata_business_customers_processed_total", ())] == 7  # the rows this worker matched
    assert got[("fasterdata_business_order_count", ())] == 7


def test_every_worker_exports_the_days_values_from_redis(r: redis.Redis, prefix: str, events: Events) -> None:
    """A worker that has processed nothing (one just restarted, or another one) shows the same day's values."""
    place(events)
    first = make_worker(prefix)
    drain(first)
    restarted = make_worker(prefix, consumer="w1-restarted")
    day = {k: v for k, v in exported(restarted).items() if not k[0].endswith("_processed_total")}
    assert day == {k: v for k, v in exported(first).items() if not k[0].endswith("_processed_total")}
    assert day[("fasterdata_business_sales", (("region", "eu"),))] == 0.3  # the float of the exact decimal
    assert 0.10 + 0.20 != 0.3  # what adding floats would have shown
    assert day[("fasterdata_business_sales", (("region", "us"),))] == 8.75
    assert day[("fasterdata_business_biggest", ())] == 19.99 and day[("fasterdata_business_smallest", ())] == 0.1
    assert day[("fasterdata_business_orders_placed", ())] == 7
    assert not any(name.endswith("_processed_total") for name, _ in exported(restarted))  # it processed nothing
    ks = shard_keys(prefix, 1)
    today = next(iter(merged.biz_days(r, ks, "sales")))
    assert {lab: float(v) for lab, v in merged.biz_decimals(r, ks, "sales", today, "sum", 2).items()} == {
        "region=eu": 0.3, "region=us": 8.75, "region=ap": 26.99}


def test_min_and_max_rules_have_no_worker_tally(r: redis.Redis, prefix: str, events: Events) -> None:
    place(events)
    w = make_worker(prefix)
    drain(w)
    names = {name for name, _ in exported(w)}
    assert "fasterdata_business_biggest" in names and "fasterdata_business_smallest" in names
    assert not {"fasterdata_business_biggest_processed_total", "fasterdata_business_smallest_processed_total"} & names
    assert "fasterdata_business_sales_processed_total" in names


def test_a_rule_without_labels_shows_zero_before_its_first_match(r: redis.Redis, prefix: str) -> None:
    w = make_worker(prefix)
    got = exported(w)
    assert got[("fasterdata_business_cancelled", ())] == 0 and got[("fasterdata_business_customers", ())] == 0
    assert ("fasterdata_business_biggest", ()) not in got  # an extreme of nothing is not zero


def test_the_days_values_merge_the_shards(r: redis.Redis, prefix: str) -> None:
    """A customer seen on two shards counts once; sums add."""
    events = Events(r, prefix, shards=3)
    with events:
        for i, (customer, region, total) in enumerate(ORDERS):
            events.stmt(INSERT, [i, customer, region, total], tag="INSERT", rows=1, sid=f"s{i}")
    assert sum(1 for s in events.streams if r.xlen(s)) >= 2
    w = make_worker(prefix, stream_shards=3)
    drain(w)
    got = exported(w)
    assert got[("fasterdata_business_customers", ())] == 3
    assert got[("fasterdata_business_sales", (("region", "eu"),))] == 0.3


def test_a_worker_reads_its_own_commit_at_the_next_scrape(r: redis.Redis, prefix: str, events: Events) -> None:
    w = make_worker(prefix)
    assert exported(w)[("fasterdata_business_orders_placed", ())] == 0
    w.business_days.refresh = 3600.0  # others' commits wait for the refresh; this worker's own do not
    place(events, ORDERS[:2])
    drain(w)
    assert exported(w)[("fasterdata_business_orders_placed", ())] == 2


def test_without_redis_the_scrape_still_answers(r: redis.Redis, prefix: str) -> None:
    """Redis away: no day's values (none would be true), and no error for the rest of the page."""
    gone = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, decode_responses=True)
    rules = rules_file().rules
    values = DayValues(gone, shard_keys(prefix, 1), rules)
    assert list(values.collect()) == []
    values.client = r
    values.changed()
    assert {fam.name for fam in values.collect()} == {f"fasterdata_business_{rule.name}" for rule in rules}


def test_decimal_values_are_exact(r: redis.Redis, prefix: str, events: Events) -> None:
    """A sum is stored in units of 10^-scale and shown as the exact decimal those units make."""
    place(events, [(1, "eu", "0.1")] * 3)
    drain(make_worker(prefix))
    ks = shard_keys(prefix, 1)
    [today] = merged.biz_days(r, ks, "sales")
    assert merged.biz_decimals(r, ks, "sales", today, "sum", 2) == {"region=eu": Decimal("0.30")}
    assert str(merged.biz_decimals(r, ks, "sales", today, "sum", 2)["region=eu"]) == "0.30"

"""Analysis in-process: the rules tests use, a worker on the machine's Redis, stepping it until the stream
is drained, and reading what it left (a group's progress, a rule's aggregates)."""

from __future__ import annotations

import json
from typing import Any

import redis

from fasterdata.analyzers import merged
from fasterdata.analyzers.keys import shard_keys
from fasterdata.analyzers.rules import RulesFile, parse
from fasterdata.analyzers.worker import Worker
from fasterdata.config.analyzer_settings import AnalyzerSettings
from tests.kit.services import REDIS_URL

RULES = {
    "rules": [
        {"name": "sales", "table": "orders", "operation": "insert", "value": "total",
         "labels": ["region"], "aggregate": "sum", "scale": 2},
        {"name": "orders_placed", "table": "orders", "operation": "insert", "value": "rows", "aggregate": "sum"},
        {"name": "order_count", "table": "orders", "operation": "insert", "value": "total", "aggregate": "count"},
        {"name": "biggest", "table": "orders", "operation": "insert", "value": "total", "aggregate": "max"},
        {"name": "smallest", "table": "orders", "operation": "insert", "value": "total", "aggregate": "min"},
        {"name": "customers", "table": "orders", "operation": "insert", "value": "customer_id",
         "aggregate": "distinct"},
        {"name": "items_sold", "table": "order_items", "operation": "insert", "value": "quantity",
         "labels": ["sku"], "aggregate": "sum"},
        {"name": "stock_moves", "table": "inventory", "operation": "update", "value": {"delta": "qty"},
         "labels": ["sku"], "aggregate": "sum"},
        {"name": "cancelled", "table": "orders", "operation": "delete", "value": "rows", "aggregate": "sum"},
        {"name": "gl_postings", "table": "gl_entries", "operation": "insert", "value": "amount",
         "labels": ["account"], "aggregate": "sum", "scale": 2},
        {"name": "gl_debits", "table": "gl_entries", "operation": "insert", "value": "amount",
         "match": {"side": "D"}, "aggregate": "sum", "scale": 2},
        {"name": "bulk_loaded", "table": "orders", "operation": "copy", "value": "rows", "aggregate": "sum"},
    ],
    "security": {"new_fingerprint": {"enabled": False}},
    "anomaly": {"enabled": False},
}


def rules_file(**overrides: Any) -> RulesFile:
    data = json.loads(json.dumps(RULES))
    for key, value in overrides.items():
        data[key] = value
    return parse(data, "test rules")


def make_worker(prefix: str, rules: RulesFile | None = None, consumer: str = "w1", rules_path: str | None = None,
                **kw: Any) -> Worker:
    """An in-process worker (rules_path: the file a reload reads)."""
    if rules_path is not None:
        kw["rules"] = rules_path
    settings = AnalyzerSettings(redis=REDIS_URL, prefix=prefix, metrics="", consumer=consumer, block=0.05, **kw)
    worker = Worker(settings, rules or rules_file())
    worker.setup()
    return worker


def group_done(client: redis.Redis, streams: list[str], group: str = "analyzers") -> bool:
    """Nothing undelivered and nothing pending in `group` on any of `streams`."""
    for stream in streams:
        g = {x["name"]: x for x in client.xinfo_groups(stream)}.get(group)
        if g is None or g.get("lag") or g.get("pending"):
            return False
    return True


def drain(worker: Worker, limit: int = 1000) -> int:
    """Step until the group has nothing undelivered and nothing pending; returns entries processed."""
    total = 0
    for _ in range(limit):
        total += worker.run_once()
        total += worker.quiesce()  # no read-ahead left behind to swallow entries a later test step adds
        if group_done(worker.redis, worker.streams.names, worker.group):
            return total
    raise AssertionError("stream not drained")


def biz(client: redis.Redis, prefix: str, rule: str, shards: int = 1, aggregate: str = "sum") -> dict[str, str]:
    """A rule's aggregate hashes summed over all days (labels → raw stored value), merged over shards."""
    ks = shard_keys(prefix, shards)
    out: dict[str, int | float] = {}
    for day in merged.biz_days(client, ks, rule):
        for labels, value in merged.biz_values(client, ks, rule, day, aggregate).items():
            out[labels] = out.get(labels, 0) + (int(value) if value.lstrip("-").isdigit() else float(value))
    return out

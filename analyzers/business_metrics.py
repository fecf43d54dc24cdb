"""Business rules on /metrics: the day's values as Redis holds them, and what this worker processed.

`fasterdata_business_<rule>` (`DayValues`) is the rule's value today (UTC) read from the aggregates
in Redis: every worker's committed work, so the same number on every worker, before and after a
restart — the number to show. A sum keeps its decimals (the float of the exact decimal), a
distinct rule is its count of distinct values, min and max the day's extremes. Read at scrape time,
again once `refresh` seconds have passed or this worker has committed business work since the last
read: one HGETALL per rule and shard (a distinct rule over several shards unions its member sets).

`fasterdata_business_<rule>_processed_total` (`WorkerTallies`) is what this worker processed since
it started — summed values for sum rules, matches for count rules, matching rows for distinct
rules — for rate(); sum() over workers. It starts from zero when the worker does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import event, merged
from .business import Match, label_values
from .keys import Keys
from .rules import Rule

log = logging.getLogger("fasterdata.analyze")

_ADDITIVE = frozenset({"sum", "count", "distinct"})


def _tallied(rules: list[Rule]) -> list[Rule]:
    """The rules that get a tally: additive ones whose tally's name is not another rule's day value
    (a rule `x_processed` next to a rule `x`)."""
    names = {r.name for r in rules}
    out = []
    for rule in rules:
        if rule.aggregate not in _ADDITIVE:
            continue
        if f"{rule.name}_processed" in names:
            log.warning("rule %s: no fasterdata_business_%s_processed_total, as rule %s_processed has that "
                        "name", rule.name, rule.name, rule.name)
            continue
        out.append(rule)
    return out


def _what(rule: Rule) -> str:
    return rule.description or f"{rule.aggregate} of {rule.table} {rule.operation}"


def _names(rule: Rule) -> list[str]:
    return [label.lstrip("@") for label in rule.labels]


class DayValues(Collector):
    """fasterdata_business_<rule>: today's value of every rule, from Redis."""

    def __init__(self, client: Any, shards: list[Keys], rules: list[Rule], refresh: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.client = client
        self.shards = shards
        self.rules = rules
        self.refresh = refresh
        self.clock = clock
        self.wall = wall  # which day is today
        self.lock = threading.Lock()
        self._read_at: float | None = None
        self._values: dict[str, dict[str, Decimal]] | None = None  # rule → labels → value; None: unreadable

    def replace(self, rules: list[Rule]) -> None:
        """Rules reloaded: the next scrape reads the new ones."""
        with self.lock:
            self.rules = rules
            self._read_at = None

    def changed(self) -> None:
        """This worker committed business work: the next scrape reads again (others' within `refresh`)."""
        self._read_at = None

    def read(self) -> dict[str, dict[str, Decimal]] | None:
        """Today's values (at most `refresh` seconds old); None when Redis did not answer."""
        with self.lock:
            now = self.clock()
            if self._read_at is None or now - self._read_at >= self.refresh:
                day = event.day(int(self.wall() * 1_000_000))
                try:
                    self._values = {rule.name: merged.biz_decimals(self.client, self.shards, rule.name, day,
                                                                   rule.aggregate, rule.scale)
                                    for rule in self.rules}
                except (redis.RedisError, OSError) as exc:  # the scrape still answers with the rest
                    log.debug("business values not read from Redis: %s", exc)
                    self._values = None
                self._read_at = now
            return self._values

    def collect(self) -> Iterator[Metric]:
        values = self.read()
        if values is None:
            return
        for rule in self.rules:
            names = _names(rule)
            fam = GaugeMetricFamily(f"fasterdata_business_{rule.name}",
                                    f"{_what(rule)} ({rule.aggregate}, today UTC, all workers: from Redis)",
                                    labels=names)
            got = values.get(rule.name, {})
            if not got and not names and rule.aggregate in _ADDITIVE:
                fam.add_metric([], 0.0)  # nothing yet today: the day's total is zero
            for labels, value in got.items():
                fam.add_metric(label_values(labels, names), float(value))
            yield fam


class WorkerTallies(Collector):
    """fasterdata_business_<rule>_processed_total: this worker's matches since it started (sum, count and
    distinct rules; min and max have only their day's value)."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = _tallied(rules)
        self.values: dict[str, dict[str, Decimal]] = {r.name: {} for r in self.rules}
        self.lock = threading.Lock()

    def replace(self, rules: list[Rule]) -> None:
        """Rules reloaded: a rule kept as it was keeps its values; a new or changed one starts from zero."""
        with self.lock:
            before = {r.name: r for r in self.rules}
            self.rules = _tallied(rules)
            self.values = {r.name: self.values[r.name] if before.get(r.name) == r else {} for r in self.rules}

    def merge(self, matches: list[Match]) -> None:
        with self.lock:
            values = self.values
            for m in matches:
                if m.rows_only:
                    continue
                cur = values.get(m.rule.name)
                if cur is None:
                    continue  # min and max
                n = m.value if m.rule.aggregate == "sum" else m.count
                cur[m.labels] = cur.get(m.labels, 0) + n

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            snapshot = {name: dict(v) for name, v in self.values.items()}
            rules = self.rules
        for rule in rules:
            names = _names(rule)
            what = {"sum": "values summed", "count": "matches", "distinct": "matching rows"}[rule.aggregate]
            fam = CounterMetricFamily(f"fasterdata_business_{rule.name}_processed",
                                      f"{_what(rule)}: {what} this worker processed since it started (for rate(); "
                                      f"the day's value is fasterdata_business_{rule.name})", labels=names)
            for labels, value in snapshot[rule.name].items():
                fam.add_metric(label_values(labels, names), float(value))
            yield fam

"""The worker's own Prometheus series: counters the loop bumps, read by a collector at scrape time.

The worker loop is synchronous (one Redis round trip per batch); the endpoint (proxy/httpd.py)
serves scrapes from a thread of its own, so collectors read plain counters under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class WorkerCounters:
    """Plain counters the loop bumps; read by the collector on scrape."""

    def __init__(self) -> None:
        self.entries = 0
        self.statements = 0  # in those entries
        self.batches = 0
        self.unparsed = 0
        self.bad = 0
        self.failed = 0  # entries whose processing raised (skipped, logged)
        self.claimed = 0
        self.conflicts = 0
        self.pending = 0
        self.lag_entries = 0
        self.lag_seconds = 0.0
        self.shards: dict[int, tuple[int, int, float]] = {}  # sharded: shard → (pending, undelivered, age)
        self.anomaly_alerts = 0
        self.findings: dict[tuple[str, str], int] = {}
        self.rows_only: dict[str, int] = {}
        self.shapes = 0
        self.evicted_fingerprints = 0  # by this worker's sweeps (retention.py)
        self.evicted_entries = 0  # fp|db|app entries beyond stats_max_entries
        self.expired_days = 0
        self.trimmed_pending = 0  # delivered entries found trimmed from the stream before analysis
        self.trimmed_unread = 0  # the group's statements trimmed before delivery (the proxies count them in Redis)
        self.lock = threading.Lock()


class WorkerCollector(Collector):
    def __init__(self, c: WorkerCounters, consumer: str) -> None:
        self.c = c
        self.consumer = consumer

    def collect(self) -> Iterator[Metric]:
        c = self.c
        with c.lock:
            findings = dict(c.findings)
            rows_only = dict(c.rows_only)
            shards = dict(c.shards)
        yield CounterMetricFamily("fasterdata_analyzer_entries", "Stream entries processed and acknowledged",
                                  value=c.entries)
        yield CounterMetricFamily("fasterdata_analyzer_statements",
                                  "Statements in the entries processed and acknowledged (a bundled entry holds "
                                  "several)", value=c.statements)
        yield CounterMetricFamily("fasterdata_analyzer_batches", "Batches committed", value=c.batches)
        yield CounterMetricFamily("fasterdata_analyzer_unparsed",
                                  "Statements sqlglot could not parse (counted in stats, skipped by rules)",
                                  value=c.unparsed)
        yield CounterMetricFamily("fasterdata_analyzer_bad_events",
                                  "Entries that break the event contract (skipped)", value=c.bad)
        yield CounterMetricFamily("fasterdata_analyzer_failed_events",
                                  "Entries whose analysis raised an error (skipped, logged)", value=c.failed)
        yield CounterMetricFamily("fasterdata_analyzer_claimed",
                                  "Entries reclaimed from idle consumers (XAUTOCLAIM)", value=c.claimed)
        yield CounterMetricFamily("fasterdata_analyzer_conflicts",
                                  "Entries another consumer reclaimed before we committed (not applied by us)",
                                  value=c.conflicts)
        yield GaugeMetricFamily("fasterdata_analyzer_pending", "Entries delivered to the group, not yet acked",
                                value=c.pending)
        yield GaugeMetricFamily("fasterdata_analyzer_trimmed_unread",
                                "Statements the stream cap (stream_maxlen) removed before this group read them, as "
                                "the proxies count them in <stream>:trimmed (a total: the same on every worker)",
                                value=c.trimmed_unread)
        yield CounterMetricFamily("fasterdata_analyzer_trimmed_pending",
                                  "Entries delivered to the group but trimmed from the stream before they were "
                                  "analysed (found by this worker)", value=c.trimmed_pending)
        yield GaugeMetricFamily("fasterdata_analyzer_lag_entries", "Entries not yet delivered to the group",
                                value=c.lag_entries)
        yield GaugeMetricFamily("fasterdata_analyzer_lag_seconds",
                                "Age of the oldest unprocessed event (pending or undelivered)",
                                value=c.lag_seconds)
        if shards:
            per = {name: GaugeMetricFamily(f"fasterdata_analyzer_shard_{name}", f"{help_} (one statement stream)",
                                           labels=["shard"])
                   for name, help_ in (("pending", "Entries delivered, not yet acked"),
                                       ("lag_entries", "Entries not yet delivered"),
                                       ("lag_seconds", "Age of the oldest unprocessed event"))}
            for i, values in sorted(shards.items()):
                for fam, value in zip(per.values(), values, strict=True):
                    fam.add_metric([str(i)], value)
            yield from per.values()
        yield GaugeMetricFamily("fasterdata_analyzer_shapes", "Statement shapes parsed and cached",
                                value=c.shapes)
        yield CounterMetricFamily("fasterdata_analyzer_evicted_fingerprints",
                                  "Fingerprints this worker's sweeps evicted from the Redis performance summary "
                                  "(stats_max_fingerprints, stats_retention_days)", value=c.evicted_fingerprints)
        yield CounterMetricFamily("fasterdata_analyzer_evicted_entries",
                                  "Fingerprint × database × application entries this worker's sweeps evicted from "
                                  "the Redis performance summary (stats_max_entries)", value=c.evicted_entries)
        yield CounterMetricFamily("fasterdata_analyzer_expired_days",
                                  "Business days this worker's sweeps removed from the days index "
                                  "(business_retention_days)", value=c.expired_days)
        yield CounterMetricFamily("fasterdata_anomaly_alerts", "Rate anomaly alerts raised by this worker",
                                  value=c.anomaly_alerts)
        fam = CounterMetricFamily("fasterdata_security_findings", "Security findings (every occurrence)",
                                  labels=["rule", "severity"])
        for (rule, sev), n in sorted(findings.items()):
            fam.add_metric([rule, sev], n)
        yield fam
        ro = CounterMetricFamily("fasterdata_business_rows_only",
                                 "Rows a column-valued rule could only count (INSERT … SELECT, COPY)",
                                 labels=["rule"])
        for rule, n in sorted(rows_only.items()):
            ro.add_metric([rule], n)
        yield ro

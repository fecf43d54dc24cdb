"""Where statement events go once a session emits them: the proxy's own metrics, then the sink.

Counting happens in plain dicts and lists (no locks, no label lookups) and is turned into
Prometheus families only when /metrics is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Latency buckets in microseconds; exported in seconds.
BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
              1_000_000, 2_500_000, 5_000_000, 10_000_000)
MAX_LATENCY_SERIES = 200  # distinct (db, app) pairs before the rest are folded into "other"


class CapturePy:
    """Receives every event a session emits; counts it, then hands it to ``put`` (the sink).

    The reference for proxy/_capture.c's ``Capture``, which runs in its place when built.
    """

    def __init__(self, put: Callable[[dict[str, str], str], None] | None) -> None:
        self.put = put
        self.statements: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.latency: dict[tuple[str, str], list[int]] = {}  # bucket counts, then +Inf, then sum (µs)

    def emit(self, event: dict[str, str]) -> None:
        if event.get("kind") == "stmt":
            tag = event.get("tag") or ("ERROR" if "err" in event else "OTHER")
            self.statements[tag] = self.statements.get(tag, 0) + 1
            err = event.get("err")
            if err:
                cls = err[:2]
                self.errors[cls] = self.errors.get(cls, 0) + 1
            key = (event.get("db", ""), event.get("app", ""))
            series = self.latency.get(key)
            if series is None:
                if len(self.latency) >= MAX_LATENCY_SERIES:
                    key = ("other", "other")
                    series = self.latency.get(key)
                if series is None:
                    series = self.latency[key] = [0] * (len(BUCKETS_US) + 2)
            dur = int(event.get("dur_us") or 0)
            series[bisect_left(BUCKETS_US, dur)] += 1
            series[-1] += dur
        if self.put is not None:
            self.put(event, event.get("sid", ""))


try:  # the same in C (proxy/_capture.c); absent when the package was built without a compiler
    from ._capture import Capture
except ImportError:
    Capture = CapturePy


class CaptureCollector(Collector):
    def __init__(self, capture: CapturePy) -> None:
        self.capture = capture

    def collect(self) -> Iterator[Metric]:
        c = self.capture
        stmts = CounterMetricFamily("fasterdata_proxy_statements", "Statements captured, by command tag",
                                    labels=["command"])
        for tag, n in sorted(c.statements.items()):
            stmts.add_metric([tag], n)
        yield stmts
        errors = CounterMetricFamily("fasterdata_proxy_statement_errors",
                                     "Failed statements, by SQLSTATE class", labels=["sqlstate_class"])
        for cls, n in sorted(c.errors.items()):
            errors.add_metric([cls], n)
        yield errors
        hist = HistogramMetricFamily("fasterdata_proxy_statement_duration_seconds",
                                     "Statement latency seen by the proxy (request to completion)",
                                     labels=["db", "app"])
        for (db, app), series in sorted(c.latency.items()):
            buckets = []
            total = 0
            for bound, count in zip(BUCKETS_US, series, strict=False):
                total += count
                buckets.append((f"{bound / 1e6:g}", total))
            total += series[len(BUCKETS_US)]
            buckets.append(("+Inf", total))
            hist.add_metric([db, app], buckets, series[-1] / 1e6)
        yield hist

"""The sink's numbers: what each lane counts, and how /metrics shows them summed over the lanes."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .streamsink import StreamSink

# Batch round-trip buckets (seconds) for the send-latency histogram.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# The counters StreamSink sums over its lanes, with their /metrics help.
COUNTERS = {
    "sent": "Events confirmed by Redis",
    "spooled": "Events written to the spool",
    "replayed": "Spooled events confirmed by Redis",
    "dropped": "Events lost because the spool was full or absent",
    "deduplicated": "Resent events Redis already had",
    "trimmed_unread": "Statements this proxy's stream trims (stream_maxlen) removed before a consumer group "
                      "read them, summed over groups",
    "send_errors": "Batch round trips that failed or timed out",
    "batches": "Batches confirmed by Redis",
}


@dataclass
class LaneCounts:
    """One lane's plain counters, read at scrape time."""

    sent: int = 0  # events Redis confirmed (new or already there)
    spooled: int = 0  # events written to the spool
    replayed: int = 0  # spooled events Redis confirmed
    dropped: int = 0  # events lost: spool full or absent
    deduplicated: int = 0  # events resent after a lost reply that Redis already had (skipped)
    trimmed_unread: int = 0  # statements the stream cap removed before a consumer group read them
    send_errors: int = 0  # failed batch round trips
    batches: int = 0  # batches Redis confirmed
    connects: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def round_trip(self, seconds: float) -> None:
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


def merged_latency(counts: list[LaneCounts]) -> tuple[list[int], float]:
    """The lanes' round-trip histograms as one: counts per bucket (not cumulative) and the sum."""
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    total = 0.0
    for c in counts:
        buckets = [a + b for a, b in zip(buckets, c.latency_counts, strict=True)]
        total += c.latency_sum
    return buckets, total


class SinkCollector(Collector):
    """Prometheus view of a StreamSink's plain counters, read at scrape time."""

    def __init__(self, sink: StreamSink) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Metric]:
        s = self.sink
        yield GaugeMetricFamily("fasterdata_sink_queued", "Events in memory awaiting Redis", value=s.queued)
        yield GaugeMetricFamily("fasterdata_sink_spool_events", "Events in the spool awaiting replay",
                                value=s.spool_events)
        yield GaugeMetricFamily("fasterdata_sink_spool_bytes", "Unreplayed bytes in the spool", value=s.spool_bytes)
        yield GaugeMetricFamily("fasterdata_sink_redis_up", "1 when every stream's connection is up",
                                value=int(s.connected))
        for name, doc in COUNTERS.items():
            yield CounterMetricFamily(f"fasterdata_sink_{name}", doc, value=getattr(s, name))
        counts, total = s.latency()
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily("fasterdata_sink_send_seconds", "Batch round trip to Redis",
                                    buckets=buckets, sum_value=total)

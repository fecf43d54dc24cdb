"""The proxy's counters: plain integers on the hot path, turned into Prometheus metrics on scrape.

Incrementing a prometheus-client Counter takes a lock; an int attribute does not. A collector
reads these when /metrics is scraped, so the forwarding path pays for an addition only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass
class ProxyStats:
    connections_total: int = 0
    connections_refused: int = 0
    connections_denied: int = 0  # outside allow_clients
    bytes_in: int = 0  # client → server
    bytes_out: int = 0  # server → client
    protocol_errors: int = 0
    tap_errors: int = 0
    cancels: int = 0


class ProxyCollector(Collector):
    def __init__(self, stats: ProxyStats, active: Callable[[], int]) -> None:
        self.stats = stats
        self.active = active

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield GaugeMetricFamily("fasterdata_proxy_connections_active", "Client sessions open now",
                                value=self.active())
        yield CounterMetricFamily("fasterdata_proxy_connections", "Client connections accepted",
                                  value=s.connections_total)
        yield CounterMetricFamily("fasterdata_proxy_connections_refused",
                                  "Client connections refused (max_client_conn)", value=s.connections_refused)
        yield CounterMetricFamily("fasterdata_proxy_connections_denied",
                                  "Client connections denied (address outside allow_clients)",
                                  value=s.connections_denied)
        bytes_ = CounterMetricFamily("fasterdata_proxy_bytes", "Bytes forwarded", labels=["direction"])
        bytes_.add_metric(["client_to_server"], s.bytes_in)
        bytes_.add_metric(["server_to_client"], s.bytes_out)
        yield bytes_
        yield CounterMetricFamily("fasterdata_proxy_protocol_errors",
                                  "Sessions closed for malformed protocol bytes", value=s.protocol_errors)
        yield CounterMetricFamily("fasterdata_proxy_tap_errors",
                                  "Sessions whose statement capture failed (traffic unaffected)",
                                  value=s.tap_errors)
        yield CounterMetricFamily("fasterdata_proxy_cancel_requests", "CancelRequests forwarded",
                                  value=s.cancels)

"""One scenario run on any worker (one Redis or a cluster, one stream or shards): twelve windows of traffic
with a burst and a stop, and the anomalies the analysis must find in them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fasterdata.analyzers import merged
from fasterdata.analyzers.keys import shard_keys
from fasterdata.analyzers.rules import RulesFile
from fasterdata.analyzers.worker import Worker
from tests.kit.analysis import drain, rules_file
from tests.kit.eventwriter import Events


def check_spikes_and_drops(r: Any, prefix: str, shards: int, make: Callable[[RulesFile], Worker]) -> None:
    """Twelve windows of traffic with a burst and a stop in window 9, analysed by make(rules)'s worker."""
    events = Events(r, prefix, shards)
    policy = {"window_seconds": 60, "alpha": 0.2, "z": 4.0, "warmup_windows": 5, "min_mean": 5}
    base = (events.ts // 60_000_000 - 20) * 60_000_000
    steady = "SELECT * FROM orders WHERE id = $1"
    fading = "SELECT * FROM carts WHERE id = $1"
    buying = "INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4)"
    with events:
        for window in range(12):
            t = base + window * 60_000_000
            for i in range(20):
                events.stmt(steady, [i], tag="SELECT", rows=1, ts=t + i, sid=f"s{i % 6}")
                if window < 9:
                    events.stmt(fading, [i], tag="SELECT", rows=1, ts=t + i, sid=f"s{i % 6}")
            n = 200 if window == 9 else 20
            for i in range(n):
                events.stmt(buying, [i, i, "eu", "1.00"], tag="INSERT", rows=1, ts=t + 100 + i, sid=f"s{i % 6}")
    w = make(rules_file(anomaly=policy))
    w._next_periodic = float("inf")  # event time only here: the clock would close the later windows too
    drain(w)
    while w.evaluator.run():
        pass
    ks = shard_keys(prefix, shards)
    found = sorted((a["rule"], a.get("fp") or a.get("metric"), a["window"])
                   for _, a in merged.latest(r, [k.alerts for k in ks], 10000) if a["kind"] == "anomaly")
    w9 = str(base // 60_000_000 + 9)
    fp_buying = w.normalize(buying).fp
    fp_fading = w.normalize(fading).fp
    # the burst of orders: the fingerprint and every business metric fed by it spike in window 9;
    # the carts query stops in window 9 too; the steady query never alerts
    expected = {("rate_spike", fp_buying, w9), ("rate_drop", fp_fading, w9)}
    expected |= {("rate_spike", rule, w9) for rule in ("sales", "orders_placed", "order_count", "biggest",
                                                         "smallest", "customers")}
    assert set(found) == expected, found
    assert int(r.hget(ks[0].anomaly_meta, "last")) == base // 60_000_000 + 9  # 10, 11 still open
    if shards > 1:
        assert all(r.hlen(k.anomaly_window(base // 60_000_000 + 9)) for k in ks)  # every shard counted a part

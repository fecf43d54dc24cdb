"""Rate anomalies: EWMA baseline with warm-up, spikes and drops, per fingerprint and business metric."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from fasterdata.analyzers import merged
from fasterdata.analyzers.anomaly import Baseline, fold
from fasterdata.analyzers.keys import shard_keys
from fasterdata.analyzers.rules import AnomalyPolicy, RulesFile
from fasterdata.analyzers.worker import Worker
from tests.analyzers.kit import Events, drain, make_worker, rules_file

POLICY = AnomalyPolicy(window_seconds=60, alpha=0.2, z=4.0, warmup_windows=5, min_mean=5)


def feed(counts: list[int]) -> list[float | None]:
    b, out = Baseline(), []
    for x in counts:
        b, z = fold(b, x, POLICY)
        out.append(z)
    return out


def test_steady_series_never_alerts() -> None:
    assert all(z is None for z in feed([20, 22, 18, 21, 19, 20, 23, 17, 20, 21] * 3))


def test_spike_and_drop_alert_after_warm_up() -> None:
    assert feed([20] * 6 + [200])[-1] > 4
    assert feed([20] * 6 + [0])[-1] < -4
    assert feed([20] * 3 + [200])[-1] is None  # still warming up
    assert feed([1] * 10 + [0])[-1] is None  # too quiet to say anything


@pytest.mark.parametrize("shards", [1, 3])
def test_spikes_and_drops_from_the_stream(r: redis.Redis, prefix: str, shards: int) -> None:
    """Sharded, each shard counts its part of a window; the evaluator sums them."""
    check_spikes_and_drops(r, prefix, shards, lambda rules: make_worker(prefix, rules, stream_shards=shards))


def check_spikes_and_drops(r: Any, prefix: str, shards: int, make: Callable[[RulesFile], Worker]) -> None:
    """Twelve windows of traffic with a burst and a stop in window 9, analysed by make(rules)'s worker
    (also used on a Redis Cluster by tests/faults/test_cluster_analyzers.py)."""
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


def test_silence_is_a_drop_once_the_group_is_caught_up(r: redis.Redis, prefix: str, events: Events) -> None:
    """Traffic that stops entirely writes no events: the wall clock closes the windows instead."""
    policy = {"window_seconds": 60, "alpha": 0.2, "z": 4.0, "warmup_windows": 5, "min_mean": 5}
    base = (events.ts // 60_000_000 - 30) * 60_000_000  # half an hour ago
    with events:
        for window in range(10):
            for i in range(30):
                events.stmt("SELECT * FROM orders WHERE id = $1", [i], tag="SELECT", rows=1,
                            ts=base + window * 60_000_000 + i)
    w = make_worker(prefix, rules_file(anomaly=policy))
    drain(w)
    w.upkeep.measure_lag()
    w.periodic()  # caught up: the silent windows since then close by the clock
    found = [a for _, a in r.xrange(f"{prefix}:alerts")]
    assert [a["rule"] for a in found] == ["rate_drop"]
    assert found[0]["window"] == str(base // 60_000_000 + 10)

"""Rate anomalies: EWMA baseline with warm-up, spikes and drops, per fingerprint and business metric."""

from __future__ import annotations

import pytest
import redis

from fasterdata.analyzers.anomaly import Baseline, fold
from fasterdata.analyzers.rules import AnomalyPolicy
from tests.kit.analysis import drain, make_worker, rules_file
from tests.kit.eventwriter import Events
from tests.kit.spikes import check_spikes_and_drops

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

"""Rate anomalies: per fingerprint and per business metric, events per window of event time against
an exponentially weighted baseline (mean and variance), alerting on spikes and drops.

Counting is part of each batch's atomic write (`<prefix>:anomaly:w:<window>`), so it is exact
whichever worker saw the events. Evaluation runs in one worker at a time (a lock), on windows that
are closed — at least one full window behind the newest event time any worker has seen — so late
batches from a lagging worker still land in the right window. State and alerts of an evaluated
window are written in one MULTI/EXEC, so a crash mid-way is simply redone by the next evaluator.

Sharded: each shard's commits count into that shard's window hashes and raise its watermark; the
evaluator sums the windows, takes the highest watermark, and keeps its own state, "last" mark, alerts
and alert counts in shard 0's keys, so its MULTI/EXEC stays in one slot.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis

from . import merged
from .keys import Keys
from .rules import AnomalyPolicy

WINDOW_TTL_WINDOWS = 50  # window counters outlive their evaluation by this many windows


@dataclass(slots=True)
class Baseline:
    n: int = 0
    mean: float = 0.0
    var: float = 0.0

    def dump(self) -> str:
        return f"{self.n},{self.mean!r},{self.var!r}"

    @classmethod
    def load(cls, raw: str) -> Baseline:
        n, mean, var = raw.split(",")
        return cls(int(n), float(mean), float(var))


def score(b: Baseline, x: float) -> float:
    """z-score of a window's count against the baseline; the deviation is at least √mean (Poisson)."""
    std = max(math.sqrt(b.var), math.sqrt(max(b.mean, 1.0)))
    return (x - b.mean) / std


def fold(b: Baseline, x: float, policy: AnomalyPolicy) -> tuple[Baseline, float | None]:
    """Fold one window's count into the baseline; returns the z-score when it is alert-worthy."""
    if b.n == 0:
        return Baseline(1, float(x), 0.0), None
    z = score(b, x)
    alert = None
    if b.n >= policy.warmup_windows and abs(z) >= policy.z and max(b.mean, x) >= policy.min_mean:
        alert = None if z < 0 and b.mean < policy.min_mean else z
    diff = x - b.mean
    a = policy.alpha
    return Baseline(b.n + 1, b.mean + a * diff, (1 - a) * (b.var + a * diff * diff)), alert


def window_of(ts_us: int, policy: AnomalyPolicy) -> int:
    return ts_us // (policy.window_seconds * 1_000_000)


class Counter:
    """Adds a batch's per-window counts to the batch's writes."""

    def __init__(self, keys: Keys, policy: AnomalyPolicy) -> None:
        self.keys = keys
        self.policy = policy
        self.width = policy.window_seconds * 1_000_000
        self.ttl = policy.window_seconds * WINDOW_TTL_WINDOWS + 3600

    def write(self, writes, counts: dict[tuple[int, str], int], keys: Keys | None = None) -> None:
        if not counts:
            return
        k = keys or self.keys
        lo = hi = None
        for (w, series), n in counts.items():
            key = k.anomaly_window(w)
            writes.hincr(key, series, n)
            writes.expire(key, self.ttl)
            lo = w if lo is None or w < lo else lo
            hi = w if hi is None or w > hi else hi
        writes.hmax(k.anomaly_meta, "watermark", hi)
        writes.hmin(k.anomaly_meta, "first", lo)


class Evaluator:
    """Evaluates closed windows; call `run` now and then from any worker."""

    def __init__(self, client: redis.Redis, shards: list[Keys], policy: AnomalyPolicy, consumer: str,
                 alerts_maxlen: int = 100000, describe=None) -> None:
        self.redis = client
        self.shards = shards
        self.keys = shards[0]  # where the evaluator's own writes go
        self.policy = policy
        self.consumer = consumer
        self.alerts_maxlen = alerts_maxlen
        self.describe = describe or (lambda series: {})
        self.alerts = 0

    def run(self, max_windows: int = 50, now_us: int | None = None) -> int:
        """Evaluate up to max_windows closed windows; returns how many were evaluated.

        now_us: the wall clock, passed only when the group is caught up (nothing pending or undelivered):
        then silence itself closes windows, so traffic that stops entirely is seen as a drop.
        """
        k = self.keys
        meta = self.redis.hgetall(k.anomaly_meta)
        metas = [meta] + [self.redis.hgetall(s.anomaly_meta) for s in self.shards[1:]]
        marks = [int(m["watermark"]) for m in metas if "watermark" in m]
        if not marks:
            return 0
        watermark = max(marks)
        if now_us is not None:
            watermark = max(watermark, window_of(now_us, self.policy))
        last = int(meta["last"]) if "last" in meta else min(int(m["first"]) for m in metas if "first" in m) - 1
        closed = watermark - 2  # the newest window and the one before may still be filling
        if last >= closed:
            return 0
        if not self.redis.set(k.anomaly_lock, self.consumer, nx=True, ex=30):
            return 0
        done = 0
        try:
            if closed - last > max_windows * 20:
                last = closed - max_windows  # a long gap: the baseline would only learn zeros
            state = {s: Baseline.load(v) for s, v in self.redis.hgetall(k.anomaly_state).items()}
            while last < closed and done < max_windows:
                w = last + 1
                counts = merged.window_counts(self.redis, self.shards, w)
                alerts, changed, dropped = self.evaluate(state, counts)
                pipe = self.redis.pipeline(transaction=True)
                if changed:
                    pipe.hset(k.anomaly_state, mapping={s: b.dump() for s, b in changed.items()})
                if dropped:
                    pipe.hdel(k.anomaly_state, *dropped)
                for series, x, z, b in alerts:
                    fields = {"kind": "anomaly", "rule": "rate_spike" if z > 0 else "rate_drop",
                              "severity": self.policy.severity, "series": series,
                              "ts": str(w * self.policy.window_seconds * 1_000_000), "at": str(int(time.time() * 1e6)),
                              "evidence": f"{int(x)} in {self.policy.window_seconds}s window vs baseline "
                                          f"{b.mean:.1f} (z={z:+.1f})",
                              "window": str(w)}
                    fields.update(self.describe(series))
                    pipe.xadd(k.alerts, fields, maxlen=self.alerts_maxlen, approximate=True)
                    pipe.hincrby(k.alert_counts, fields["rule"], 1)
                pipe.hset(k.anomaly_meta, "last", w)
                pipe.execute()
                self.alerts += len(alerts)
                last = w
                done += 1
        finally:
            if self.redis.get(k.anomaly_lock) == self.consumer:
                self.redis.delete(k.anomaly_lock)
        return done

    def evaluate(self, state: dict[str, Baseline], counts: dict[str, int]):
        """One window: update baselines in place; returns (alerts, changed, dropped series)."""
        alerts = []
        changed: dict[str, Baseline] = {}
        for series in list(state) + [s for s in counts if s not in state]:
            b = state.get(series)
            if b is None:
                if len(state) >= self.policy.max_series:
                    continue
                b = Baseline()
            x = counts.get(series, 0)
            nb, z = fold(b, x, self.policy)
            if z is not None:
                alerts.append((series, x, z, b))
            state[series] = nb
            changed[series] = nb
        dropped = [s for s, b in state.items() if b.n > self.policy.warmup_windows and b.mean < 0.01]
        for s in dropped:
            del state[s]
            changed.pop(s, None)
        return alerts, changed, dropped


def describe_series(client: redis.Redis, shards: list[Keys]):
    """Alert fields for a series: the fingerprint's text, or the business rule's name."""
    def describe(series: str) -> dict[str, str]:
        kind, _, name = series.partition(":")
        if kind == "fp":
            text = merged.stats_fp(client, shards, name).get("text", "")
            return {"fp": name, "text": text[:300]}
        if kind == "biz":
            return {"metric": name}
        return {}
    return describe

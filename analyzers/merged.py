"""Reading what the analyzers stored, merged over shards (one shard: its plain keys, read as before).

Every function takes the shards' `Keys` (keys.shard_keys) and issues single-key commands only, so it
works on a Redis Cluster too. Counters add up, extremes compare, distinct counts union the member
sets (a customer seen on two shards counts once), streams merge by entry id.
"""

from __future__ import annotations

import heapq
from decimal import Decimal
from typing import Any

from .keys import Keys

_MAXED = frozenset({"max_us", "last_ts"})


def _int(value: Any) -> int:
    return int(value or 0)


def hsum(r: Any, names: list[str]) -> dict[str, int]:
    """Integer hashes added field by field."""
    out: dict[str, int] = {}
    for name in names:
        for field, value in r.hgetall(name).items():
            out[field] = out.get(field, 0) + int(value)
    return out


def stats_totals(r: Any, shards: list[Keys]) -> dict[str, int]:
    return hsum(r, [k.stats_totals for k in shards])


def alert_counts(r: Any, shards: list[Keys]) -> dict[str, int]:
    return hsum(r, [k.alert_counts for k in shards])


def stats_q(r: Any, shards: list[Keys], member: str) -> dict[str, int]:
    """Counters of one fp|db|app: summed, except max_us and last_ts (the largest)."""
    out: dict[str, int] = {}
    for k in shards:
        for field, value in r.hgetall(k.stats_q(member)).items():
            v = int(value)
            out[field] = max(out.get(field, v), v) if field in _MAXED else out.get(field, 0) + v
    return out


def stats_fp(r: Any, shards: list[Keys], fp: str) -> dict[str, str]:
    """A fingerprint's description from whichever shards saw it (the first one found wins a field)."""
    out: dict[str, str] = {}
    for k in shards:
        for field, value in r.hgetall(k.stats_fp(fp)).items():
            out.setdefault(field, value)
        if "text" in out:
            break
    return out


def top_members(r: Any, shards: list[Keys], by: str, n: int) -> list[tuple[str, float]]:
    """The n largest fp|db|app members of a top sorted set. A member's score is spread over shards, so
    the merge reads each shard's whole set (one entry per fp|db|app: bounded by the workload's variety)."""
    if len(shards) == 1:
        return [(m, float(s)) for m, s in r.zrevrange(shards[0].stats_top(by), 0, n - 1, withscores=True)]
    scores: dict[str, float] = {}
    for k in shards:
        for member, score in r.zrange(k.stats_top(by), 0, -1, withscores=True):
            scores[member] = scores.get(member, 0.0) + float(score)
    return heapq.nlargest(n, scores.items(), key=lambda x: (x[1], x[0]))


def biz_days(r: Any, shards: list[Keys], rule: str) -> set[str]:
    days: set[str] = set()
    for k in shards:
        days |= r.smembers(k.biz_days(rule))
    return days


def _members(r: Any, key: str) -> set[str]:
    return set(r.sscan_iter(key, count=1000))


def biz_values(r: Any, shards: list[Keys], rule: str, day: str, aggregate: str) -> dict[str, str]:
    """A rule's day: labels → value as stored (sum/count: integer; min/max: decimal; distinct: count)."""
    if len(shards) == 1:
        return r.hgetall(shards[0].biz(rule, day))
    parts = [r.hgetall(k.biz(rule, day)) for k in shards]
    out: dict[str, str] = {}
    for labels in {lab for part in parts for lab in part}:
        values = [part[labels] for part in parts if labels in part]
        if aggregate == "distinct":
            union: set[str] = set()
            for k in shards:
                union |= _members(r, k.biz_set(rule, day, labels))
            out[labels] = str(len(union))
        elif aggregate == "max":
            out[labels] = max(values, key=Decimal)
        elif aggregate == "min":
            out[labels] = min(values, key=Decimal)
        else:
            out[labels] = str(sum(int(v) for v in values))
    return out


def biz_decimals(r: Any, shards: list[Keys], rule: str, day: str, aggregate: str, scale: int) -> dict[str, Decimal]:
    """A rule's day as exact decimals: labels → value (a sum in its own units, with its `scale` decimals; a
    distinct rule's count of distinct values). What `top` shows and /metrics exports."""
    values = biz_values(r, shards, rule, day, aggregate)
    if aggregate == "sum":
        return {labels: Decimal(int(v)).scaleb(-scale) for labels, v in values.items()}
    return {labels: Decimal(v) for labels, v in values.items()}


def biz_rows_only(r: Any, shards: list[Keys], rule: str, day: str) -> dict[str, int]:
    return hsum(r, [k.biz_rows_only(rule, day) for k in shards])


def latest(r: Any, streams: list[str], n: int) -> list[tuple[str, dict[str, str]]]:
    """The n newest entries of several streams, newest first."""
    def order(entry: tuple[str, Any]) -> tuple[int, int]:
        ms, _, seq = entry[0].partition("-")
        return int(ms), int(seq or 0)

    entries = [e for name in streams for e in r.xrevrange(name, count=n)]
    return heapq.nlargest(n, entries, key=order)


def window_counts(r: Any, shards: list[Keys], window: int) -> dict[str, int]:
    """One anomaly window's per-series counts, over all shards."""
    return hsum(r, [k.anomaly_window(window) for k in shards])

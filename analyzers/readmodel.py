"""What the analyzers keep in Redis, read for people: `fasterdata top` and the web console read through here.

Pure reads: a Redis client (or RedisCluster) and the shards' `Keys` in, plain dicts and lists out, ready
for `json.dumps` (business values are decimal strings with their decimals: `"17790.51"`, never floats).
Every function issues single-key commands only, pipelined where it reads many keys, so it works on a
Redis Cluster and merges `stream_shards` ≥ 2 the way merged.py does (counters add, extremes compare).

The top view reads the `stats:top:*` sorted sets whole (one entry per fingerprint × db × app, bounded by
`stats_max_entries`) and then only what the sort and the rows it returns need, in pipelines: no round
trip per fingerprint. Transaction-control statements (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE,
DEALLOCATE, DISCARD …) lead every ranking by calls and say nothing about the workload: they are folded
into one summary unless asked for.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from . import merged, scripts
from .business import label_values
from .keys import GROUP, Keys, shard_keys
from .stats import BUCKETS, HIST_FIELDS
from .streams import undelivered

SORTS = ("time", "calls", "mean", "p99", "errors", "rows")
CONTROL_KEYWORDS = frozenset({"begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release",
                              "deallocate", "discard", "prepare"})
_PIPE = 2000  # commands per pipeline round trip
_MAXED = frozenset({"max_us", "last_ts"})
_DESCRIBED: dict[tuple[str, str], tuple[str, str]] = {}  # (prefix, fp) → (op, text): a fingerprint's text never changes
SCAN = scripts.read("readmodel.lua")
_USER_FIELDS = ("calls", "total_us", "rows", "errors", "max_us")  # a stats:u value, colon-separated
_BOUNDS = (0.0, *(b * 1e6 for b in BUCKETS))


def keys_for(prefix: str, shards: int = 1) -> list[Keys]:
    """The shards' keys (what every function here takes): the same helper the worker uses."""
    return shard_keys(prefix, shards)


def _pipelined(r: Any, calls: Sequence[tuple[str, tuple]]) -> list[Any]:
    """Run (method, args) calls in pipelines of _PIPE, in order."""
    out: list[Any] = []
    for i in range(0, len(calls), _PIPE):
        pipe = r.pipeline(transaction=False)
        for name, args in calls[i:i + _PIPE]:
            getattr(pipe, name)(*args)
        out += pipe.execute()
    return out


# ── numbers ──────────────────────────────────────────────────────────────────────────────────────
def decimal_text(value: Decimal) -> str:
    """A decimal as it is stored, without exponent: 17790.51, 300.00, 5."""
    return format(value, "f")


def percentile(hist: Sequence[int], q: float, min_us: int | None = None, max_us: int | None = None) -> float | None:
    """The q-quantile (0..1) in µs from bucket counts (stats.BUCKETS, then +Inf), interpolated linearly inside
    its bucket and kept within the observed min and max; None without data."""
    total = sum(hist)
    if not total:
        return None
    rank = q * total
    acc = 0
    bounds = _BOUNDS
    for i, n in enumerate(hist):
        if not n:
            continue
        if acc + n >= rank:
            lo = bounds[i]
            hi = bounds[i + 1] if i + 1 < len(bounds) else float(max_us or bounds[-1])
            if max_us is not None:
                hi = min(hi, float(max_us))
            if min_us is not None:
                lo = max(lo, float(min_us))
            value = lo + (hi - lo) * ((rank - acc) / n) if hi > lo else hi
            return round(value, 1)
        acc += n
    return float(max_us) if max_us is not None else None


def _merge_q(parts: Iterable[dict[str, str]]) -> dict[str, Any]:
    """stats:q hashes of one member from several shards: summed, max/last the largest, min the smallest."""
    out: dict[str, Any] = {}
    for part in parts:
        for field, value in part.items():
            if field == "sumsq_us":
                out[field] = out.get(field, 0.0) + float(value)
                continue
            v = int(value)
            if field in _MAXED:
                out[field] = max(out.get(field, v), v)
            elif field == "min_us":
                out[field] = min(out.get(field, v), v)
            else:
                out[field] = out.get(field, 0) + v
    return out


def figures(q: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one stats:q hash (merged): calls, time, mean, min, max, stddev, percentiles, errors."""
    calls = int(q.get("calls", 0))
    total = int(q.get("total_us", 0))
    mean = total / calls if calls else 0.0
    stddev = None
    if calls and "sumsq_us" in q:
        stddev = round(math.sqrt(max(0.0, float(q["sumsq_us"]) / calls - mean * mean)), 1)
    hist = [int(q.get(f, 0)) for f in HIST_FIELDS]
    lo = int(q["min_us"]) if "min_us" in q else None
    hi = int(q["max_us"]) if "max_us" in q else None
    return {"calls": calls, "total_us": total, "mean_us": round(mean, 1), "min_us": lo, "max_us": hi or 0,
            "stddev_us": stddev, "p50_us": percentile(hist, 0.5, lo, hi), "p95_us": percentile(hist, 0.95, lo, hi),
            "p99_us": percentile(hist, 0.99, lo, hi), "rows": int(q.get("rows", 0)),
            "errors": int(q.get("errors", 0)),
            "by_state": {f[4:]: int(v) for f, v in q.items() if f.startswith("err:")},
            "last_ts": int(q.get("last_ts", 0)), "histogram": hist if any(hist) else None}


def histogram(hist: Sequence[int] | None) -> list[dict[str, Any]]:
    """Bucket counts as [{le (seconds, or "+Inf"), count}], not cumulative."""
    hist = hist or [0] * len(HIST_FIELDS)
    return [{"le": le, "count": n} for le, n in zip([*BUCKETS, "+Inf"], hist, strict=True)]


# ── descriptions ─────────────────────────────────────────────────────────────────────────────────
def is_control(op: str, text: str) -> bool:
    """BEGIN/COMMIT/ROLLBACK/SAVEPOINT/RELEASE/DEALLOCATE/DISCARD-class: what the top view folds."""
    if op == "txn":
        return True
    head = text.lstrip("( \t\n").split(None, 1)
    return bool(head) and head[0].lower().rstrip(";") in CONTROL_KEYWORDS


def describe(r: Any, ks: list[Keys], fps: Iterable[str]) -> dict[str, tuple[str, str]]:
    """fp → (op, text) for many fingerprints, pipelined (remembered: a fingerprint's text never changes)."""
    prefix = ks[0].p
    out: dict[str, tuple[str, str]] = {}
    missing = []
    for fp in fps:
        got = _DESCRIBED.get((prefix, fp))
        if got is None:
            missing.append(fp)
        else:
            out[fp] = got
    if missing:
        replies = _pipelined(r, [("hmget", (k.stats_fp(fp), ["op", "text"])) for fp in missing for k in ks])
        n = len(ks)
        for i, fp in enumerate(missing):
            op = text = None
            for op_, text_ in replies[i * n:(i + 1) * n]:
                if text_ is not None:
                    op, text = op_ or "", text_
                    break
            if text is None:
                out[fp] = ("", "")  # evicted or not described yet: asked again next time
                continue
            if len(_DESCRIBED) > 100_000:
                _DESCRIBED.clear()
            out[fp] = _DESCRIBED[(prefix, fp)] = (op, text)
    return out


def _split(member: str) -> tuple[str, str, str]:
    fp, db, app = ([*member.split("|", 2), "", ""])[:3]
    return fp, db, app


# ── top statements ───────────────────────────────────────────────────────────────────────────────
def _scores(r: Any, ks: list[Keys], by: str) -> dict[str, float]:
    """A stats:top sorted set whole, summed over shards."""
    replies = _pipelined(r, [("zrange", (k.stats_top(by), 0, -1, False, True)) for k in ks])
    out: dict[str, float] = {}
    for reply in replies:
        for member, score in reply:
            out[member] = out.get(member, 0.0) + float(score)
    return out


def _read_q(r: Any, ks: list[Keys], members: Sequence[str]) -> list[dict[str, Any]]:
    replies = _pipelined(r, [("hgetall", (k.stats_q(m),)) for m in members for k in ks])
    n = len(ks)
    return [_merge_q(replies[i * n:(i + 1) * n]) for i in range(len(members))]


def _scan(r: Any, k: Keys, *args: str) -> list[str]:
    """readmodel.lua on one shard (its keys share the shard's slot: the call goes to that node)."""
    return r.register_script(SCAN)(keys=[k.stats_top("time"), k.stats_last], args=list(args))


def _scan_fields(r: Any, ks: list[Keys], fields: Sequence[str]) -> list[dict[str, list[str]]]:
    """Per shard: member → the values of `fields` in its stats:q ("" when absent), one script call a shard."""
    out = []
    for k in ks:
        flat = _scan(r, k, "fields", k.stats_q(""), *fields)
        out.append({flat[i]: flat[i + 1].split(",") for i in range(0, len(flat), 2)})
    return out


def _user_rows(r: Any, ks: list[Keys], user: str) -> dict[str, dict[str, Any]]:
    """fp|db|app → that user's counters (from stats:u), read by one script call a shard."""
    out: dict[str, dict[str, Any]] = {}
    names = _USER_FIELDS
    for k in ks:
        flat = _scan(r, k, "user", k.stats_users(""), user)
        for i in range(0, len(flat), 2):
            values = [int(v) for v in flat[i + 1].split(":")]
            row = out.get(flat[i])
            if row is None:
                out[flat[i]] = dict(zip(names, values, strict=True))
                continue
            for name, v in zip(names, values, strict=True):
                row[name] = max(row[name], v) if name == "max_us" else row[name] + v
    return out


def _int(v: str) -> int:
    return int(v) if v else 0


def _p99s(r: Any, ks: list[Keys], members: Sequence[str]) -> dict[str, float]:
    """member → its p99 (µs), each shard's computed by the script from its histogram; over several shards the
    largest (a ranking needs no more: the rows shown take theirs from the merged histograms)."""
    bounds = [str(int(b * 1e6)) for b in BUCKETS]
    out: dict[str, float] = {}
    for k in ks:
        flat = _scan(r, k, "p99", k.stats_q(""), "0.99", *bounds)
        for i in range(0, len(flat), 2):
            v = float(flat[i + 1])
            if v > out.get(flat[i], -1.0):
                out[flat[i]] = v
    wanted = set(members)
    return {m: v for m, v in out.items() if m in wanted}


def _sums(r: Any, ks: list[Keys], field: str) -> dict[str, int]:
    """member → one counter of stats:q, summed over shards."""
    out: dict[str, int] = {}
    for part in _scan_fields(r, ks, [field]):
        for member, (value,) in part.items():
            out[member] = out.get(member, 0) + _int(value)
    return out


def users_of(r: Any, ks: list[Keys], fp: str) -> list[dict[str, Any]]:
    """A fingerprint's per-user rows: db, app, user, calls, total_us, mean_us, rows, errors, max_us."""
    rows: dict[tuple[str, str, str], dict[str, int]] = {}
    for k in ks:
        for field, value in r.hgetall(k.stats_users(fp)).items():
            parts = field.split("|")
            numbers = value.split(":")
            if len(parts) < 3 or len(numbers) != len(_USER_FIELDS):
                continue
            key = (parts[0], "|".join(parts[1:-1]), parts[-1])
            row = rows.setdefault(key, {})
            for what, v in zip(_USER_FIELDS, map(int, numbers), strict=True):
                row[what] = max(row.get(what, v), v) if what == "max_us" else row.get(what, 0) + v
    out = []
    for (db, app, user), row in rows.items():
        calls = row.get("calls", 0)
        out.append({"db": db, "app": app, "user": user, "calls": calls, "total_us": row.get("total_us", 0),
                    "mean_us": round(row.get("total_us", 0) / calls, 1) if calls else 0.0,
                    "rows": row.get("rows", 0), "errors": row.get("errors", 0), "max_us": row.get("max_us", 0)})
    out.sort(key=lambda x: (-x["total_us"], x["user"]))
    return out


class _Candidates:
    """The entries that pass a view's filters, read once, ranked as many ways as asked."""

    def __init__(self, r: Any, ks: list[Keys], db: str | None, app: str | None, user: str | None,
                 fold: bool) -> None:
        self.r, self.ks, self.user = r, ks, user
        times = _scores(r, ks, "time")
        calls = _scores(r, ks, "calls")
        split = {m: _split(m) for m in times}
        members = [m for m, (_, d, a) in split.items() if (db is None or d == db) and (app is None or a == app)]
        self.descriptions = describe(r, ks, {split[m][0] for m in members})
        self.folded = {"calls": 0, "total_us": 0, "entries": 0}
        if fold:
            control = {fp for fp, (op, text) in self.descriptions.items() if is_control(op, text)}
            kept = []
            for m in members:
                if split[m][0] in control:
                    self.folded["calls"] += int(calls.get(m, 0))
                    self.folded["total_us"] += int(times.get(m, 0))
                    self.folded["entries"] += 1
                else:
                    kept.append(m)
            members = kept
        self.per_user: dict[str, dict[str, Any]] | None = None
        if user is not None:
            self.per_user = _user_rows(r, ks, user)
            members = [m for m in members if m in self.per_user]
            times = {m: float(self.per_user[m].get("total_us", 0)) for m in members}
            calls = {m: float(self.per_user[m].get("calls", 0)) for m in members}
        self.members, self.times, self.calls = members, times, calls

    def ranked(self, sort: str) -> list[str]:
        members, times, calls = list(self.members), self.times, self.calls
        if sort == "time":
            members.sort(key=lambda m: (-times.get(m, 0), m))
        elif sort == "calls":
            members.sort(key=lambda m: (-calls.get(m, 0), m))
        elif sort == "mean":
            members.sort(key=lambda m: (-(times.get(m, 0) / calls[m] if calls.get(m) else 0), m))
        elif sort == "errors" and self.per_user is None:
            errors = _scores(self.r, self.ks, "errors")
            members = [m for m in members if errors.get(m, 0) > 0]
            members.sort(key=lambda m: (-errors.get(m, 0), m))
        else:  # rows, p99 (and errors per user): one value of every candidate, read by a script a shard
            per_user = self.per_user
            if sort == "p99":
                p99 = _p99s(self.r, self.ks, members)
                keyed = [(p99.get(m, 0.0), m) for m in members]
            elif per_user is not None:
                keyed = [(float(per_user[m].get(sort, 0)), m) for m in members]
            else:
                sums = _sums(self.r, self.ks, sort)
                keyed = [(float(sums.get(m, 0)), m) for m in members]
            if sort == "errors":
                keyed = [x for x in keyed if x[0] > 0]
            keyed.sort(key=lambda x: (-x[0], x[1]))
            members = [m for _, m in keyed]
        return members

    def rows(self, chosen: list[str]) -> list[dict[str, Any]]:
        out = []
        for m, q in zip(chosen, _read_q(self.r, self.ks, chosen), strict=True):
            if not q:
                continue  # evicted between the two reads (retention.py)
            fp, db_, app_ = _split(m)
            row = {"fp": fp, "db": db_, "app": app_, "user": self.user, **figures(q)}
            row.pop("histogram")
            if self.per_user is not None:
                mine = self.per_user[m]
                c = int(mine.get("calls", 0))
                row.update(calls=c, total_us=int(mine.get("total_us", 0)), rows=int(mine.get("rows", 0)),
                           errors=int(mine.get("errors", 0)), max_us=int(mine.get("max_us", 0)),
                           mean_us=round(int(mine.get("total_us", 0)) / c, 1) if c else 0.0, min_us=None,
                           stddev_us=None)
            op, text = self.descriptions.get(fp, ("", ""))
            row["op"], row["text"] = op, text
            out.append(row)
        return out


def top_statements_by(r: Any, ks: list[Keys], sorts: Sequence[str], limit: int = 20, db: str | None = None,
                      app: str | None = None, user: str | None = None, fold: bool = True) -> dict[str, dict[str, Any]]:
    """`top_statements` for several sorts at once (the reads shared): sort → its answer."""
    for sort in sorts:
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
    c = _Candidates(r, ks, db, app, user, fold)
    return {sort: {"sort": sort, "rows": c.rows(c.ranked(sort)[:limit]), "matched": len(c.members),
                   "folded": dict(c.folded)} for sort in sorts}


def top_statements(r: Any, ks: list[Keys], sort: str = "time", limit: int = 20, db: str | None = None,
                   app: str | None = None, user: str | None = None, fold: bool = True) -> dict[str, Any]:
    """The top fingerprint × db × app entries by `sort` (SORTS), filtered by db/app/user (exact names).

    Returns {"sort", "rows": [entry, …], "matched": entries that passed the filters, "folded": {"calls",
    "total_us", "entries"} of the transaction-control statements left out (fold=False keeps them)}. An entry:
    fp, db, app, user (the filter, else None), op, text, calls, total_us, mean_us, min_us, max_us, stddev_us,
    p50_us, p95_us, p99_us, rows, errors, by_state, last_ts. With a user filter the numbers are that user's
    (per-user rows carry no histogram: their percentiles are the entry's)."""
    return top_statements_by(r, ks, [sort], limit, db, app, user, fold)[sort]


def filters(r: Any, ks: list[Keys]) -> dict[str, list[str]]:
    """The databases, applications and users the summary holds (what the filters can name)."""
    dbs, apps, users = set(), set(), set()
    for m in _scores(r, ks, "calls"):
        _, db, app = _split(m)
        dbs.add(db)
        apps.add(app)
    fps = [fp for k in ks for fp in r.zrange(k.stats_last, 0, -1)]
    for reply in _pipelined(r, [("hkeys", (k.stats_users(fp),)) for fp in set(fps) for k in ks]):
        for field in reply:
            users.add(field.rsplit("|", 1)[-1])
    return {"db": sorted(dbs), "app": sorted(apps), "user": sorted(users)}


# ── one fingerprint ──────────────────────────────────────────────────────────────────────────────
def _json(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def samples(r: Any, ks: list[Keys], fp: str) -> dict[str, list[dict[str, Any]]]:
    """A fingerprint's slowest executions (slowest first) and most recent ones (newest first), merged over
    shards: each with sql, params (as captured: redacted values stay `***`), dur_us, rows, err, errmsg, app,
    user, db, client, sid, txid, ts and the stream entry id."""
    slow: list[dict[str, Any]] = []
    recent: list[dict[str, Any]] = []
    for k in ks:
        slow += [s for s in (_json(m) for m in r.zrevrange(k.samples_slow(fp), 0, -1)) if s]
        recent += [s for s in (_json(m) for m in r.lrange(k.samples_recent(fp), 0, -1)) if s]
    slow.sort(key=lambda s: (-int(s.get("dur_us", 0)), s.get("id", "")))
    recent.sort(key=lambda s: (-int(s.get("ts", 0)), s.get("id", "")))
    return {"slowest": slow, "recent": recent}


def series(r: Any, ks: list[Keys], fp: str, minutes: int = 60, now: float | None = None) -> list[dict[str, Any]]:
    """A fingerprint's last `minutes` minutes of event time with statements, oldest first, merged over shards:
    [{minute (epoch seconds of its start), calls, total_us, mean_us, errors}]."""
    since = int((time.time() if now is None else now) // 60) - minutes
    per: dict[int, list[int]] = {}
    for k in ks:
        for value in r.hvals(k.stats_series(fp)):
            parts = value.split(":")
            if len(parts) != 4:
                continue
            minute, calls, us, errors = (int(x) for x in parts)
            if minute <= since:
                continue
            got = per.setdefault(minute, [0, 0, 0])
            got[0] += calls
            got[1] += us
            got[2] += errors
    return [{"minute": m * 60, "calls": c, "total_us": u, "mean_us": round(u / c, 1) if c else 0.0, "errors": e}
            for m, (c, u, e) in sorted(per.items())]


def plan(r: Any, ks: list[Keys], fp: str) -> dict[str, Any] | None:
    """The fingerprint's EXPLAIN as plans.py recorded it: status (ok, refused, timeout, error), reason, plan
    (the JSON plan), sql, params, dur_us of the sample explained, at (epoch s); the newest over shards."""
    best: dict[str, Any] | None = None
    for k in ks:
        got = r.hgetall(k.plan(fp))
        if got and (best is None or float(got.get("at", 0)) > float(best.get("at", 0))):
            best = got
    if best is None:
        return None
    out: dict[str, Any] = dict(best)
    if "plan" in out:
        out["plan"] = _json(out["plan"])
    if "params" in out:
        out["params"] = _json(out["params"])
    for field in ("at",):
        if field in out:
            out[field] = float(out[field])
    for field in ("dur_us", "mean_us"):
        if field in out:
            out[field] = int(float(out[field]))
    return out


def shapes(r: Any, ks: list[Keys], app: str | None = None, limit: int = 50,
           ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Transaction shapes (txshapes.py), most frequent first: shape, app, fps (the folded sequence: consecutive
    repeats appear once, `repeats` says how often each came when the shape was first seen), count, mean_us
    (first start to last end), db_mean_us (the statements' own time), max_us, stmts_per_txn, rollback_rate,
    last_ts (µs)."""
    wanted = sorted({s for k in ks for s in r.zrange(k.txshapes, 0, -1)} if ids is None else set(ids))
    replies = _pipelined(r, [("hgetall", (k.txshape(s),)) for s in wanted for k in ks])
    n = len(ks)
    out = []
    for i, shape in enumerate(wanted):
        merged_: dict[str, Any] = {}
        for part in replies[i * n:(i + 1) * n]:
            for field, value in part.items():
                if field in ("app", "fps", "repeats", "first_ts"):
                    merged_.setdefault(field, value)
                elif field in ("max_us", "last_ts"):
                    merged_[field] = max(merged_.get(field, 0), int(value))
                else:
                    merged_[field] = merged_.get(field, 0) + int(value)
        if not merged_ or (app is not None and merged_.get("app") != app):
            continue
        count = merged_.get("count", 0)
        out.append({"shape": shape, "app": merged_.get("app", ""),
                    "fps": [x for x in merged_.get("fps", "").split(",") if x],
                    "repeats": [int(x) for x in merged_.get("repeats", "").split(",") if x],
                    "count": count, "mean_us": round(merged_.get("span_us", 0) / count, 1) if count else 0.0,
                    "db_mean_us": round(merged_.get("db_us", 0) / count, 1) if count else 0.0,
                    "max_us": merged_.get("max_us", 0),
                    "stmts_per_txn": round(merged_.get("stmts", 0) / count, 2) if count else 0.0,
                    "rollback_rate": round(merged_.get("rolled_back", 0) / count, 4) if count else 0.0,
                    "last_ts": merged_.get("last_ts", 0)})
    out.sort(key=lambda s: (-s["count"], s["shape"]))
    return out[:limit]


def statement(r: Any, ks: list[Keys], fp: str) -> dict[str, Any] | None:
    """One fingerprint: fp, text, op, tables, first_seen, its figures over every db × app (with the latency
    histogram), each entry's figures, its last hour by minute (`series`), per-user rows, samples, plan, and the
    transaction shapes it appears in.
    None when Redis holds nothing of it."""
    info = merged.stats_fp(r, ks, fp)
    members = sorted({m for k in ks for m in r.smembers(k.stats_members(fp))})
    entries = []
    qs = _read_q(r, ks, [f"{fp}|{m}" for m in members])
    for m, q in zip(members, qs, strict=True):
        if q:
            db, _, app = m.partition("|")
            entries.append({"db": db, "app": app, **figures(q)})
    if not info and not entries:
        return None
    whole = _merge_q(qs)
    fig = figures(whole)
    hist = fig.pop("histogram")
    for e in entries:
        e.pop("histogram")
    entries.sort(key=lambda e: (-e["total_us"], e["db"], e["app"]))
    shape_ids = {s for k in ks for s in r.smembers(k.txshapes_of(fp))}
    return {"fp": fp, "text": info.get("text", ""), "op": info.get("op", ""),
            "tables": [t for t in info.get("tables", "").split(",") if t],
            "first_seen": int(info["first_seen"]) if info.get("first_seen", "").isdigit() else None,
            "parse_error": info.get("parse_error"), **fig, "histogram": histogram(hist), "entries": entries,
            "series": series(r, ks, fp), "users": users_of(r, ks, fp), "samples": samples(r, ks, fp),
            "plan": plan(r, ks, fp),
            "shapes": shapes(r, ks, ids=shape_ids, limit=len(shape_ids) or 1) if shape_ids else []}


# ── business metrics ─────────────────────────────────────────────────────────────────────────────
def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def rules(r: Any, ks: list[Keys]) -> dict[str, dict[str, Any]]:
    """rule → its description as the workers published it (aggregate, scale, labels, value, table …)."""
    out = {}
    for name, raw in r.hgetall(ks[0].biz_rules).items():
        desc = _json(raw)
        if isinstance(desc, dict):
            out[name] = desc
    return dict(sorted(out.items()))


def _values(r: Any, ks: list[Keys], name: str, desc: dict[str, Any], day: str) -> dict[str, Any]:
    aggregate = desc.get("aggregate", "sum")
    values = merged.biz_decimals(r, ks, name, day, aggregate, int(desc.get("scale", 0) or 0))
    if desc.get("value") == "rows":
        values = {labels: v.to_integral_value() for labels, v in values.items()}
    names = [label.lstrip("@") for label in desc.get("labels", [])]
    rows = [{"labels": dict(zip(names, label_values(labels, names), strict=True)), "key": labels,
             "value": decimal_text(v)} for labels, v in sorted(values.items(), key=lambda x: (-x[1], x[0]))]
    total = None
    if aggregate in ("sum", "count") and values:
        total = decimal_text(sum(values.values(), Decimal(0)))
    elif aggregate in ("max", "min") and values:
        total = decimal_text(max(values.values()) if aggregate == "max" else min(values.values()))
    return {"values": rows, "total": total,
            "rows_only": sum(merged.biz_rows_only(r, ks, name, day).values())}


def business(r: Any, ks: list[Keys], day: str | None = None) -> dict[str, Any]:
    """Every rule's value on `day` (UTC, default today): {"day", "rules": [{rule, aggregate, scale, labels
    (names), description, values: [{labels: {name: value}, key, value (decimal string)}], total, rows_only}]}.
    A distinct rule's total is not the sum of its label sets' counts: it is left None."""
    day = day or _today()
    out = []
    for name, desc in rules(r, ks).items():
        out.append({"rule": name, "aggregate": desc.get("aggregate"), "scale": desc.get("scale", 0),
                    "labels": [label.lstrip("@") for label in desc.get("labels", [])],
                    "description": desc.get("description", ""), **_values(r, ks, name, desc, day)})
    return {"day": day, "rules": out}


def business_days(r: Any, ks: list[Keys], rule: str, limit: int = 31) -> dict[str, Any]:
    """One rule by day, oldest first (the newest `limit` days with data): {"rule", "aggregate", "labels",
    "days": [{day, values, total, rows_only}]}."""
    desc = rules(r, ks).get(rule)
    if desc is None:
        return {"rule": rule, "aggregate": None, "labels": [], "days": []}
    days = sorted(merged.biz_days(r, ks, rule))[-limit:]
    return {"rule": rule, "aggregate": desc.get("aggregate"),
            "labels": [label.lstrip("@") for label in desc.get("labels", [])],
            "days": [{"day": d, **_values(r, ks, rule, desc, d)} for d in days]}


# ── alerts ───────────────────────────────────────────────────────────────────────────────────────
ALERT_KINDS = ("security", "anomaly", "n_plus_one", "new_category")


def alerts(r: Any, ks: list[Keys], limit: int = 50, kind: str | None = None) -> list[dict[str, Any]]:
    """The newest alerts over shards, newest first: every field as written (kind, rule, severity, evidence,
    app, fp, text …) plus id and at_ms (the entry's time). kind: only that kind (ALERT_KINDS)."""
    streams = [k.alerts for k in ks]
    want = limit if kind is None else limit * 10
    out = []
    for entry_id, fields in merged.latest(r, streams, want):
        if kind is not None and fields.get("kind", "security") != kind:
            continue
        out.append({"id": entry_id, "at_ms": int(entry_id.partition("-")[0]), **fields})
        if len(out) >= limit:
            break
    return out


def alert_counts(r: Any, ks: list[Keys]) -> dict[str, int]:
    """rule → findings counted (every occurrence, also those the dedup kept off the stream)."""
    return dict(sorted(merged.alert_counts(r, ks).items()))


# ── streams, workers, proxies ────────────────────────────────────────────────────────────────────
def streams(r: Any, ks: list[Keys]) -> list[dict[str, Any]]:
    """Each statement stream: name, length (statements), entries, pending and undelivered entries of the
    analyzers' group, trimmed (statements the cap removed before the group read them), last_age (seconds since
    the newest entry), consumers."""
    now = time.time()
    out = []
    for k in ks:
        row: dict[str, Any] = {"stream": k.statements, "length": 0, "entries": 0, "pending": None,
                               "undelivered": None, "trimmed": int(r.hget(k.trimmed, GROUP) or 0),
                               "last_age": None, "consumers": None}
        try:
            info = r.xinfo_stream(k.statements)
            groups = r.xinfo_groups(k.statements)
        except Exception:  # no stream yet (ResponseError; on a cluster, its own error types)
            out.append(row)
            continue
        held = r.hmget(k.held, "statements", "entries")
        length = int(info.get("length", 0))
        row["entries"] = length
        row["length"] = int(held[0]) if held[1] is not None and int(held[1]) == length else length
        ms = int(str(info.get("last-generated-id") or "0-0").partition("-")[0])
        if ms:
            row["last_age"] = round(now - ms / 1000, 3)
        for g in groups:
            if g["name"] == GROUP:
                row["pending"] = int(g.get("pending") or 0)
                row["consumers"] = int(g.get("consumers") or 0)
                more = g.get("last-delivered-id") != info.get("last-generated-id")
                if not more or g.get("lag") is not None:
                    row["undelivered"] = undelivered(g, more)
        out.append(row)
    return out


def workers(r: Any, ks: list[Keys]) -> list[dict[str, Any]]:
    """Each worker's last heartbeat (name, statements, entries, rate per second, pending, lag_entries,
    lag_seconds, unparsed, host, pid, ts) and its age in seconds; `stale` past 30 s."""
    now = time.time()
    out = []
    for name, raw in sorted(r.hgetall(ks[0].workers).items()):
        beat = _json(raw)
        if not isinstance(beat, dict):
            continue
        beat["name"] = name
        beat["age"] = round(now - float(beat.get("ts", 0)), 3)
        beat["stale"] = beat["age"] > 30
        out.append(beat)
    return out


def sinks(r: Any, prefix: str) -> list[dict[str, str]]:
    """The proxies' sink instances that wrote to Redis (their resend markers `<prefix>:sink:{…}:<instance>`).
    Their dropped and spooled counts are on each proxy's /metrics, not in Redis."""
    out = []
    for key in sorted(r.scan_iter(match=f"{prefix}:sink:*", count=1000)):
        name = key.decode() if isinstance(key, bytes) else key
        out.append({"key": name, "instance": name.rsplit(":", 1)[-1]})
    return out


def totals(r: Any, ks: list[Keys]) -> dict[str, int]:
    """Statements, errors, unparsed and bad events the workers counted (all time), and fingerprints held."""
    out = dict(merged.stats_totals(r, ks))
    out["fingerprints"] = len({fp for k in ks for fp in r.zrange(k.stats_last, 0, -1)}) if len(ks) > 1 \
        else int(r.zcard(ks[0].stats_last))
    return out


# ── ledger cache ─────────────────────────────────────────────────────────────────────────────────
def ledger_days(r: Any, prefix: str, table: str = "gl_entries") -> list[dict[str, Any]]:
    """Days of the ledger table cached in Redis (glcache/store.py): day, rows, loaded_at, load seconds,
    patches applied and pending, ttl seconds; newest first. Days listed but no longer cached are left out."""
    base = f"{prefix}:gl:{{{table}}}"
    days = sorted(r.smembers(f"{base}:days"), reverse=True)
    out = []
    for day in days:
        day = day.decode() if isinstance(day, bytes) else day
        key = f"{base}:{day}"
        meta_raw, dn = r.hmget(key, "meta", "dn")
        if not meta_raw:
            continue
        meta = _json(meta_raw.decode() if isinstance(meta_raw, bytes) else meta_raw) or {}
        ttl = r.pttl(key)
        applied = int(meta.get("applied", 0) or 0)
        out.append({"day": day, "table": table, "rows": meta.get("rows"), "loaded_at": meta.get("loaded_at"),
                    "load_seconds": meta.get("seconds", meta.get("load_seconds")), "patches": int(dn or 0),
                    "patches_pending": max(0, int(dn or 0) - applied),
                    "ttl": round(ttl / 1000, 1) if ttl and ttl > 0 else None})
    return out


def overview(r: Any, ks: list[Keys]) -> dict[str, Any]:
    """The header of a view: totals, alert counts, the streams summed and the workers."""
    st = streams(r, ks)
    ages = [s["last_age"] for s in st if s["last_age"] is not None]
    return {"prefix": ks[0].p, "shards": len(ks), "at": time.time(), "totals": totals(r, ks),
            "alert_counts": alert_counts(r, ks), "streams": st,
            "stream": {"length": sum(s["length"] for s in st), "trimmed": sum(s["trimmed"] for s in st),
                       "pending": sum(s["pending"] or 0 for s in st) if any(s["pending"] is not None for s in st)
                       else None,
                       "undelivered": sum(s["undelivered"] or 0 for s in st)
                       if any(s["undelivered"] is not None for s in st) else None,
                       "last_age": min(ages) if ages else None},
            "workers": workers(r, ks)}

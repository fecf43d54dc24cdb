"""Per-statement performance: per fingerprint × db × app × user calls, errors by SQLSTATE, rows, latency.

Two outputs. Redis (`<prefix>:stats:*`, exactly once, shared by all workers): counters per
fp|db|app (min, max, sum of squares for the standard deviation, and the latency histogram's buckets,
from which readers take percentiles), per fingerprint its rows per db|app|user (`stats:u`, at most
`stats_max_users` rows a fingerprint in each worker, the rest as `<db>|other|other`), the normalised text per
fingerprint, and sorted sets for "top by time / calls / errors".
Prometheus (per worker): counters and a latency histogram, with the label cardinality capped: the
top-K fingerprints, the top applications and the top users by total time keep their own series, the
rest are summed into `other`. Applications are capped too because some set application_name per
process or per host (`worker-4711`); without a cap a week of restarts becomes thousands of series per
fingerprint; users alike (a role per tenant).
Hot path: plain lists and ints per key; Prometheus objects are only built at scrape time.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .keys import Keys

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BUCKETS_US = tuple(int(b * 1e6) for b in BUCKETS)
OTHER = "other"

HIST_FIELDS = tuple(f"h{i}" for i in range(len(BUCKETS) + 1))  # stats:q fields of the buckets, then +Inf

# Per key: [calls, total_us, rows, errors, max_us, last_ts, {sqlstate: n}, bucket counts, min_us, Σ µs²]
CALLS, TOTAL, ROWS, ERRORS, MAX, LAST, BY_STATE, HIST, MIN, SUMSQ = range(10)


def _new() -> list:
    return [0, 0, 0, 0, 0, 0, {}, [0] * (len(_BUCKETS_US) + 1), -1, 0]


class UserCap:
    """At most `per_fp` db × app × user rows a fingerprint in `stats:u` (this worker's memory of which; the rest
    are summed as `<db>|other|other`): a role per tenant, or an application name per process, must not grow a
    fingerprint's hash without end."""

    __slots__ = ("per_fp", "seen")

    def __init__(self, per_fp: int = 100) -> None:
        self.per_fp = per_fp
        self.seen: dict[str, set[str]] = {}

    def __call__(self, fp: str, db: str, app: str, user: str) -> str:
        who = f"{db}|{app}|{user}"
        rows = self.seen.get(fp)
        if rows is None:
            if len(self.seen) > 50_000:
                self.seen.clear()
            rows = self.seen[fp] = set()
        if who in rows:
            return who
        if len(rows) >= self.per_fp:
            return f"{db}|{OTHER}|{OTHER}"
        rows.add(who)
        return who


class BatchStats:
    """One batch's statement stats, before commit."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data: dict[tuple[str, str, str], list] = {}

    def add(self, fp: str, db: str, app: str, dur_us: int, rows: int, err: str, ts: int, user: str = "") -> None:
        key = (fp, db, app, user)
        s = self.data.get(key)
        if s is None:
            s = self.data[key] = _new()
        s[CALLS] += 1
        s[TOTAL] += dur_us
        s[ROWS] += rows
        s[SUMSQ] += dur_us * dur_us
        if dur_us > s[MAX]:
            s[MAX] = dur_us
        if dur_us < s[MIN] or s[MIN] < 0:
            s[MIN] = dur_us
        if ts > s[LAST]:
            s[LAST] = ts
        if err:
            s[ERRORS] += 1
            by = s[BY_STATE]
            by[err] = by.get(err, 0) + 1
        s[HIST][bisect.bisect_left(_BUCKETS_US, dur_us)] += 1

    def errors(self) -> dict[str, int]:
        """fp → its failed statements in the batch (only fingerprints with some)."""
        out: dict[str, int] = {}
        for (fp, _db, _app, _user), s in self.data.items():
            if s[ERRORS]:
                out[fp] = out.get(fp, 0) + s[ERRORS]
        return out

    def entries(self) -> dict[tuple[str, str, str], list]:
        """The batch's stats per fp|db|app, its users summed (one user an entry, the common case, is not copied)."""
        out: dict[tuple[str, str, str], list] = {}
        copied: set[tuple[str, str, str]] = set()
        for (fp, db, app, _user), s in self.data.items():
            key = (fp, db, app)
            cur = out.get(key)
            if cur is None:
                out[key] = s
                continue
            if key not in copied:
                cur = out[key] = _copy(cur)
                copied.add(key)
            _add(cur, s)
        return out

    def write(self, writes, keys: Keys, users: UserCap | None = None) -> None:
        """Redis effects: counters per fp|db|app, per user rows per fingerprint, the top sorted sets, and per
        fingerprint its last-seen time and members (what the cap's eviction needs: retention.py)."""
        calls = errors = 0
        per_fp: dict[str, tuple[list[str], list[int]]] = {}  # fp → (["<db>|<app>", …], [its newest ts, …])
        hist_fields = HIST_FIELDS
        for (fp, db, app), s in self.entries().items():
            seen = per_fp.get(fp)
            if seen is None:
                per_fp[fp] = ([f"{db}|{app}"], [s[LAST]])
            else:
                seen[0].append(f"{db}|{app}")
                seen[1].append(s[LAST])
            member = f"{fp}|{db}|{app}"
            q = keys.stats_q(member)
            writes.hincr(q, "calls", s[CALLS])
            writes.hincr(q, "total_us", s[TOTAL])
            writes.hincrf(q, "sumsq_us", s[SUMSQ])
            if s[ROWS]:
                writes.hincr(q, "rows", s[ROWS])
            if s[ERRORS]:
                writes.hincr(q, "errors", s[ERRORS])
                for state, n in s[BY_STATE].items():
                    writes.hincr(q, f"err:{state}", n)
                writes.zincr_(keys.stats_top("errors"), member, s[ERRORS])
            for i, n in enumerate(s[HIST]):
                if n:
                    writes.hincr(q, hist_fields[i], n)
            writes.hmax(q, "max_us", s[MAX])
            writes.hmin(q, "min_us", s[MIN])
            writes.hmax(q, "last_ts", s[LAST])
            writes.zincr_(keys.stats_top("time"), member, s[TOTAL])
            writes.zincr_(keys.stats_top("calls"), member, s[CALLS])
            calls += s[CALLS]
            errors += s[ERRORS]
        for (fp, db, app, user), s in self.data.items():
            who = f"{db}|{app}|{user}" if users is None else users(fp, db, app, user)
            writes.add_op(("UROW", keys.stats_users(fp), who, str(s[CALLS]), str(s[TOTAL]), str(s[ROWS]),
                           str(s[ERRORS]), str(s[MAX])))
        last = keys.stats_last
        for fp, (members, times) in per_fp.items():
            writes.touch(last, fp, keys.stats_fp(fp), keys.stats_members(fp), keys.stats_entries, members,
                         [ts // 1_000_000 for ts in times])
        if calls:
            writes.hincr(keys.stats_totals, "calls", calls)
        if errors:
            writes.hincr(keys.stats_totals, "errors", errors)


def _copy(s: list) -> list:
    out = list(s)
    out[BY_STATE] = dict(s[BY_STATE])
    out[HIST] = list(s[HIST])
    return out


def _add(cur: list, s: list) -> None:
    """Add one key's stats into another's (extremes compared)."""
    for i in (CALLS, TOTAL, ROWS, ERRORS, SUMSQ):
        cur[i] += s[i]
    if s[MAX] > cur[MAX]:
        cur[MAX] = s[MAX]
    if s[LAST] > cur[LAST]:
        cur[LAST] = s[LAST]
    if s[MIN] >= 0 and (cur[MIN] < 0 or s[MIN] < cur[MIN]):
        cur[MIN] = s[MIN]
    by = cur[BY_STATE]
    for state, n in s[BY_STATE].items():
        by[state] = by.get(state, 0) + n
    hist = cur[HIST]
    for i, n in enumerate(s[HIST]):
        if n:
            hist[i] += n


class StatsCollector(Collector):
    """Process-wide statement stats for Prometheus, merged from committed batches."""

    def __init__(self, top_k: int = 50, top_apps: int = 20, max_keys: int = 20000, top_users: int = 20) -> None:
        self.top_k = top_k
        self.top_apps = top_apps
        self.top_users = top_users
        self.max_keys = max_keys
        self.data: dict[tuple[str, str, str, str], list] = {}
        self.info: dict[str, tuple[str, str]] = {}  # fp → (op, text)
        self.lock = threading.Lock()

    def merge(self, batch: BatchStats) -> None:
        with self.lock:
            data = self.data
            for key, s in batch.data.items():
                cur = data.get(key)
                if cur is None:
                    if len(data) >= self.max_keys:  # full: fold the fingerprint, then the application and user
                        key = (OTHER, key[1], key[2], key[3])
                        cur = data.get(key)
                        if cur is None:
                            key = (OTHER, key[1], OTHER, OTHER)
                            cur = data.get(key)
                    if cur is None:
                        cur = data[key] = _new()
                cur[CALLS] += s[CALLS]
                cur[TOTAL] += s[TOTAL]
                cur[ROWS] += s[ROWS]
                cur[ERRORS] += s[ERRORS]
                for state, n in s[BY_STATE].items():
                    cur[BY_STATE][state] = cur[BY_STATE].get(state, 0) + n
                hist = cur[HIST]
                for i, n in enumerate(s[HIST]):
                    if n:
                        hist[i] += n

    def describe_fp(self, fp: str, op: str, text: str) -> None:
        with self.lock:
            if len(self.info) < self.max_keys:
                self.info[fp] = (op, text)

    def top(self) -> tuple[set[str], set[str], set[str]]:
        """Fingerprints, applications and users that keep their own series: the top ones by total time."""
        per_fp: dict[str, int] = {}
        per_app: dict[str, int] = {}
        per_user: dict[str, int] = {}
        for (fp, _db, app, user), s in self.data.items():
            per_fp[fp] = per_fp.get(fp, 0) + s[TOTAL]
            per_app[app] = per_app.get(app, 0) + s[TOTAL]
            per_user[user] = per_user.get(user, 0) + s[TOTAL]
        for per in (per_fp, per_app, per_user):
            per.pop(OTHER, None)  # what is already folded takes no place among the top ones

        def best(per: dict[str, int], n: int) -> set[str]:
            return set(sorted(per, key=per.__getitem__, reverse=True)[:n])
        return best(per_fp, self.top_k), best(per_app, self.top_apps), best(per_user, self.top_users)

    def folded(self) -> tuple[dict[tuple[str, str, str, str], list], dict[str, tuple[str, str]]]:
        """The data with fingerprints, applications and users outside the top ones summed into `other`."""
        with self.lock:
            keep, apps, users = self.top()
            out: dict[tuple[str, str, str, str], list] = {}
            for (fp, db, app, user), s in self.data.items():
                key = (fp if fp in keep else OTHER, db, app if app in apps else OTHER,
                       user if user in users else OTHER)
                cur = out.get(key)
                if cur is None:
                    cur = out[key] = _new()
                for i in (CALLS, TOTAL, ROWS, ERRORS):
                    cur[i] += s[i]
                for state, n in s[BY_STATE].items():
                    cur[BY_STATE][state] = cur[BY_STATE].get(state, 0) + n
                for i, n in enumerate(s[HIST]):
                    cur[HIST][i] += n
            info = {fp: self.info[fp] for fp in keep if fp in self.info}
        return out, info

    def collect(self) -> Iterator[Metric]:
        data, info = self.folded()
        labels = ["fingerprint", "db", "app", "user"]
        calls = CounterMetricFamily("fasterdata_statements", "Statements seen, per fingerprint (top-K by "
                                    "total time, top applications and users; the rest as \"other\")",
                                    labels=labels)
        rows = CounterMetricFamily("fasterdata_statement_rows", "Rows returned or affected", labels=labels)
        errors = CounterMetricFamily("fasterdata_statement_errors", "Failed statements by SQLSTATE",
                                     labels=[*labels, "sqlstate"])
        hist = HistogramMetricFamily("fasterdata_statement_duration_seconds",
                                     "Statement latency as the proxy measured it", labels=labels)
        for (fp, db, app, user), s in data.items():
            lv = [fp, db, app, user]
            calls.add_metric(lv, s[CALLS])
            rows.add_metric(lv, s[ROWS])
            for state, n in s[BY_STATE].items():
                errors.add_metric([*lv, state], n)
            cumulative = []
            acc = 0
            for bound, n in zip(BUCKETS, s[HIST], strict=False):
                acc += n
                cumulative.append((repr(bound), acc))
            cumulative.append(("+Inf", acc + s[HIST][-1]))
            hist.add_metric(lv, cumulative, s[TOTAL] / 1e6)
        yield calls
        yield rows
        yield errors
        yield hist
        fpinfo = GaugeMetricFamily("fasterdata_fingerprint_info", "Normalised text of the top fingerprints",
                                   labels=["fingerprint", "op", "text"])
        for fp, (op, text) in info.items():
            fpinfo.add_metric([fp, op, text[:200]], 1)
        yield fpinfo

"""Per fingerprint, real executions to look at: the slowest N and the most recent N, with their SQL and bound
parameters exactly as the proxy captured them (redacted there; nothing here undoes it).

A batch keeps, per fingerprint, a reference to each statement's event (hot path: one list append); at
write time it picks the batch's slowest and newest few and writes them with the batch's commit: `ZKEEP`
adds the slow ones to `samples:slow:<fp>`, which keeps its N highest durations, `LKEEP` pushes the recent
ones onto `samples:recent:<fp>`, which keeps its N newest, and stamps the fingerprint in `samples:fps`
(what the drill sweep, drilldown.py, removes with the fingerprint). Slow candidates no slower than the
N-th slowest this worker has already written are not sent; a fingerprint's recent samples are written at
most every `samples_every` seconds by each worker (a busy fingerprint is in every batch, and its samples,
JSON inside the commit's JSON, would be much of the batch's arguments).

With `series_minutes`, the same items give each fingerprint's per-minute series (`stats:ts:<fp>`: calls, µs
and errors a minute of event time, a ring of that many minutes).

A sample is JSON: id (the stream entry), ts, dur_us, rows, err, errmsg, sql, params and ptypes (the event's
JSON arrays, as text), app, user, db, client, sid, txid, proto.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from .atomic import Writes
from .keys import Keys

Item = tuple[int, str, dict[str, str], int]  # (dur_us, stream entry id, event, ts)
_FIELDS = ("ts", "rows", "err", "errmsg", "sql", "params", "ptypes", "app", "user", "db", "client", "sid", "txid",
           "proto")
_DUR = itemgetter(0)


def sample_json(item: Item) -> str:
    dur, entry_id, ev = item[0], item[1], item[2]
    out: dict[str, Any] = {"id": entry_id, "dur_us": dur}
    get = ev.get
    for f in _FIELDS:
        v = get(f)
        if v is not None:
            out[f] = v
    return json.dumps(out, separators=(",", ":"))


class Samples:
    """Chooses and writes a batch's samples; remembers per fingerprint the slowest durations it wrote."""

    def __init__(self, n: int, minutes: int = 0, every: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.n = n
        self.minutes = minutes  # the per-minute series' length (0: none)
        self.every = every  # seconds between two writes of a fingerprint's recent samples
        self.clock = clock
        self.written: dict[str, float] = {}  # fp → when its recent samples were last written
        self.slowest: dict[str, list[int]] = {}  # fp → the n largest durations written (a min-heap)

    def floor(self, fp: str) -> int:
        """Durations at or below this would not enter the fingerprint's slowest n (-1: any would)."""
        top = self.slowest.get(fp)
        return top[0] if top is not None and len(top) >= self.n else -1

    def choose(self, items: list[Item]) -> tuple[list[Item], list[Item]]:
        """(slow candidates, slowest first; the recent ones, oldest first) of one fingerprint's batch items."""
        n = self.n
        slow = heapq.nlargest(n, items, key=_DUR) if len(items) > n else sorted(items, key=_DUR, reverse=True)
        return slow, items[-n:]

    def write(self, writes: Writes, keys: Keys, per_fp: dict[str, list[Item]], now_s: int,
              errors: dict[str, int] | None = None) -> dict[str, list[Item]]:
        """Add the batch's samples to its writes; returns fp → the slow samples sent (for `committed`).
        errors: fp → the batch's failed statements of it (the series' errors need not be counted again)."""
        sent: dict[str, list[Item]] = {}
        if self.minutes:
            self.write_series(writes, keys, per_fp, errors)
        index = keys.drill_index
        if not self.n:
            for fp in per_fp:
                writes.add_op(["ZGT", index, fp, str(now_s)])
            return sent
        keep = str(self.n)
        now = self.clock()
        due = now - self.every
        written = self.written
        if len(written) > 100_000:
            written.clear()
        for fp, items in per_fp.items():
            floor = self.floor(fp)
            if max(items, key=_DUR)[0] > floor:
                slow, recent = self.choose(items)
                slow = [x for x in slow if x[0] > floor]
            else:  # nothing in the batch is slower than what is kept (the common case once warmed up)
                slow, recent = [], items[-self.n:]
            if slow:
                op = ["ZKEEP", keys.samples_slow(fp), keep, str(len(slow))]
                for item in slow:
                    op.append(str(item[0]))
                    op.append(sample_json(item))
                writes.add_op(op)
                sent[fp] = slow
            if written.get(fp, -1e18) <= due:
                written[fp] = now
                writes.add_op(["LKEEP", keys.samples_recent(fp), keep, index, fp, str(now_s), str(len(recent)),
                               *map(sample_json, recent)])
        return sent

    def write_series(self, writes: Writes, keys: Keys, per_fp: dict[str, list[Item]],
                     errors: dict[str, int] | None = None) -> None:
        """Per fingerprint and minute of event time: calls, µs and errors (op `TS`, a ring of `minutes` slots)."""
        slots = str(self.minutes)
        for fp, items in per_fp.items():
            first, last = items[0][3] // 60_000_000, items[-1][3] // 60_000_000
            key = keys.stats_series(fp)
            if first == last:  # the common case: the batch's statements of a fingerprint fall in one minute
                if first > 0:
                    failed = errors.get(fp, 0) if errors is not None else sum("err" in x[2] for x in items)
                    writes.add_op(["TS", key, slots, str(first), str(len(items)), str(sum(map(_DUR, items))),
                                   str(failed)])
                continue
            per: dict[int, list[int]] = {}
            for dur, _, ev, ts in items:
                minute = ts // 60_000_000
                got = per.get(minute)
                if got is None:
                    got = per[minute] = [0, 0, 0]
                got[0] += 1
                got[1] += dur
                if "err" in ev:
                    got[2] += 1
            for minute, (calls, us, failed_in_minute) in per.items():
                if minute > 0:
                    writes.add_op(["TS", key, slots, str(minute), str(calls), str(us), str(failed_in_minute)])

    def committed(self, sent: dict[str, list[Item]]) -> None:
        """The slow samples are in Redis: raise the floors."""
        n = self.n
        if len(self.slowest) > 100_000:
            self.slowest.clear()
        for fp, items in sent.items():
            top = self.slowest.setdefault(fp, [])
            for dur, *_ in items:
                if len(top) < n:
                    heapq.heappush(top, dur)
                elif dur > top[0]:
                    heapq.heapreplace(top, dur)

    def forget(self, fps: set[str]) -> None:
        """Fingerprints whose samples were removed: any duration may enter again."""
        for fp in fps:
            self.slowest.pop(fp, None)

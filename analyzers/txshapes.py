"""Transaction shapes and N+1 statements: what an application does in one transaction, and the loops in it.

A shape is, per application, the sequence of fingerprints of one explicit transaction with consecutive
repeats folded (BEGIN, SELECT a, SELECT b ×40, UPDATE c, COMMIT is BEGIN → a → b → c → COMMIT; `repeats` keeps
how often each came the first time the shape was seen). Its id is a short hash of the application and
the sequence. Per shape, Redis keeps (`txshape:<id>`): count, span_us (first statement's start to the last
one's end, think time included), db_us (the statements' own time), max_us (the longest span), stmts,
rolled_back, last_ts, and `txshapes` indexes every shape by when it was last seen (the cap,
`txn_shapes_max` a shard, evicts the oldest: drilldown.py); `txshapes:fp:<fp>` lists the shapes a
fingerprint appears in.

The proxy holds a transaction's statements until it ends, so they arrive together and in order; this
worker folds a transaction when its COMMIT / ROLLBACK / END / ABORT / PREPARE TRANSACTION arrives, or when the
session's next transaction starts (a transaction whose end never comes is dropped past a bound). Two
workers splitting one transaction between their batches each see a part: shapes are a picture of the
workload, not exact accounting.

N+1: the same fingerprint executed at least `n_plus_one` times with different parameters (bound values,
or the literal text on the simple protocol) in one transaction, or (with `n_plus_one_window` > 0) outside
transactions in one session within that many seconds, is a finding (`n_plus_one`, written with findings.py) naming the
fingerprint, the count and the transaction's shape.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from .atomic import Writes
from .findings import Alerter
from .keys import Keys

SEVERITY = "warning"
_ENDS = ("commit", "end", "rollback", "abort", "prepare")
_NOT_ENDS = ("rollback to", "rollback prepared", "commit prepared")
_MAX_OPEN = 20000  # transactions (and sessions) followed at once before the memo starts again


class ShapeBatch(Protocol):
    writes: Writes
    keys: Keys
    findings: list[tuple[str, str]]
    shapes: dict[str, list[Any]]


class _Txn:
    """A transaction in progress: who ran it, and per statement (fp, dur_us, ts, event, text), folded at its end
    (one append a statement on the hot path)."""

    __slots__ = ("app", "ev", "items", "txid")

    def __init__(self, txid: str, app: str, ev: dict[str, str]) -> None:
        self.txid = txid
        self.app = app
        self.ev = ev  # the first statement's event: who ran the transaction
        self.items: list[tuple[str, int, int, dict[str, str], str]] = []


def _ends(text: str) -> bool:
    """Whether a transaction-control statement ends its transaction."""
    low = text[:20].lower()
    return low.startswith(_ENDS) and not low.startswith(_NOT_ENDS)


def shape_id(app: str, fps: list[str]) -> str:
    return hashlib.blake2b(("\0".join([app, *fps])).encode(), digest_size=8).hexdigest()


class Transactions:
    """Follows each session's open transaction; folds it into its shape's batch aggregate when it ends."""

    def __init__(self, alerter: Alerter, shapes: bool = True, n_plus_one: int = 0, window_s: float = 0.0) -> None:
        self.alerter = alerter
        self.shapes_on = shapes
        self.n = n_plus_one
        self.window_us = int(window_s * 1_000_000)
        self.open: dict[str, _Txn] = {}  # sid → its transaction in progress
        self.bursts: dict[str, dict[str, list[Any]]] = {}  # sid → fp → [window start, count, params, flagged]
        self.ids: dict[tuple[str, tuple[str, ...]], str] = {}
        self.described: set[str] = set()  # shapes whose fixed fields and fingerprint links this process wrote
        self.ending: dict[str, bool] = {}  # transaction-control fingerprint → whether it ends its transaction
        self.on = shapes or n_plus_one > 0

    def add(self, batch: ShapeBatch, ev: dict[str, str], fp: str, op: str, text: str, dur: int, ts: int,
            txn: str, app: str) -> None:
        """One statement (hot path)."""
        get = ev.get
        sid = get("sid", "")
        if txn == "autocommit":
            if self.n and self.window_us:
                self._burst(batch, sid, ev, fp, text, ts)
            return
        txid = get("txid", "")
        t = self.open.get(sid)
        if t is None or t.txid != txid:
            if t is not None:
                self.finish(batch, t, "")
            if len(self.open) >= _MAX_OPEN:
                self.open.clear()
            t = self.open[sid] = _Txn(txid, app, ev)
        t.items.append((fp, dur, ts, ev, text))
        if op != "txn":
            return
        ends = self.ending.get(fp)
        if ends is None:
            if len(self.ending) > 10_000:
                self.ending.clear()
            ends = self.ending[fp] = _ends(text)
        if ends:
            del self.open[sid]
            self.finish(batch, t, txn)

    def end_marker(self, batch: ShapeBatch, sid: str, txid: str, outcome: str) -> None:
        """A txn_end event: the transaction sent early has ended (if it is the one followed)."""
        t = self.open.get(sid)
        if t is not None and t.txid == txid:
            del self.open[sid]
            self.finish(batch, t, outcome)

    def finish(self, batch: ShapeBatch, t: _Txn, outcome: str) -> None:
        """Fold an ended transaction into its shape's aggregate in this batch, and report its N+1 loops."""
        items = t.items
        if not items:
            return
        seq: list[str] = []
        reps: list[int] = []
        first = items[0][2]
        end = first
        db_us = 0
        last = ""
        for fp, dur, ts, _ev, _text in items:
            if fp == last:
                reps[-1] += 1
            else:
                seq.append(fp)
                reps.append(1)
                last = fp
            db_us += dur
            if ts + dur > end:
                end = ts + dur
        key = (t.app, tuple(seq))
        shape = self.ids.get(key)
        if shape is None:
            if len(self.ids) > 50_000:
                self.ids.clear()
            shape = self.ids[key] = shape_id(t.app, seq)
        rolled = 1 if (outcome or items[-1][3].get("txn", "")) == "rolled_back" else 0
        span = max(0, end - first)
        if self.shapes_on:
            agg = batch.shapes.get(shape)
            if agg is None:
                # app, fps, repeats, count, span, db_us, max span, stmts, rolled back, last ts, first ts
                agg = batch.shapes[shape] = [t.app, seq, reps, 0, 0, 0, 0, 0, 0, 0, first]
            agg[3] += 1
            agg[4] += span
            agg[5] += db_us
            agg[6] = max(agg[6], span)
            agg[7] += len(items)
            agg[8] += rolled
            agg[9] = max(agg[9], end)
        n = self.n
        if n and len(items) >= n:  # fewer statements cannot hold n of one fingerprint
            counts: dict[str, int] = {}
            for fp, _, _, _, _ in items:
                counts[fp] = counts.get(fp, 0) + 1
            for fp, count in counts.items():
                if count < n:
                    continue
                distinct = {ev.get("params") or ev.get("sql", "") for f, _, _, ev, _ in items if f == fp}
                if len(distinct) >= min(n, 2):
                    text = next(x for f, _, _, _, x in items if f == fp)
                    self._report(batch, t.ev, fp, text, count, f"in one transaction (shape {shape}: "
                                 f"{len(seq)} steps, {len(items)} statements)", shape, first)

    def _burst(self, batch: ShapeBatch, sid: str, ev: dict[str, str], fp: str, text: str, ts: int) -> None:
        per = self.bursts.get(sid)
        if per is None:
            if len(self.bursts) >= _MAX_OPEN:
                self.bursts.clear()
            per = self.bursts[sid] = {}
        got = per.get(fp)
        if got is None or ts - got[0] > self.window_us:
            if len(per) > 1000:
                per.clear()
            got = per[fp] = [ts, 0, set(), False]
        got[1] += 1
        if got[3]:
            return
        if len(got[2]) < self.n:
            got[2].add(ev.get("params") or ev.get("sql", ""))
        if got[1] >= self.n and len(got[2]) >= min(self.n, 2):
            got[3] = True
            self._report(batch, ev, fp, text, got[1], f"in one session within {self.window_us / 1e6:g}s, outside "
                         "a transaction", "", got[0])

    def _report(self, batch: ShapeBatch, ev: dict[str, str], fp: str, text: str, count: int, where: str,
                shape: str, ts: int) -> None:
        fields = {"kind": "n_plus_one", "rule": "n_plus_one", "severity": SEVERITY, "ts": str(ts),
                  "sid": ev.get("sid", ""), "client": ev.get("client", ""), "user": ev.get("user", ""),
                  "db": ev.get("db", ""), "app": ev.get("app", ""), "fp": fp, "text": text[:300],
                  "count": str(count), "shape": shape,
                  "evidence": f"executed {count} times with different parameters {where}"}
        self.alerter.write(batch, fields)

    def write(self, batch: ShapeBatch) -> None:
        """The batch's shape aggregates into its writes."""
        if not batch.shapes:
            return
        keys = batch.keys
        w = batch.writes
        index = keys.txshapes
        for sid_, (app, fps, reps, count, span, db_us, top, stmts, rolled, last, first) in batch.shapes.items():
            k = keys.txshape(sid_)
            w.hincr(k, "count", count)
            w.hincr(k, "span_us", span)
            w.hincr(k, "db_us", db_us)
            w.hincr(k, "stmts", stmts)
            if rolled:
                w.hincr(k, "rolled_back", rolled)
            w.hmax(k, "max_us", top)
            w.hmax(k, "last_ts", last)
            w.add_op(["ZGT", index, sid_, str(last // 1_000_000)])
            if sid_ not in self.described:
                w.setnx(k, "app", app)
                w.setnx(k, "fps", ",".join(fps))
                w.setnx(k, "repeats", ",".join(map(str, reps)))
                w.setnx(k, "first_ts", str(first))
                for fp in set(fps):
                    w.sadd.add((keys.txshapes_of(fp), sid_))

    def committed(self, batch: ShapeBatch) -> None:
        if len(self.described) > 100_000:
            self.described.clear()
        self.described.update(batch.shapes)

    def forget(self, shapes: set[str]) -> None:
        """Shapes evicted from Redis: describe them again if they come back."""
        self.described -= shapes

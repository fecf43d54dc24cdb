"""`fasterdata top`: a live terminal view of what the analyzers keep in Redis.

Everything comes from Redis (no worker needed to be reachable), so it works from any host with
access to Redis, over ssh included. `snapshot()` reads, `render()` draws; `--once` prints one frame.
With `stream_shards` ≥ 2 every number is merged over the shards (analyzers/merged.py).
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import redis
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import merged
from .keys import GROUP, Keys, shard_keys
from .streams import undelivered


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _num(value: Decimal) -> str:
    """As exact as stored: a sum keeps its scale's decimals (12.50 stays 12.50)."""
    return f"{value:,}"


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}" if us < 10_000_000 else f"{us / 1e6:.0f}s"


def _labelled(row: dict[str, Any]) -> Text:
    """One statement from two applications is two rows: name the application, or they look doubled."""
    return Text(f"[{row['app'] or '—'}] {row['text']}")


def _top(r: redis.Redis, ks: list[Keys], by: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for member, score in merged.top_members(r, ks, by, n):
        if by == "errors" and score <= 0:
            continue
        fp, db, app = ([*member.split("|", 2), "", ""])[:3]
        q = merged.stats_q(r, ks, member)
        if not q:
            continue  # evicted between the two reads (retention.py): nothing left to show
        info = merged.stats_fp(r, ks, fp)
        calls = int(q.get("calls", 0))
        total = int(q.get("total_us", 0))
        errs = {f[4:]: int(v) for f, v in q.items() if f.startswith("err:")}
        rows.append({"fp": fp, "db": db, "app": app, "calls": calls, "total_us": total,
                     "mean_us": total / calls if calls else 0, "max_us": int(q.get("max_us", 0)),
                     "rows": int(q.get("rows", 0)), "errors": int(q.get("errors", 0)), "by_state": errs,
                     "op": info.get("op", ""), "text": info.get("text", "")})
    return rows


def _lag(r: redis.Redis, ks: list[Keys], now: float) -> dict[str, Any]:
    """The statement streams summed: statements held, pending and undelivered entries, age of the newest event."""
    lag: dict[str, Any] = {"length": 0, "last_age": None, "pending": None, "undelivered": None, "trimmed": 0}
    for k in ks:
        lag["trimmed"] += int(r.hget(k.trimmed, GROUP) or 0)  # by the stream cap before the group read them
        try:
            info = r.xinfo_stream(k.statements)
            groups = r.xinfo_groups(k.statements)
        except redis.ResponseError:
            continue  # no stream yet
        held = r.hmget(k.held, "statements", "entries")  # kept by a capped sink; else one an entry
        length = info.get("length", 0)
        lag["length"] += int(held[0]) if held[1] is not None and int(held[1]) == length else length
        ms = int(str(info.get("last-generated-id") or "0-0").partition("-")[0])
        if ms:
            age = now - ms / 1000
            lag["last_age"] = age if lag["last_age"] is None else min(lag["last_age"], age)
        for g in groups:
            if g["name"] == GROUP:
                if g.get("pending") is not None:
                    lag["pending"] = (lag["pending"] or 0) + int(g["pending"])
                more = g.get("last-delivered-id") != info.get("last-generated-id")
                if not more or g.get("lag") is not None:
                    lag["undelivered"] = (lag["undelivered"] or 0) + undelivered(g, more)
    return lag


def snapshot(r: redis.Redis, prefix: str, n: int = 10, day: str | None = None, shards: int = 1) -> dict[str, Any]:
    """Everything one frame shows, read from Redis (merged over `shards` statement streams)."""
    k = Keys(prefix)
    ks = shard_keys(prefix, shards)
    now = time.time()
    day = day or time.strftime("%Y-%m-%d", time.gmtime(now))
    snap: dict[str, Any] = {"prefix": prefix, "at": now, "day": day}
    snap["by_time"] = _top(r, ks, "time", n)
    snap["by_calls"] = _top(r, ks, "calls", n)
    snap["by_errors"] = _top(r, ks, "errors", n)
    snap["totals"] = merged.stats_totals(r, ks)
    business = []
    for name, raw in sorted(r.hgetall(k.biz_rules).items()):
        desc = json.loads(raw)
        aggregate = desc.get("aggregate", "sum")
        values = merged.biz_decimals(r, ks, name, day, aggregate, desc.get("scale", 0))
        if desc.get("value") == "rows":  # row counts are whole numbers, whatever the scale
            values = {labels: v.to_integral_value() for labels, v in values.items()}
        parsed = sorted(values.items(), key=lambda x: x[1], reverse=True)
        rows_only = merged.biz_rows_only(r, ks, name, day)
        business.append({"rule": name, "aggregate": desc.get("aggregate"), "values": parsed,
                         "rows_only": sum(rows_only.values())})
    snap["business"] = business
    snap["alerts"] = [{"id": entry_id, **fields} for entry_id, fields in merged.latest(r, [x.alerts for x in ks], n)]
    snap["alert_counts"] = merged.alert_counts(r, ks)
    snap["lag"] = _lag(r, ks, now)
    workers = []
    for name, raw in sorted(r.hgetall(k.workers).items()):
        try:
            beat = json.loads(raw)
        except ValueError:
            continue
        beat["name"] = name
        beat["age"] = now - float(beat.get("ts", 0))
        workers.append(beat)
    snap["workers"] = workers
    return snap


def render(snap: dict[str, Any]) -> Group:
    """One frame as rich renderables."""
    parts: list[Any] = []
    totals = snap["totals"]
    head = Text.assemble(
        ("fasterdata top", "bold"), f"  prefix {snap['prefix']}  ",
        f"statements {int(totals.get('calls', 0)):,}  errors {int(totals.get('errors', 0)):,}  "
        f"unparsed {int(totals.get('unparsed', 0)):,}  ",
        time.strftime("%H:%M:%S", time.localtime(snap["at"])))
    parts.append(head)

    t = Table(title="Top fingerprints by total time", box=box.SIMPLE_HEAD, expand=True, title_justify="left")
    for col, kw in (("fingerprint", {}), ("app", {}), ("calls", {"justify": "right"}),
                    ("total s", {"justify": "right"}), ("mean ms", {"justify": "right"}),
                    ("max ms", {"justify": "right"}), ("rows", {"justify": "right"}),
                    ("err", {"justify": "right"}), ("statement", {"ratio": 1, "no_wrap": True})):
        t.add_column(col, **kw)
    for row in snap["by_time"]:
        t.add_row(row["fp"][:8], Text(row["app"] or "—"), f"{row['calls']:,}", f"{row['total_us'] / 1e6:,.2f}",
                  _ms(row["mean_us"]), _ms(row["max_us"]), f"{row['rows']:,}",
                  Text(str(row["errors"]), style="red" if row["errors"] else ""), Text(row["text"]))
    parts.append(t)

    t = Table(title="Top by calls / by errors", box=box.SIMPLE_HEAD, expand=True, title_justify="left")
    t.add_column("calls", justify="right")
    t.add_column("statement", ratio=1, no_wrap=True)
    t.add_column("errors", justify="right")
    t.add_column("SQLSTATE")
    t.add_column("failing statement", ratio=1, no_wrap=True)
    calls, errors = snap["by_calls"][:5], snap["by_errors"][:5]
    for i in range(max(len(calls), len(errors))):
        c = calls[i] if i < len(calls) else None
        e = errors[i] if i < len(errors) else None
        t.add_row(f"{c['calls']:,}" if c else "", _labelled(c) if c else "",
                  Text(f"{e['errors']:,}", style="red") if e else "",
                  ",".join(sorted(e["by_state"])) if e else "", _labelled(e) if e else "")
    parts.append(t)

    t = Table(title=f"Business metrics ({snap['day']}, UTC)", box=box.SIMPLE_HEAD, expand=True,
              title_justify="left")
    t.add_column("metric")
    t.add_column("agg")
    t.add_column("labels", ratio=1)
    t.add_column("value", justify="right")
    for b in snap["business"]:
        shown = b["values"][:3] or [("", None)]
        for i, (labels, value) in enumerate(shown):
            t.add_row(b["rule"] if i == 0 else "", b["aggregate"] if i == 0 else "",
                      Text("" if labels == "-" else labels.replace("|", " ")),
                      "—" if value is None else _num(value))
        if b["rows_only"]:
            t.add_row("", "", Text("rows without values (INSERT … SELECT / COPY)", style="dim"),
                      f"{b['rows_only']:,}")
    parts.append(t)

    t = Table(title="Latest alerts", box=box.SIMPLE_HEAD, expand=True, title_justify="left")
    for col in ("time", "severity", "rule", "app", "evidence"):
        t.add_column(col, ratio=1 if col == "evidence" else None, no_wrap=col == "evidence")
    styles = {"high": "bold red", "critical": "bold red", "medium": "yellow", "warning": "yellow"}
    for a in snap["alerts"]:
        ms = int(a["id"].partition("-")[0])
        t.add_row(time.strftime("%H:%M:%S", time.localtime(ms / 1000)),
                  Text(a.get("severity", ""), style=styles.get(a.get("severity", ""), "")),
                  a.get("rule", ""), Text(a.get("app", a.get("metric", ""))), Text(a.get("evidence", "")))
    parts.append(t)

    lag = snap["lag"]
    t = Table(title="Sink and workers", box=box.SIMPLE_HEAD, expand=True, title_justify="left")
    t.caption = "pending and undelivered: stream entries (a bundled entry holds up to 100 statements)"
    for col in ("source", "statements", "rate/s", "pending", "undelivered", "lag", "last seen"):
        t.add_column(col, justify="right" if col != "source" else "left")
    t.add_row("statements stream", f"{lag['length']:,}", "", str(lag["pending"] if lag["pending"] is not None
                                                              else "—"),
              str(lag["undelivered"] if lag["undelivered"] is not None else "—"), "",
              _age(lag["last_age"]))
    if lag["trimmed"]:
        t.add_row(Text("trimmed before analysis (stream_maxlen)", style="red"),
                  Text(f"{lag['trimmed']:,}", style="red"), "", "", "", "", "")
    for w in snap["workers"]:
        stale = w["age"] > 30
        t.add_row(Text(w["name"], style="dim" if stale else ""), f"{int(w.get('statements', w.get('entries', 0))):,}",
                  f"{w.get('rate', 0):,.0f}", str(w.get("pending", "")), str(w.get("lag_entries", "")),
                  _age(w.get("lag_seconds")), Text(_age(w["age"]), style="red" if stale else ""))
    parts.append(t)
    return Group(*parts)


def run(client: redis.Redis, prefix: str, once: bool = False, interval: float = 2.0,
        console: Console | None = None, shards: int = 1) -> int:
    console = console or Console()
    if once:
        console.print(render(snapshot(client, prefix, shards=shards)))
        return 0
    try:
        with Live(render(snapshot(client, prefix, shards=shards)), console=console, screen=False,
                  auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(snapshot(client, prefix, shards=shards)), refresh=True)
    except KeyboardInterrupt:
        return 0

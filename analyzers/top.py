"""`fasterdata top`: a live terminal view of what the analyzers keep in Redis.

Everything comes from Redis through the read model (readmodel.py, which the web console reads too), so it
works from any host with access to Redis, over ssh included, and merges `stream_shards` ≥ 2.
`snapshot()` reads, `render()` draws; `--once` prints one frame, `--json` the read model's answers.
Statements are ranked by `--sort` (time, calls, mean, p99, errors, rows) and filtered by `--db`, `--app`,
`--user`; BEGIN/COMMIT/ROLLBACK/SAVEPOINT/DEALLOCATE-class statements are folded into one line unless
`--all`. The live view quits on `q` (or Ctrl-C) and cycles the sort on `s`.

Width: on a terminal the frame takes the whole width, and the statement column keeps at least
STATEMENT_MIN characters (narrow terminals drop the columns that matter least first). Piped or redirected,
nothing is cut: statements and evidence wrap in full.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import redis
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import readmodel as rm
from .keys import shard_keys

SORT_TITLES = {"time": "total time", "calls": "calls", "mean": "mean time", "p99": "p99 latency",
               "errors": "errors", "rows": "rows"}
STATEMENT_MIN = 40  # characters the statement column keeps on a terminal
PIPE_WIDTH = 160  # the frame's width when not on a terminal (COLUMNS wins when larger)


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


def _ms(us: float | None) -> str:
    if us is None:
        return "—"
    return f"{us / 1000:.2f}" if us < 10_000_000 else f"{us / 1e6:.0f}s"


def _labelled(row: dict[str, Any]) -> Text:
    """One statement from two applications is two rows: name the application, or they look doubled."""
    return Text(f"[{row['app'] or '—'}] {row['text']}")


def snapshot(r: redis.Redis, prefix: str, n: int = 10, day: str | None = None, shards: int = 1, sort: str = "time",
             db: str | None = None, app: str | None = None, user: str | None = None,
             fold: bool = True) -> dict[str, Any]:
    """Everything one frame shows, read from Redis through the read model (merged over `shards` streams)."""
    ks = shard_keys(prefix, shards)
    now = time.time()
    day = day or time.strftime("%Y-%m-%d", time.gmtime(now))
    snap: dict[str, Any] = {"prefix": prefix, "at": now, "day": day, "sort": sort,
                            "filters": {"db": db, "app": app, "user": user}, "fold": fold}
    views = rm.top_statements_by(r, ks, list(dict.fromkeys([sort, "time", "calls", "errors"])), n, db, app, user,
                                 fold)
    snap["statements"] = views[sort]
    snap["by_time"], snap["by_calls"], snap["by_errors"] = (views[s]["rows"] for s in ("time", "calls", "errors"))
    snap["totals"] = rm.totals(r, ks)
    business = []
    for b in rm.business(r, ks, day)["rules"]:
        business.append({"rule": b["rule"], "aggregate": b["aggregate"],
                         "values": [(v["key"], Decimal(v["value"])) for v in b["values"]],
                         "rows_only": b["rows_only"]})
    snap["business"] = business
    snap["alerts"] = rm.alerts(r, ks, n)
    snap["alert_counts"] = rm.alert_counts(r, ks)
    streams = rm.streams(r, ks)
    ages = [s["last_age"] for s in streams if s["last_age"] is not None]
    pending = [s["pending"] for s in streams if s["pending"] is not None]
    undelivered = [s["undelivered"] for s in streams if s["undelivered"] is not None]
    snap["lag"] = {"length": sum(s["length"] for s in streams), "last_age": min(ages) if ages else None,
                   "pending": sum(pending) if pending else None,
                   "undelivered": sum(undelivered) if undelivered else None,
                   "trimmed": sum(s["trimmed"] for s in streams)}
    snap["workers"] = rm.workers(r, ks)
    return snap


def as_json(r: redis.Redis, prefix: str, n: int = 10, shards: int = 1, sort: str = "time", db: str | None = None,
            app: str | None = None, user: str | None = None, fold: bool = True) -> dict[str, Any]:
    """What `--json` prints: the read model's own answers (decimals as strings), nothing reshaped."""
    ks = shard_keys(prefix, shards)
    return {"statements": rm.top_statements(r, ks, sort, n, db, app, user, fold), "business": rm.business(r, ks),
            "alerts": rm.alerts(r, ks, n), "overview": rm.overview(r, ks)}


def _statement_column(table: Table, title: str, piped: bool) -> None:
    if piped:
        table.add_column(title, ratio=1, overflow="fold", min_width=STATEMENT_MIN)
    else:
        table.add_column(title, ratio=1, no_wrap=True, min_width=STATEMENT_MIN)


def _statements_table(snap: dict[str, Any], width: int, piped: bool) -> Table:
    view = snap["statements"]
    f = {k: v for k, v in snap["filters"].items() if v is not None}
    title = f"Top fingerprints by {SORT_TITLES[snap['sort']]}"
    if f:
        title += " (" + ", ".join(f"{k} {v}" for k, v in f.items()) + ")"
    t = Table(title=title, box=box.SIMPLE_HEAD, expand=True, title_justify="left")
    folded = view["folded"]
    if folded["entries"]:
        t.caption = (f"transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, DEALLOCATE and alike): "
                     f"{folded['calls']:,} calls, {folded['total_us'] / 1e6:,.2f} s, folded (--all shows them)")
    wide = width >= 150
    mid = width >= 120
    cols: list[tuple[str, Any]] = [("calls", lambda r: f"{r['calls']:,}"),
                                   ("total s", lambda r: f"{r['total_us'] / 1e6:,.2f}"),
                                   ("mean ms", lambda r: _ms(r["mean_us"])),
                                   ("p99 ms", lambda r: _ms(r["p99_us"]))]
    if mid:
        cols.append(("max ms", lambda r: _ms(r["max_us"])))
        cols.append(("rows", lambda r: f"{r['rows']:,}"))
    cols.append(("err", lambda r: Text(str(r["errors"]), style="red" if r["errors"] else "")))
    if wide:
        cols.insert(0, ("fingerprint", lambda r: r["fp"][:8]))
    for name, _ in cols:
        t.add_column(name, justify="left" if name == "fingerprint" else "right")
    t.add_column("app", max_width=None if piped else 14, overflow="fold" if piped else "ellipsis")
    _statement_column(t, "statement", piped)
    for row in view["rows"]:
        t.add_row(*(fn(row) for _, fn in cols), Text(row["app"] or "—"), Text(row["text"]))
    return t


def render(snap: dict[str, Any], width: int = 200, piped: bool = False) -> Group:
    """One frame as rich renderables (width: the console's; piped: nothing may be cut)."""
    parts: list[Any] = []
    totals = snap["totals"]
    head = Text.assemble(
        ("fasterdata top", "bold"), f"  prefix {snap['prefix']}  ",
        f"statements {int(totals.get('calls', 0)):,}  errors {int(totals.get('errors', 0)):,}  "
        f"unparsed {int(totals.get('unparsed', 0)):,}  ",
        time.strftime("%H:%M:%S", time.localtime(snap["at"])))
    parts.append(head)
    parts.append(_statements_table(snap, width, piped))

    t = Table(title="Top by calls / by errors", box=box.SIMPLE_HEAD, expand=True, title_justify="left")
    t.add_column("calls", justify="right")
    _statement_column(t, "statement", piped)
    t.add_column("errors", justify="right")
    t.add_column("SQLSTATE")
    _statement_column(t, "failing statement", piped)
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
    for col in ("time", "kind", "severity", "rule", "app"):
        t.add_column(col)
    if piped:
        t.add_column("evidence", ratio=1, overflow="fold")
    else:
        t.add_column("evidence", ratio=1, no_wrap=True)
    styles = {"high": "bold red", "critical": "bold red", "medium": "yellow", "warning": "yellow"}
    for a in snap["alerts"]:
        ms = int(a["id"].partition("-")[0])
        t.add_row(time.strftime("%H:%M:%S", time.localtime(ms / 1000)), a.get("kind", "security"),
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


def console_for(stream: Any = None) -> Console:
    """The whole terminal's width on a terminal; when piped, a wide frame in which nothing is cut."""
    stream = stream or sys.stdout
    if stream.isatty():
        return Console(file=stream)
    columns = int(os.environ.get("COLUMNS", "0") or 0)
    return Console(file=stream, width=max(columns, PIPE_WIDTH))


@contextlib.contextmanager
def keypresses() -> Iterator[Any]:
    """A function waiting up to `timeout` seconds for a key on the terminal (None: none came, or no terminal)."""
    stdin = sys.stdin
    if not stdin.isatty():
        def wait(timeout: float) -> str | None:
            time.sleep(timeout)
            return None
        yield wait
        return
    import termios
    import tty

    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def wait_key(timeout: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 1).decode(errors="replace") if ready else None
    try:
        yield wait_key
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(client: redis.Redis, prefix: str, once: bool = False, interval: float = 2.0, console: Console | None = None,
        shards: int = 1, sort: str = "time", db: str | None = None, app: str | None = None, user: str | None = None,
        fold: bool = True, json_out: bool = False, n: int = 10) -> int:
    if sort not in rm.SORTS:
        raise ValueError(f"sort must be one of {', '.join(rm.SORTS)}, not {sort!r}")
    if json_out:
        out = console.file if console is not None else sys.stdout
        out.write(json.dumps(as_json(client, prefix, n, shards, sort, db, app, user, fold), indent=2) + "\n")
        return 0
    console = console or console_for()
    piped = not console.is_terminal

    def frame() -> Group:
        return render(snapshot(client, prefix, n, shards=shards, sort=sort, db=db, app=app, user=user, fold=fold),
                      console.width, piped)

    if once:
        console.print(frame())
        return 0
    try:
        with keypresses() as key, Live(frame(), console=console, screen=False, auto_refresh=False) as live:
            deadline = time.monotonic() + interval
            while True:
                pressed = key(max(0.0, deadline - time.monotonic()))
                if pressed in ("q", "Q"):
                    return 0
                if pressed in ("s", "S"):
                    sort = rm.SORTS[(rm.SORTS.index(sort) + 1) % len(rm.SORTS)]
                elif pressed is not None:
                    continue
                live.update(frame(), refresh=True)
                deadline = time.monotonic() + interval
    except KeyboardInterrupt:
        return 0

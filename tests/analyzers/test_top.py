"""`fasterdata top`: one frame (--once) shows fingerprints, business metrics, alerts and lag."""

from __future__ import annotations

import io
import subprocess
import sys

import redis
from rich.console import Console

from fasterdata.analyzers import top
from fasterdata.proxy.streamkeys import stream_name, trimmed_key
from tests.kit.analysis import drain, make_worker
from tests.kit.eventwriter import Events
from tests.kit.processes import ROOT
from tests.kit.services import REDIS_URL


def populate(prefix: str, events: Events) -> None:
    with events:
        for i in range(30):
            events.stmt("INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4)",
                        [i, i, "eu", "10.00"], tag="INSERT", rows=1, dur_us=900)
        events.stmt("SELECT * FROM users WHERE name = 'x' OR 1=1", tag="SELECT", rows=3)
        events.stmt("SELECT * FROM missing_table", err="42P01")
    drain(make_worker(prefix))


def test_snapshot_reads_everything_from_redis(r: redis.Redis, prefix: str, events: Events) -> None:
    populate(prefix, events)
    stream = stream_name(prefix)
    assert r.xlen(stream) < 32  # bundled: the count of statements comes from what the proxy's sink keeps
    r.hset(f"{stream}:held", mapping={"statements": 32, "entries": r.xlen(stream)})
    snap = top.snapshot(r, prefix)
    assert snap["by_time"][0]["text"].startswith("INSERT INTO orders") and snap["by_time"][0]["calls"] == 30
    assert snap["by_errors"][0]["by_state"] == {"42P01": 1}
    sales = next(b for b in snap["business"] if b["rule"] == "sales")
    assert [(labels, str(v)) for labels, v in sales["values"]] == [("region=eu", "300.00")]
    assert snap["alerts"][0]["rule"] == "sqli_tautology"
    assert snap["lag"]["length"] == 32 and snap["lag"]["pending"] == 0 and snap["lag"]["trimmed"] == 0
    assert snap["workers"] == [] or snap["workers"][0]["name"] == "w1"


def test_once_prints_one_frame(r: redis.Redis, prefix: str, events: Events) -> None:
    populate(prefix, events)
    out = io.StringIO()
    assert top.run(r, prefix, once=True, console=Console(file=out, width=200, color_system=None)) == 0
    frame = out.getvalue()
    for needle in ("Top fingerprints by total time", "INSERT INTO orders", "sales", "region=eu", "300",
                   "sqli_tautology", "statements stream", "42P01"):
        assert needle in frame, needle
    business = {line.split()[0]: line.split()[-1] for line in frame.split("Business metrics")[1]
                .split("Latest alerts")[0].splitlines() if line.split() and line.split()[0] in (
                    "sales", "orders_placed", "biggest", "customers")}
    # sums keep their decimals, row counts are whole, extremes are as stored, distinct counts are counts
    assert business == {"sales": "300.00", "orders_placed": "30", "biggest": "10.00", "customers": "30"}
    assert "trimmed before analysis" not in frame
    r.hset(trimmed_key(stream_name(prefix)), "analyzers", 1234)  # as the proxy's stream trims count them
    out = io.StringIO()
    top.run(r, prefix, once=True, console=Console(file=out, width=200, color_system=None))
    [row] = [line.split() for line in out.getvalue().splitlines() if "trimmed before analysis" in line]
    assert row[-1] == "1,234"


def test_top_command_once(prefix: str, r: redis.Redis, events: Events) -> None:
    populate(prefix, events)
    proc = subprocess.run([sys.executable, "-m", "fasterdata", "top", "--once", "--redis", REDIS_URL,
                           "--prefix", prefix], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "Business metrics" in proc.stdout and "sqli_tautology" in proc.stdout


def test_calls_and_errors_name_the_application(r: redis.Redis, prefix: str, events: Events) -> None:
    """One statement from two applications is two rows; without the application they read as a duplicate."""
    with events:
        for app, n in (("shop-web", 5), ("shop-api", 3)):
            for i in range(n):
                events.stmt("UPDATE inventory SET qty = qty - $1 WHERE sku = $2", [1, f"S{i}"], tag="UPDATE",
                            rows=1, app=app)
            events.stmt("SELECT * FROM missing_table", err="42P01", app=app)
    drain(make_worker(prefix))
    out = io.StringIO()
    top.run(r, prefix, once=True, console=Console(file=out, width=220, color_system=None))
    calls = out.getvalue().split("Top by calls / by errors")[1].split("Business metrics")[0]
    assert "[shop-web] UPDATE inventory" in calls and "[shop-api] UPDATE inventory" in calls
    assert "[shop-web] SELECT * FROM missing_table" in calls and "[shop-api] SELECT * FROM missing_table" in calls


def test_statement_text_is_shown_as_sent_not_as_markup(r: redis.Redis, prefix: str, events: Events) -> None:
    """rich reads `[i]` as a style tag: array subscripts and bracketed labels must reach the screen as they are."""
    with events:
        events.stmt("SELECT tags[i] FROM items WHERE id = $1", [1], tag="SELECT", rows=1, app="[bold]app")
    drain(make_worker(prefix))
    out = io.StringIO()
    top.run(r, prefix, once=True, console=Console(file=out, width=220, color_system=None))
    frame = out.getvalue().split("Business metrics")[0]
    assert frame.count("SELECT tags[i] FROM items WHERE id = $1") == 2
    assert "[bold]app" in frame

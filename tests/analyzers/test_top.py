"""`fasterdata top`: one frame (--once) shows fingerprints, business metrics, alerts and lag."""

from __future__ import annotations

import io
import subprocess
import sys

import redis
from rich.console import Console

from analyzers import top
from tests.analyzers.kit import ROOT, Events, drain, make_worker
from tests.conftest import REDIS_URL


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
    snap = top.snapshot(r, prefix)
    assert snap["by_time"][0]["text"].startswith("INSERT INTO orders") and snap["by_time"][0]["calls"] == 30
    assert snap["by_errors"][0]["by_state"] == {"42P01": 1}
    sales = next(b for b in snap["business"] if b["rule"] == "sales")
    assert [(labels, str(v)) for labels, v in sales["values"]] == [("region=eu", "300.00")]
    assert snap["alerts"][0]["rule"] == "sqli_tautology"
    assert snap["lag"]["length"] == 32 and snap["lag"]["pending"] == 0
    assert snap["workers"] == [] or snap["workers"][0]["name"] == "w1"


def test_once_prints_one_frame(r: redis.Redis, prefix: str, events: Events) -> None:
    populate(prefix, events)
    out = io.StringIO()
    assert top.run(r, prefix, once=True, console=Console(file=out, width=200, color_system=None)) == 0
    frame = out.getvalue()
    for needle in ("Top fingerprints by total time", "INSERT INTO orders", "sales", "region=eu", "300",
                   "sqli_tautology", "statements stream", "42P01"):
        assert needle in frame, needle


def test_top_command_once(prefix: str, r: redis.Redis, events: Events) -> None:
    populate(prefix, events)
    proc = subprocess.run([sys.executable, "-m", "analyzers.cli", "top", "--once", "--redis", REDIS_URL,
                           "--prefix", prefix], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "Business metrics" in proc.stdout and "sqli_tautology" in proc.stdout

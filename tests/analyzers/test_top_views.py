"""`fasterdata top` through the read model: sort, filters, --json, folded transaction control, output that stays
readable when piped or on a 100-column terminal, and `q` quitting the live view."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time

import redis
from rich.console import Console

from fasterdata.analyzers import top
from tests.kit.analysis import drain, make_worker
from tests.kit.eventwriter import Events
from tests.kit.processes import ROOT
from tests.kit.services import REDIS_URL

LONG = ("SELECT o.id, o.customer_id, o.region, o.total, c.name, c.email FROM orders o JOIN customers c "
        "ON c.id = o.customer_id WHERE o.region = $1 AND o.total > $2 ORDER BY o.total DESC LIMIT $3")
SHORT = "UPDATE inventory SET qty = qty - $1 WHERE sku = $2"


def populate(prefix: str, events: Events) -> None:
    with events:
        for t in range(1, 4):
            events.stmt("BEGIN", tag="BEGIN", txn="committed", txid=t)
            for i in range(5):
                events.stmt(LONG, ["eu", i, 50], tag="SELECT", rows=3, txn="committed", txid=t, dur_us=5000, user="web")
            events.stmt("COMMIT", tag="COMMIT", txn="committed", txid=t)
        for i in range(40):
            events.stmt(SHORT, [1, f"S{i}"], tag="UPDATE", rows=1, dur_us=100, app="stock", user="batch")
        events.stmt("DEALLOCATE ALL", tag="DEALLOCATE ALL")
    worker = make_worker(prefix)
    try:
        drain(worker)
    finally:
        worker.close()


def frame(r: redis.Redis, prefix: str, width: int, terminal: bool, **kw) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=terminal, color_system=None)
    assert top.run(r, prefix, once=True, console=console, **kw) == 0
    return out.getvalue()


def statements(text: str) -> list[str]:
    section = text.split("Top fingerprints by")[1].split("Top by calls")[0]
    return [line for line in section.splitlines() if "transaction control" not in line and (
        "SELECT" in line or "UPDATE" in line or "BEGIN" in line or "COMMIT" in line or "DEALLOCATE" in line)]


def test_sort_filter_and_folded_control(r: redis.Redis, prefix: str, events: Events) -> None:
    populate(prefix, events)
    by_time = statements(frame(r, prefix, 220, False))
    assert len(by_time) == 2 and "SELECT o.id" in by_time[0] and "UPDATE inventory" in by_time[1]
    by_calls = statements(frame(r, prefix, 220, False, sort="calls"))
    assert "UPDATE inventory" in by_calls[0]
    text = frame(r, prefix, 220, False)
    assert "transaction control" in text and "7 calls" in text  # BEGIN ×3, COMMIT ×3, DEALLOCATE ALL
    shown = statements(frame(r, prefix, 220, False, fold=False, sort="calls"))
    assert any("COMMIT" in line for line in shown) and any("DEALLOCATE ALL" in line for line in shown)
    only = statements(frame(r, prefix, 220, False, app="stock"))
    assert len(only) == 1 and "UPDATE inventory" in only[0]
    web = frame(r, prefix, 220, False, user="web")
    assert "(user web)" in web and len(statements(web)) == 1 and "SELECT o.id" in statements(web)[0]
    assert statements(frame(r, prefix, 220, False, db="elsewhere")) == []


def test_piped_output_keeps_every_statement_whole(r: redis.Redis, prefix: str, events: Events) -> None:
    populate(prefix, events)
    proc = subprocess.run([sys.executable, "-m", "fasterdata", "top", "--once", "--redis", REDIS_URL, "--prefix",
                           prefix], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split("Top fingerprints by")[1].split("Top by calls")[0]
    assert "…" not in section
    joined = " ".join(line.strip().split("   ")[-1].strip() for line in section.splitlines())
    assert all(word in joined for word in LONG.split())  # wrapped, never cut


def test_a_100_column_terminal_keeps_the_statement_readable(r: redis.Redis, prefix: str, events: Events) -> None:
    populate(prefix, events)
    [first, _] = statements(frame(r, prefix, 100, True))
    statement = first[first.index("SELECT"):].rstrip().rstrip("…")
    assert len(statement) >= top.STATEMENT_MIN - 2, first
    assert len(first.rstrip()) <= 100


def test_json_is_the_read_models_answer(r: redis.Redis, prefix: str, events: Events) -> None:
    populate(prefix, events)
    proc = subprocess.run([sys.executable, "-m", "fasterdata", "top", "--json", "--sort", "calls", "--redis",
                           REDIS_URL, "--prefix", prefix], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = doc["statements"]["rows"]
    assert doc["statements"]["sort"] == "calls" and rows[0]["text"] == SHORT and rows[0]["calls"] == 40
    assert doc["statements"]["folded"]["calls"] == 7
    assert doc["overview"]["totals"]["calls"] == 62 and "rules" in doc["business"]


def test_q_quits_the_live_view(r: redis.Redis, prefix: str, events: Events) -> None:
    populate(prefix, events)
    main, tty = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "fasterdata", "top", "--interval", "0.2", "--redis", REDIS_URL,
                             "--prefix", prefix], stdin=tty, stdout=tty, stderr=tty, cwd=ROOT,
                            env={**os.environ, "COLUMNS": "120", "LINES": "60"})
    os.close(tty)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"Top fingerprints" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                seen += os.read(main, 65536)
        assert b"Top fingerprints" in seen, seen[-2000:]
        os.write(main, b"q")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)

"""How fast the console answers with many fingerprints in Redis: its JSON API and its page.

Not a timed test: it prints a table. Redis gets --fingerprints distinct statements (default 5,000, each
called from two applications by two users, inside BEGIN … COMMIT, with business inserts beside them)
under a prefix of its own, analysed by a real worker; then `fasterdata console` serves that prefix and
each request is timed from the client: the first one (read from Redis while the client waits), then
--repeat more at the page's polling period (each served at once while the console reads the next
answer behind it, fresh.py). With chromium installed the page is also loaded in a headless browser:
from navigation until the first view is drawn, charts included (plotly.js's parse is most of it).

    .venv/bin/python bench/console/run.py [--fingerprints 5000] [--repeat 20] [--output FILE]

Everything under the prefix is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import redis

from fasterdata.proxy.streamkeys import stream_name

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # benchkit
sys.path.insert(0, str(ROOT))
from benchkit import loadavg, publish  # noqa: E402

from fasterdata.analyzers.rules import load as load_rules  # noqa: E402
from fasterdata.analyzers.worker import Worker  # noqa: E402
from fasterdata.config.analyzer_settings import AnalyzerSettings  # noqa: E402
from fasterdata.proxy.events import BUNDLE_FIELD, bundle  # noqa: E402

APPS = ("shop-api", "shop-web")
USERS = ("app", "report")
BUDGET_MS = 200


def events(fingerprints: int, seed: int = 7):
    """Statement events: every fingerprint (a distinct column list) once per app and user, in transactions."""
    rng = random.Random(seed)
    ts = int(time.time() * 1e6)
    txid = 0
    for i in range(fingerprints):
        cols = ", ".join(f"c{i}_{j}" for j in range(1 + i % 3))
        sql = f"SELECT {cols} FROM items_{i % 97} WHERE id = $1"
        for app in APPS:
            for user in USERS:
                txid += 1
                sid = f"s{txid % 200}"
                base = {"v": "1", "kind": "stmt", "sid": sid, "client": "10.0.0.7:5000", "user": user, "db": "shop",
                        "app": app, "txid": str(txid), "txn": "committed"}
                total = f"{rng.randint(100, 100000) / 100:.2f}"
                batch = [("BEGIN", None, "BEGIN", 0), (sql, [rng.randint(1, 10**6)], "SELECT", 1)]
                if txid % 10 == 0:
                    batch.append(("INSERT INTO orders (id, customer_id, region, currency, total) "
                                  "VALUES ($1, $2, $3, $4, $5)",
                                  [txid, rng.randint(1, 5000), rng.choice(["eu", "us", "ap"]), "EUR", total],
                                  "INSERT", 1))
                batch.append(("COMMIT", None, "COMMIT", 0))
                for text, params, tag, rows in batch:
                    ts += rng.randint(5, 200)
                    e = {**base, "ts": str(ts), "dur_us": str(rng.randint(30, 5000)), "tag": tag, "sql": text}
                    if rows:
                        e["rows"] = str(rows)
                    if params is None:
                        e["proto"] = "simple"
                    else:
                        e["proto"], e["params"] = "extended", json.dumps(params)
                    yield e


def fill(r: redis.Redis, prefix: str, fingerprints: int) -> int:
    stream = stream_name(prefix)
    pipe = r.pipeline(transaction=False)
    chunk: list[dict[str, str]] = []
    n = 0
    for e in events(fingerprints):
        chunk.append(e)
        n += 1
        if len(chunk) == 50:
            pipe.xadd(stream, {BUNDLE_FIELD: bundle(chunk)})
            chunk = []
            if len(pipe) >= 500:
                pipe.execute()
    if chunk:
        pipe.xadd(stream, {BUNDLE_FIELD: bundle(chunk)})
    pipe.execute()
    return n


def analyse(url: str, prefix: str) -> None:
    settings = AnalyzerSettings(redis=url, prefix=prefix, metrics="", consumer="bench", block=0.05,
                                stats_max_fingerprints=0, stats_max_entries=0)
    worker = Worker(settings, load_rules(settings.rules))
    worker.setup()
    try:
        idle = 0
        while idle < 3:
            idle = idle + 1 if worker.run_once() == 0 else 0
        worker.quiesce()
    finally:
        worker.close()


def timed(url: str, repeat: int, period: float) -> tuple[float, list[float]]:
    """Milliseconds of the first request, and of `repeat` more made every `period` seconds."""
    out = []
    for i in range(repeat + 1):
        if i:
            time.sleep(period)
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as resp:
            resp.read()
        out.append((time.perf_counter() - t0) * 1000)
    return out[0], out[1:]


def page_load(base: str, repeat: int) -> list[float] | str:
    """Milliseconds from navigation to the top view drawn, in headless chromium (fresh load each time)."""
    from fasterdata.console.browser import chromium, missing, wait_for_view

    problem = missing()
    if problem:
        return f"skipped: {problem}"
    out = []
    with chromium() as driver:
        for i in range(repeat + 1):
            driver.get("about:blank")
            driver.get(f"{base}/?run={i}#/top")
            wait_for_view(driver, "top", timeout=60)
            drawn = driver.execute_script("return Number(document.getElementById('view').dataset.updated)"
                                          " - performance.timeOrigin")
            if i:
                out.append(float(drawn))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis", default=os.environ.get("FASTERDATA_REDIS", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--fingerprints", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--period", type=float, default=2.0, help="seconds between repeated requests (the page "
                    "polls every 2)")
    ap.add_argument("--output", help="also write the table to this file")
    args = ap.parse_args()
    prefix = f"bench-console-{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(args.redis, decode_responses=True)
    console = None
    try:
        t0 = time.perf_counter()
        n = fill(r, prefix, args.fingerprints)
        analyse(args.redis, prefix)
        held = r.zcard(f"{prefix}:stats:last")
        print(f"{n:,} statements, {held:,} fingerprints in Redis ({time.perf_counter() - t0:.0f} s to fill)",
              flush=True)
        port = _free_port()
        console = subprocess.Popen([sys.executable, "-m", "fasterdata", "console", "--listen", f"127.0.0.1:{port}",
                                    "--redis", args.redis, "--prefix", prefix, "--log-level", "warning"],
                                   cwd=ROOT, stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        _wait(base)
        top = json.loads(urllib.request.urlopen(f"{base}/api/top?limit=1", timeout=30).read())["rows"][0]["fp"]
        paths = ["/", "/api/top", "/api/top?sort=p99", "/api/top?sort=rows", "/api/top?app=shop-web&user=report",
                 "/api/top?fold=0", f"/api/fingerprint?fp={top}", "/api/business", "/api/alerts",
                 "/api/pipeline", "/api/ledger", "/api/overview"]
        lines = [f"# console with {held:,} fingerprints in Redis", "",
                 f"load {loadavg()}; the first request, then {args.repeat} every {args.period:g} s; "
                 f"budget {BUDGET_MS} ms", "",
                 "| request | first ms | median ms | p95 ms | max ms | within budget |",
                 "|---|---:|---:|---:|---:|---|"]
        for path in paths:
            first, ms = timed(base + path, args.repeat, args.period)
            lines.append(_row(path.replace(top, top[:8] + "…"), first, ms))
        loads = page_load(base, max(3, args.repeat // 2))
        lines += ["", "| page in headless chromium | first ms | median ms | p95 ms | max ms |",
                  "|---|---:|---:|---:|---:|"]
        if isinstance(loads, str):
            lines.append(f"| navigation to the top view drawn | {loads} | | | |")
        else:
            lines.append("| navigation to the top view drawn | " + " | ".join(_figures(loads[0], loads[1:])) + " |")
        publish("\n".join(lines), args.output)
    finally:
        if console is not None:
            console.send_signal(signal.SIGTERM)
            console.wait(30)
        keys = list(r.scan_iter(match=f"{prefix}:*", count=5000))
        for i in range(0, len(keys), 1000):
            r.delete(*keys[i:i + 1000])
    return 0


def _figures(first: float, ms: list[float]) -> list[str]:
    p95 = sorted(ms)[max(0, round(0.95 * len(ms)) - 1)]
    return [f"{first:.1f}", f"{statistics.median(ms):.1f}", f"{p95:.1f}", f"{max(ms):.1f}"]


def _row(what: str, first: float, ms: list[float]) -> str:
    within = max(first, *ms) < BUDGET_MS
    return f"| {what} | " + " | ".join(_figures(first, ms)) + f" | {'yes' if within else 'NO'} |"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=2).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the console did not start")


if __name__ == "__main__":
    sys.exit(main())

"""How fast the read model (analyzers/readmodel.py) answers with many fingerprints in Redis: what `top` and the
web console ask for, timed. Not a test: it prints a table.

    .venv/bin/python bench/analyzers/readmodel_bench.py [--fingerprints 5000] [--repeat 5]

An in-process worker analyses `--fingerprints` distinct statements (two applications, three users each), then
every read is timed `--repeat` times (the median is reported; the first top view also learns the texts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import redis

from fasterdata.proxy.streamkeys import stream_name

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fasterdata.analyzers import readmodel as rm  # noqa: E402
from fasterdata.analyzers.rules import load as load_rules  # noqa: E402
from fasterdata.analyzers.worker import Worker  # noqa: E402
from fasterdata.config.analyzer_settings import AnalyzerSettings  # noqa: E402
from fasterdata.proxy.events import BUNDLE_FIELD, bundle  # noqa: E402

RULES = ROOT / "config" / "rules.yaml"


def fill(r: redis.Redis, stream: str, fingerprints: int) -> int:
    ts = int(time.time() * 1e6)
    events = []
    for i in range(fingerprints):
        for app in ("web", "batch"):
            for u in range(3):
                ts += 50
                events.append({"v": "1", "kind": "stmt", "ts": str(ts), "dur_us": str(100 + (i * 7 + u) % 5000),
                               "sid": f"s{u}", "client": "10.0.0.5:41000", "user": f"user{u}", "db": "shop",
                               "app": app, "proto": "extended", "sql": f"SELECT a, b FROM table_{i} WHERE id = $1",
                               "params": f"[{i}]", "tag": "SELECT", "rows": "1", "txid": "1", "txn": "autocommit"})
    pipe = r.pipeline(transaction=False)
    for j in range(0, len(events), 100):
        pipe.xadd(stream, {BUNDLE_FIELD: bundle(events[j:j + 100])})
    pipe.execute()
    return len(events)


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redis", default=os.environ.get("FASTERDATA_REDIS", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--fingerprints", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    r = redis.Redis.from_url(args.redis, decode_responses=True)
    prefix = f"fdrmb{uuid.uuid4().hex[:6]}"
    try:
        n = fill(r, stream_name(prefix), args.fingerprints)
        settings = AnalyzerSettings(redis=args.redis, prefix=prefix, metrics="", consumer="b", block=0.05,
                                    stats_max_fingerprints=args.fingerprints * 2, cache_size=args.fingerprints * 7)
        worker = Worker(settings, load_rules(str(RULES)))
        worker.setup()
        done = 0
        while done < n // 100:
            done += worker.run_once()
        worker.quiesce()
        worker.close()
        ks = rm.keys_for(prefix)
        fp = rm.top_statements(r, ks)["rows"][0]["fp"]
        print(f"{args.fingerprints:,} fingerprints, {r.zcard(ks[0].stats_top('calls')):,} fingerprint × db × app "
              f"entries, {n:,} statements; load {os.getloadavg()[0]:.2f}; median of {args.repeat}")
        print("\n| read | ms |\n|---|---:|")
        for name, call in (
                ("top_statements sort=time", lambda: rm.top_statements(r, ks, "time")),
                ("top_statements sort=calls", lambda: rm.top_statements(r, ks, "calls")),
                ("top_statements sort=mean", lambda: rm.top_statements(r, ks, "mean")),
                ("top_statements sort=p99", lambda: rm.top_statements(r, ks, "p99")),
                ("top_statements sort=rows", lambda: rm.top_statements(r, ks, "rows")),
                ("top_statements app=web", lambda: rm.top_statements(r, ks, app="web")),
                ("top_statements user=user1", lambda: rm.top_statements(r, ks, user="user1")),
                ("statement (one fingerprint's page)", lambda: rm.statement(r, ks, fp)),
                ("business", lambda: rm.business(r, ks)),
                ("alerts", lambda: rm.alerts(r, ks)),
                ("overview", lambda: rm.overview(r, ks)),
                ("top snapshot (four views, shared reads)",
                 lambda: rm.top_statements_by(r, ks, ["time", "calls", "errors"], 10))):
            print(f"| {name} | {timed(call, args.repeat):.1f} |")
    finally:
        keys = list(r.scan_iter(f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i:i + 500])
    return 0


if __name__ == "__main__":
    sys.exit(main())

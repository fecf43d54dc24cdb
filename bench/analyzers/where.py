"""Where one analyzer worker's time goes: an in-process worker drains the bench stream (run.py's mix).

Reports CPU µs per statement of the analysing thread, the read-ahead thread and the commit thread
(thread CPU, so other load on the machine barely moves them), Redis `INFO commandstats` per statement,
and optionally the cProfile of the analysing thread. Not a test; run it from the tree to measure:

    .venv/bin/python bench/analyzers/where.py [--events 100000] [--batch N] [--profile 25]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from fasterdata.proxy.streamkeys import stream_name

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "analyzers"))

from run import PER_ENTRY, RULES, cleanup, fill  # noqa: E402

from fasterdata.analyzers.rules import load as load_rules  # noqa: E402
from fasterdata.analyzers.worker import Worker, tune_gc  # noqa: E402
from fasterdata.config.analyzer_settings import AnalyzerSettings  # noqa: E402


def commandstats(r: redis.Redis) -> dict[str, tuple[int, int]]:
    """command → (calls, µs) from INFO commandstats."""
    out = {}
    for name, v in r.info("commandstats").items():
        out[name.removeprefix("cmdstat_")] = (int(v["calls"]), int(v["usec"]))
    return out


class ThreadClock:
    """Thread CPU seconds spent inside a wrapped callable (summed over calls, any thread)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Any) -> Any:
        def timed(*args: Any, **kw: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*args, **kw)
            finally:
                self.seconds += time.thread_time() - t0
        return timed

    def wrap_split(self, start: Any) -> Any:
        """For a call that returns the call finishing it (Committer.start): both timed."""
        timed = self.wrap(start)
        return lambda *args, **kw: self.wrap(timed(*args, **kw))


class GcClock:
    """Thread CPU inside the cyclic garbage collector, per generation (it runs in whichever thread allocates)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.thread_time()
        else:
            self.seconds[info["generation"]] += time.thread_time() - self._t0
            self.runs[info["generation"]] += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redis", default=os.environ.get("FASTERDATA_REDIS", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--events", type=int, default=100000)
    ap.add_argument("--batch", type=int, default=0, help="statements per batch (0: the worker's default)")
    ap.add_argument("--per-entry", type=int, default=PER_ENTRY, help=f"statements a stream entry holds [{PER_ENTRY}]")
    ap.add_argument("--profile", type=int, default=0, help="print the top N functions of the analysing thread")
    args = ap.parse_args()
    r = redis.Redis.from_url(args.redis, decode_responses=True)
    prefix = f"fdprof{uuid.uuid4().hex[:6]}"
    extra = {"batch": args.batch} if args.batch else {}
    try:
        fill(r, stream_name(prefix), args.events, args.per_entry)
        settings = AnalyzerSettings(redis=args.redis, prefix=prefix, metrics="", consumer="prof", block=0.05, **extra)
        worker = Worker(settings, load_rules(RULES))
        worker.setup()
        tune_gc()  # as `fasterdata analyze` does
        reading, committing = ThreadClock(), ThreadClock()
        worker._read = reading.wrap(worker._read)
        for shard in worker.shards:  # sending a commit and reading its reply: on the analysing thread
            shard.committer.start = committing.wrap_split(shard.committer.start)
        worker.claim()  # nothing to take yet; publishes the group's claim floor, as a worker's first step does
        worker._next_periodic = worker._next_claim = float("inf")  # the drain only
        prof = cProfile.Profile(time.thread_time) if args.profile else None  # CPU, not wall: the box is shared
        collector = GcClock()
        gc.callbacks.append(collector)
        before = commandstats(r)
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        if prof:
            prof.enable()
        entries, want = 0, -(-args.events // args.per_entry)
        while entries < want:
            entries += worker.run_once()
        entries += worker.quiesce()
        done = worker.counters.statements
        if prof:
            prof.disable()
        cpu = time.thread_time() - cpu0
        wall = time.perf_counter() - wall0
        after = commandstats(r)
        gc.callbacks.remove(collector)
        worker.close()
        per = 1e6 / done
        print(f"{done:,} statements in {wall:.2f}s ({done / wall:,.0f}/s), batch {settings.batch}, "
              f"load {os.getloadavg()[0]:.2f}")
        print(f"thread CPU µs/stmt: analyse {cpu * per:.2f} (of it sending commits and reading their replies "
              f"{committing.seconds * per:.2f})  read {reading.seconds * per:.2f}  "
              f"total {(cpu + reading.seconds) * per:.2f}")
        print("  of it in the garbage collector µs/stmt, per generation: "
              + "  ".join(f"gen{g} {collector.seconds[g] * per:.2f} ({collector.runs[g]} runs)" for g in range(3)))
        top = inner = 0.0  # EVALSHA's own time includes the commands its script runs
        for name, (calls, usec) in sorted(after.items()):
            c0, u0 = before.get(name, (0, 0))
            if calls - c0 > 0 and usec - u0 > 0:
                if name in ("evalsha", "xreadgroup", "xautoclaim"):
                    top += (usec - u0) / done
                else:
                    inner += (usec - u0) / done
                print(f"  redis {name:<12} calls/batch {(calls - c0) / max(1, worker.counters.batches):6.1f}  "
                      f"µs/stmt {(usec - u0) / done:.2f}")
        print(f"redis commandstats µs/stmt: {top:.2f} (of it commands run by the script {inner:.2f})")
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
    finally:
        cleanup(r, prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())

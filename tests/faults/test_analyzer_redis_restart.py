"""An analyzer whose Redis restarts empty (no persistence): the stream and its consumer group are gone.

The proxy's next XADD creates the stream again, but without the group, so every XREADGROUP answers
NOGROUP. The worker must create the group again and go on, not retry the same error for ever.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
import uuid
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from fasterdata.analyzers import top
from fasterdata.proxy.streamkeys import stream_name
from tests.kit.analysis import biz
from tests.kit.eventwriter import Events
from tests.kit.polling import wait_until
from tests.kit.processes import WorkerProcess
from tests.kit.redisserver import RedisServer
from tests.kit.workload import RULES

INSERT = "INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4)"


def test_worker_recreates_its_group_after_redis_restarts_empty(private_redis: RedisServer, tmp_path: Path) -> None:
    prefix = f"fdtest-restart-{uuid.uuid4().hex[:8]}"
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(RULES))
    r = private_redis.client()
    worker = WorkerProcess(tmp_path, prefix, rules, "w1", "--block", "0.2", redis_url=private_redis.url)
    try:
        events = Events(r, prefix)
        events.stmt(INSERT, [1, 7, "eu", "10.00"], tag="INSERT", rows=1)
        wait_until(lambda: biz(r, prefix, "orders_placed") == {"-": 1}, "the first order to count", timeout=30)

        private_redis.kill()
        private_redis.restart()  # empty: no RDB, no AOF
        r = private_redis.client()
        events = Events(r, prefix)  # what a proxy does next: XADD, which makes the stream again
        for i in range(2, 5):
            events.stmt(INSERT, [i, 7, "eu", "10.00"], tag="INSERT", rows=1)
        wait_until(lambda: biz(r, prefix, "orders_placed") == {"-": 3}, "orders after the restart to count",
                   timeout=60)
        assert "creating it again" in worker.log()
    finally:
        assert worker.stop() == 0, worker.log()


def _lag_entries(worker: WorkerProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=10) as resp:
        for family in text_string_to_metric_families(resp.read().decode()):
            if family.name == "fasterdata_analyzer_lag_entries":
                return family.samples[0].value
    raise AssertionError("no fasterdata_analyzer_lag_entries in /metrics")


def test_worker_after_redis_restarts_from_its_append_only_file(tmp_path: Path) -> None:
    """Redis SIGKILLed and restarted with its data while the worker holds entries it read: the worker takes
    them up again as soon as Redis answers (before: only another worker, after claim_idle), and its lag reads 0
    once caught up (Redis 7.0 keeps XINFO's lag too high after such a restart, which the worker used to show)."""
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    prefix = f"fdtest-aof-{uuid.uuid4().hex[:8]}"
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(RULES))
    worker = WorkerProcess(tmp_path, prefix, rules, "w1", "--block", "0.2", "--claim-idle", "600",
                           redis_url=server.url)
    try:
        r = server.client()
        events = Events(r, prefix)
        for i in range(1, 11):
            events.stmt(INSERT, [i, 7, "eu", "10.00"], tag="INSERT", rows=1)
        wait_until(lambda: biz(r, prefix, "orders_placed") == {"-": 10}, "the first orders to count", timeout=30)
        r.bgrewriteaof()
        wait_until(lambda: not int(r.info("persistence")["aof_rewrite_in_progress"]), "the AOF rewrite", timeout=30)
        for i in range(11, 41):
            events.stmt(INSERT, [i, 7, "eu", "10.00"], tag="INSERT", rows=1)
        wait_until(lambda: biz(r, prefix, "orders_placed") == {"-": 40}, "orders after the rewrite", timeout=30)

        worker.proc.send_signal(signal.SIGSTOP)  # so the entries below are read as w1 and not yet processed
        try:
            server.kill()
            server.restart()
            r = server.client()
            events = Events(r, prefix)
            for i in range(41, 46):
                events.stmt(INSERT, [i, 7, "eu", "10.00"], tag="INSERT", rows=1)
            got = r.xreadgroup("analyzers", "w1", {stream_name(prefix): ">"}, count=100)
            assert len(got[0][1]) == 5  # delivered to w1, as a read whose reply the crash swallowed
        finally:
            worker.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: biz(r, prefix, "orders_placed") == {"-": 45}, "w1 to take up what it had read",
                   timeout=30)
        assert r.xinfo_groups(stream_name(prefix))[0]["lag"] > 0  # the Redis 7.0 miscount this is about

        def beat() -> dict | None:
            """The worker's first heartbeat measured after everything was processed."""
            got = json.loads(r.hget(f"{prefix}:workers", "w1") or "{}")
            return got if got.get("ts", 0) > processed_at else None

        processed_at = time.time()
        assert wait_until(beat, "a heartbeat after the restart", timeout=30)["lag_entries"] == 0
        assert _lag_entries(worker) == 0
        assert top.snapshot(r, prefix)["lag"]["undelivered"] == 0
    finally:
        assert worker.stop() == 0, worker.log()
        server.destroy()

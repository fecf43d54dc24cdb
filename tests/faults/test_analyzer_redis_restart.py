"""An analyzer whose Redis restarts empty (no persistence): the stream and its consumer group are gone.

The proxy's next XADD creates the stream again, but without the group, so every XREADGROUP answers
NOGROUP. The worker must create the group again and go on, not retry the same error for ever.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from tests.analyzers.kit import Events, WorkerProcess, biz
from tests.analyzers.workload import RULES
from tests.conftest import wait_until
from tests.sink.kit import RedisServer

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

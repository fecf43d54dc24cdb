"""Redis stops answering (SIGSTOP) for a few seconds during a pgbench run: clients must not notice, and
after SIGCONT every executed statement is in the stream exactly once."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

from fasterdata.proxy.streamkeys import stream_name
from tests.kit.metrics import metric
from tests.kit.pgbench import TPCB_KINDS, parse_pgbench, tpcb_kind
from tests.kit.polling import wait_until
from tests.kit.processes import StartProxy
from tests.kit.redisserver import RedisServer
from tests.kit.services import PG_HOST, PG_PORT, PG_USER
from tests.kit.streams import entries

SECONDS = 8
PAUSE = 3.0


def test_redis_paused_during_pgbench(start_proxy: StartProxy, private_redis: RedisServer, scratch_db: str,
                                     tmp_path: Path) -> None:
    init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER,
                           scratch_db], capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr
    app = f"fault-pause-{uuid.uuid4().hex[:8]}"
    proxy = start_proxy("--redis", private_redis.url, env={"FASTERDATA_SPOOL_DIR": str(tmp_path)})
    r = private_redis.client()
    stream = stream_name(proxy.prefix)
    wait_until(lambda: metric(proxy.metrics_port, "fasterdata_sink_redis_up") == 1, "the sink to connect")
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(proxy.port), "PGUSER": PG_USER,
           "PGDATABASE": scratch_db, "PGAPPNAME": app}
    bench = subprocess.Popen(["pgbench", "-c", "2", "-j", "2", "-T", str(SECONDS), "-R", "200"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: r.xlen(stream) >= 100 or bench.poll() is not None, "events to reach redis")
        assert bench.poll() is None, "pgbench finished before the pause"
        private_redis.pause()
        try:
            time.sleep(PAUSE)  # the fault's length, not a measurement
            paused_under_load = bench.poll() is None
        finally:
            private_redis.resume()
        out, _ = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    result = parse_pgbench(out)
    assert bench.returncode == 0, out
    assert result.failed == 0 and result.processed > 0, out
    assert paused_under_load, "pgbench ended during the pause"

    def drained() -> bool:
        return (metric(proxy.metrics_port, "fasterdata_proxy_connections_active") == 0
                and metric(proxy.metrics_port, "fasterdata_sink_queued") == 0
                and metric(proxy.metrics_port, "fasterdata_sink_spool_events") == 0
                and metric(proxy.metrics_port, "fasterdata_sink_redis_up") == 1)

    wait_until(drained, "every event to be confirmed by redis", timeout=120)
    events = [ev for _id, ev in entries(r, stream) if ev.get("app") == app]
    kinds = Counter(tpcb_kind(ev["sql"]) for ev in events if tpcb_kind(ev["sql"]))
    assert kinds == {k: result.processed for k in TPCB_KINDS}
    keys = Counter((ev["sid"], ev["txid"], tpcb_kind(ev["sql"])) for ev in events if tpcb_kind(ev["sql"]))
    assert max(keys.values()) == 1  # nothing doubled by a resend after the pause

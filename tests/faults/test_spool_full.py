"""Redis away and the spool's disk full: client traffic goes on, the lost events are counted, readiness says
why, and capture resumes once Redis is back. The disk is filled by a file-size limit (RLIMIT_FSIZE) on the
proxy process: writing past it fails with EFBIG as on a full disk (CPython ignores SIGXFSZ)."""

from __future__ import annotations

import resource
from pathlib import Path

import psycopg
import redis

from tests.kit.metrics import http_get, scrape, value
from tests.kit.polling import wait_until
from tests.kit.processes import StartProxy
from tests.kit.redisserver import RedisServer
from tests.kit.streams import statements

LIMIT = 256 << 10  # bytes any one file of the proxy may reach
STATEMENTS = 3000  # a few hundred bytes each in the spool: well past LIMIT
SECOND = 400  # past the memory queue (FASTERDATA_QUEUE_MAX=100), within LIMIT once the spool is empty


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_spool_full_while_redis_is_away(start_proxy: StartProxy, private_redis: RedisServer, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    proxy = start_proxy("--redis", private_redis.url, "--log-level", "warning", preexec=_limit_file_size,
                        env={"FASTERDATA_SPOOL_DIR": str(spool), "FASTERDATA_QUEUE_MAX": "100"})
    private_redis.kill()
    with psycopg.connect(proxy.dsn(application_name="spool-full"), autocommit=True, connect_timeout=10) as conn:
        for i in range(STATEMENTS):  # every query answers, whatever happens to their events
            assert conn.execute("select %s::int", (i,), prepare=False).fetchone() == (i,)

    def dropped() -> float:
        return value(scrape(proxy)[1], "fasterdata_sink_dropped_total")

    wait_until(lambda: dropped() > 0, "events to be counted as dropped")
    status, body = http_get(proxy.metrics_port, "/readyz")
    assert status == 503 and "spool failed" in body, body
    assert all(f.stat().st_size <= LIMIT for f in spool.iterdir())

    private_redis.restart()
    r: redis.Redis = private_redis.client()

    def captured_again() -> bool:
        """A new session's statement reaches the stream (sessions run before the sink is back and has
        replayed what the spool holds are still dropped: the spool cannot take them)."""
        with psycopg.connect(proxy.dsn(application_name="after-outage"), autocommit=True,
                             connect_timeout=10) as conn:
            conn.execute("select 'back'")
        return bool(statements(r, proxy.prefix, app="after-outage"))

    wait_until(captured_again, "capture to resume once Redis is back", timeout=60, interval=0.5)
    samples = scrape(proxy)[1]
    assert value(samples, "fasterdata_sink_replayed_total") > 0  # what the spool held before it filled
    assert "using it again" in proxy.log()

    # The emptied spool serves the next outage again: more than the memory queue holds, less than the limit.
    private_redis.kill()
    with psycopg.connect(proxy.dsn(application_name="second-outage"), autocommit=True, connect_timeout=10) as conn:
        for i in range(SECOND):
            conn.execute("select %s::int", (i,), prepare=False)
    private_redis.restart()
    r = private_redis.client()
    wait_until(lambda: len(statements(r, proxy.prefix, app="second-outage")) == SECOND,
               "every statement of the second outage to be replayed", timeout=60)
    assert proxy.proc.poll() is None

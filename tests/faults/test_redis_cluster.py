"""Sharded statement streams (``stream_shards``) against a real three-node Redis Cluster on loopback.

The proxy is given one node's URL; the hash-tagged streams ``<prefix>:statements:{i}`` live in slots
owned by other nodes, so the sink must follow MOVED redirections to each stream's owner.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import wait_until
from tests.proxy.pxkit import StartProxy
from tests.rediscluster import Cluster

SHARDS = 3
SESSIONS = 30
PER_SESSION = 5

pytestmark = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_sharded_streams_on_redis_cluster(start_proxy: StartProxy, redis_cluster: Cluster, tmp_path: Path) -> None:
    app = f"fault-cluster-{uuid.uuid4().hex[:8]}"
    rc = redis_cluster.client()
    seed = redis_cluster.ports[0]
    proxy = start_proxy("--redis", f"redis://127.0.0.1:{seed}/0",
                        env={"FASTERDATA_STREAM_SHARDS": str(SHARDS), "FASTERDATA_SPOOL_DIR": str(tmp_path)})
    streams = [f"{proxy.prefix}:statements:{{{i}}}" for i in range(SHARDS)]
    owners = {rc.get_node_from_key(s).port for s in streams}
    assert owners - {seed}, "every stream is on the seed node: the test would prove nothing"
    for n in range(SESSIONS):
        with psycopg.connect(proxy.dsn(application_name=app), autocommit=True, connect_timeout=10) as conn:
            for i in range(PER_SESSION):
                conn.execute(f"select {n} * 100 + {i} as fault_cluster")

    def captured() -> list[dict[str, str]]:
        return [f for s in streams for _id, f in rc.xrange(s) if f.get("app") == app and f.get("kind") == "stmt"]

    wait_until(lambda: len(captured()) >= SESSIONS * PER_SESSION, "every statement to reach the cluster", timeout=60)
    time.sleep(0.2)  # nothing more should arrive (doubles would show here); a pause, not a measurement
    events = captured()
    assert sorted(e["sql"] for e in events) == sorted(
        f"select {n} * 100 + {i} as fault_cluster" for n in range(SESSIONS) for i in range(PER_SESSION))
    assert all(rc.xlen(s) > 0 for s in streams)  # 30 sessions spread over all three shards
    for sid in {e["sid"] for e in events}:  # a session stays on one stream
        assert sum(1 for s in streams if any(f.get("sid") == sid for _id, f in rc.xrange(s))) == 1
    rc.close()

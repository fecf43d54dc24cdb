"""Sharded statement streams (``stream_shards``) against a real three-node Redis Cluster on loopback.

The proxy is given one node's URL; the hash-tagged streams ``<prefix>:statements:{i}`` live in slots
owned by other nodes, so the sink must follow MOVED redirections to each stream's owner.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from tests.conftest import free_port, wait_until
from tests.proxy.pxkit import StartProxy

SHARDS = 3
SESSIONS = 30
PER_SESSION = 5

pytestmark = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class Cluster:
    """Three cluster-enabled redis-servers (no replicas, no persistence) in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = [_cluster_port() for _ in range(3)]
        self.procs: list[subprocess.Popen] = []
        for port in self.ports:
            d = root / str(port)
            d.mkdir(parents=True)
            self.procs.append(subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--cluster-enabled", "yes",
                 "--cluster-config-file", f"nodes-{port}.conf", "--save", "", "--appendonly", "no",
                 "--dir", str(d), "--logfile", str(d / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            wait_until(lambda p=port: self._pong(p), f"redis cluster node {port}")
        done = subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                               "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(self._ok, "the cluster to report cluster_state:ok")

    @staticmethod
    def _pong(port: int) -> bool:
        try:
            return bool(redis.Redis(port=port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def _ok(self) -> bool:
        return all(redis.Redis(port=p).cluster("info")["cluster_state"] == "ok" for p in self.ports)

    def client(self) -> RedisCluster:
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.ports], decode_responses=True)

    def destroy(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait(15)


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

"""A real three-node Redis Cluster on loopback (cluster-enabled redis-servers, no replicas) for tests."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from tests.conftest import free_port, wait_until


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

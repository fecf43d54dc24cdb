"""A real three-node Redis Cluster on loopback (cluster-enabled redis-servers, no replicas) for tests.

Nodes can be stopped and started again on the same port and directory (``persistent=True`` gives
them an fsynced append-only file, so a restarted node keeps what it confirmed), and a slot can be
moved between nodes step by step (``migrate_*``), as ``redis-cli --cluster reshard`` would.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from tests.kit.polling import wait_until
from tests.kit.ports import free_port


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
    """Three cluster-enabled redis-server masters in a temporary directory, each with ``replicas`` replicas
    (nodes 3, 4, 5 … after the masters 0, 1, 2; ``redis-cli --cluster create`` pairs them).

    ``persistent``: appendonly with appendfsync always (what a restart test needs); otherwise no
    persistence.  ``args``: more redis-server options for every node.
    """

    def __init__(self, root: Path, *, persistent: bool = False, args: Sequence[str] = (), replicas: int = 0) -> None:
        self.root = root
        self.ports = [_cluster_port() for _ in range(3 * (1 + replicas))]
        self.procs: list[subprocess.Popen] = []
        self.commands: list[list[str]] = []
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
        for port in self.ports:
            d = root / str(port)
            d.mkdir(parents=True)
            self.commands.append(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--cluster-enabled", "yes",
                 "--cluster-config-file", f"nodes-{port}.conf", "--save", "", *aof,
                 "--dir", str(d), "--logfile", str(d / "redis.log"), *args])
            self.procs.append(subprocess.Popen(self.commands[-1], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
        for port in self.ports:
            wait_until(lambda p=port: self._pong(p), f"redis cluster node {port}")
        done = subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                               "--cluster-replicas", str(replicas), "--cluster-yes"], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        self.wait_ok()

    @staticmethod
    def _pong(port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=1) as r:
                return bool(r.ping())
        except redis.RedisError:
            return False

    def _ok(self) -> bool:
        try:
            return all(self.node(i).cluster("info")["cluster_state"] == "ok" for i in range(len(self.ports)))
        except redis.RedisError:
            return False

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Every node reports cluster_state:ok (after creation, a restart or a slot move)."""
        wait_until(self._ok, "the cluster to report cluster_state:ok", timeout)

    def client(self) -> RedisCluster:
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.ports], decode_responses=True)

    def node(self, i: int) -> redis.Redis:
        """A plain client of node ``i`` (no redirections followed: the test sees what that node holds)."""
        return redis.Redis(host="127.0.0.1", port=self.ports[i], decode_responses=True, socket_timeout=10)

    def node_id(self, i: int) -> str:
        with self.node(i) as r:
            return r.execute_command("CLUSTER", "MYID")

    def replica_of(self, master: int) -> int:
        """Index of a node replicating node ``master``."""
        for i in range(len(self.ports)):
            with self.node(i) as r:
                info = r.info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == self.ports[master]:
                return i
        raise AssertionError(f"node {master} has no replica")

    def replicates(self, i: int, master: int) -> bool:
        """Node ``i`` is a replica of node ``master`` with its replication link up (a WAIT can count it).

        False, never an error, while ``i`` is still loading, still a master, or still syncing: a restarted
        node answers PING before the cluster's UPDATE message turns it into a replica."""
        try:
            with self.node(i) as r:
                info = r.info("replication")
        except redis.RedisError:
            return False
        return (info.get("role") == "slave" and int(info.get("master_port", 0)) == self.ports[master]
                and info.get("master_link_status") == "up")

    def wait_replica(self, i: int, master: int, timeout: float = 60.0) -> None:
        """Wait for node ``i`` to replicate node ``master`` (see `replicates`)."""
        wait_until(lambda: self.replicates(i, master), f"node {i} to replicate node {master}", timeout)

    def slot(self, key: str) -> int:
        with self.node(0) as r:
            return int(r.execute_command("CLUSTER", "KEYSLOT", key))

    def owner(self, slot: int) -> int:
        """Index of the node serving ``slot``, by the first node that answers CLUSTER SLOTS."""
        for i in range(len(self.ports)):
            try:
                with self.node(i) as r:
                    ranges = r.execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            for first, last, master, *_replicas in ranges:
                if first <= slot <= last:
                    return self.ports.index(int(master[1]))
        raise AssertionError(f"no node serves slot {slot}")

    # -- stopping and starting ------------------------------------------------------------------

    def stop(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Stop node ``i`` (SIGKILL: whatever it was doing; SIGTERM: a clean shutdown)."""
        proc = self.procs[i]
        if proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(30)

    def start(self, i: int) -> None:
        """Start node ``i`` again on its port and directory (its nodes.conf keeps its id and slots)."""
        assert self.procs[i].poll() is not None, f"node {i} is running"
        self.procs[i] = subprocess.Popen(self.commands[i], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self._pong(self.ports[i]), f"redis cluster node {self.ports[i]} to restart")

    def restart(self, i: int, sig: int = signal.SIGKILL) -> None:
        self.stop(i, sig)
        self.start(i)
        self.wait_ok()

    # -- moving a slot ---------------------------------------------------------------------------

    def migrate_begin(self, slot: int, source: int, target: int) -> None:
        """IMPORTING on the target, then MIGRATING on the source (the order redis-cli uses)."""
        with self.node(target) as r:
            r.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        with self.node(source) as r:
            r.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))

    def migrate_keys(self, slot: int, source: int, target: int, keys: Sequence[str] | None = None) -> int:
        """MIGRATE ``keys`` (default: all the source holds in the slot) to the target; returns how many moved."""
        with self.node(source) as r:
            if keys is None:
                keys = r.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
            if not keys:
                return 0
            r.execute_command("MIGRATE", "127.0.0.1", self.ports[target], "", 0, 10_000, "KEYS", *keys)
        return len(keys)

    def migrate_end(self, slot: int, target: int) -> None:
        """SETSLOT NODE on the target first, then on every other node (the source stops answering ASK)."""
        target_id = self.node_id(target)
        order = [target, *(i for i in range(len(self.ports)) if i != target)]
        for i in order:
            with self.node(i) as r:
                r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.destroy()

    def destroy(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(15)

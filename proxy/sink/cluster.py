"""Redis Cluster for the sink: the nodes it has heard of and which one serves a stream's slot.

The sink is given one node (the seed), or several tried in turn.  A lane follows ``MOVED`` to its slot's
owner and remembers it; ``ASK`` (slot being migrated) sends that one batch to the importing node after
``ASKING`` without changing what it remembers.  When the owner cannot be reached, the lane asks the seed
or any other node heard of (``CLUSTER SLOTS``) who serves its slot now, and spools meanwhile.  Slots
themselves (``key_slot``) are part of the key contract, ``proxy.streamkeys``.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import hiredis

from .resp import RedisConnection, RedisReplyError, RedisTarget

ASKING = hiredis.pack_command(("ASKING",))
_CLUSTER_SLOTS = hiredis.pack_command(("CLUSTER", "SLOTS"))


def redirected_to(reply: str, default_host: str) -> tuple[str, int]:
    """Host and port from a redirection ('MOVED <slot> <host>:<port>', same for ASK); an empty host is the seed's."""
    host, _, port = reply.split()[2].rpartition(":")
    return host.strip("[]") or default_host, int(port)


class ClusterNodes:
    """Nodes heard of (seed nodes in the URL, MOVED, ASK, CLUSTER SLOTS), by address; empty on a plain Redis.

    Every node is reached with the seed's credentials and TLS."""

    def __init__(self, seed: RedisTarget, others: list[RedisTarget], connect_timeout: float,
                 send_timeout: float) -> None:
        self.seed = seed
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.nodes: dict[tuple[str, int], RedisTarget] = {}
        for node in others:
            self.node(node.host, node.port)

    def node(self, host: str, port: int) -> RedisTarget:
        """The cluster node at host:port, reached with the seed's credentials and TLS."""
        node = self.nodes.get((host, port))
        if node is None:
            display = f"{self.seed.display} -> {host}:{port}"
            node = replace(self.seed, host=host, port=port, path=None, display=display)
            self.nodes[(host, port)] = node
        return node

    def redirection(self, reply: str) -> RedisTarget:
        """The node a MOVED or ASK reply points to."""
        return self.node(*redirected_to(reply, self.seed.host))

    async def slot_owner(self, slot: int, failed: RedisTarget) -> RedisTarget | None:
        """Which node serves ``slot``, after CLUSTER SLOTS from the first other node that answers.

        The seed first, then every node heard of; not ``failed``, which just did not answer.  None when
        no node answers or Redis is not a cluster.
        """
        seen = {(self.seed.host, self.seed.port)}
        others = [n for n in self.nodes.values() if (n.host, n.port) not in seen]
        ask = [n for n in (self.seed, *others) if (n.host, n.port) != (failed.host, failed.port)]
        for node in ask:
            try:
                conn = await RedisConnection.open(node, self.connect_timeout)
                try:
                    async with asyncio.timeout(self.send_timeout):
                        reply = await conn.request(_CLUSTER_SLOTS)
                finally:
                    conn.close()
            except (OSError, TimeoutError, RedisReplyError, ConnectionError, EOFError):
                continue
            if isinstance(reply, hiredis.ReplyError) or not isinstance(reply, list):
                return None
            owner = None
            for entry in reply:  # [first slot, last slot, [host, port, id, …] of the master, replicas …]
                host = entry[2][0].decode() if isinstance(entry[2][0], bytes) else ""
                master = self.node(host if host not in ("", "?") else node.host, int(entry[2][1]))
                if entry[0] <= slot <= entry[1]:
                    owner = master
            return owner
        return None

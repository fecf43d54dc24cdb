"""Where statement events go: the names of the statement streams and of the keys kept beside them.

``proxy.events`` says what an entry holds; this module says which keys hold the entries. The proxy's
sink writes these keys and every reader (analyzer workers, ``gl follow``, ``top``, tests, benches) finds
them here, so each name is spelled once:

* ``<prefix>:statements``: the one stream of an unsharded deployment (``stream_shards`` 1);
  ``<prefix>:statements:{i}``, i = 0 … n-1, with ``stream_shards`` n ≥ 2. The hash tag ``{i}`` puts each
  shard's stream, and every key an analyzer commit of that shard touches, in one Redis Cluster slot.
* ``<stream>:held``: hash ``statements``/``entries``, the sink script's count of what the stream holds
  (its cap counts statements, and a bundled entry holds several).
* ``<stream>:trimmed``: hash group → statements the cap removed before that consumer group read them.
* ``<prefix>:sink:{<tag>}:<instance>``: the resend marker of one sink instance on one stream, the next
  sequence number Redis holds (``proxy.sink`` explains how it keeps delivery exactly once).

The slot arithmetic lives here too, because a marker's name is chosen by it: the sink's script touches
the stream and the marker in one call, so on a cluster both must hash to the same slot.
"""

from __future__ import annotations

import binascii

CLUSTER_SLOTS = 16384


def stream_name(prefix: str, shard: int | None = None) -> str:
    """The statement stream of ``shard``; None: the single stream of an unsharded deployment."""
    return f"{prefix}:statements" if shard is None else f"{prefix}:statements:{{{shard}}}"


def stream_names(prefix: str, shards: int) -> list[str]:
    """Every statement stream of a deployment with ``shards`` streams (one: the unsharded name)."""
    if shards <= 1:
        return [stream_name(prefix)]
    return [stream_name(prefix, i) for i in range(shards)]


def streams_label(prefix: str, shards: int) -> str:
    """The streams for a person to read: the stream's name, or the shards' pattern ``<prefix>:statements:{0..n-1}``."""
    if shards <= 1:
        return stream_name(prefix)
    return f"{prefix}:statements:{{0..{shards - 1}}}"


def other_layout_streams(prefix: str, shards: int) -> list[str]:
    """Streams a proxy with a different ``stream_shards`` would write, and a reader of ``shards`` streams
    would never read: the next shard and the unsharded name, or shard 0."""
    return [stream_name(prefix, shards), stream_name(prefix)] if shards > 1 else [stream_name(prefix, 0)]


def held_key(stream: str) -> str:
    """Hash: the ``statements`` the stream holds and the ``entries`` they were counted in."""
    return f"{stream}:held"


def trimmed_key(stream: str) -> str:
    """Hash: consumer group → statements the stream cap removed before that group read them."""
    return f"{stream}:trimmed"


def marker_tag(prefix: str, shard: int | None = None) -> str:
    """What a marker's name puts in braces for this stream: the shard number, or the whole stream name."""
    return stream_name(prefix) if shard is None else str(shard)


def hash_tag(key: bytes) -> bytes | None:
    """The part of ``key`` Redis Cluster hashes when it is not the whole key: a non-empty first ``{…}``."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return None


def key_slot(key: str) -> int:
    """The Redis Cluster hash slot of ``key`` (CRC16/XMODEM of its hash tag or of the whole key)."""
    raw = key.encode("utf-8", "surrogateescape")
    tag = hash_tag(raw)
    return binascii.crc_hqx(raw if tag is None else tag, 0) % CLUSTER_SLOTS


def marker_base(prefix: str, stream: str, tag: str) -> str:
    """The marker keys' name for ``stream`` up to the instance id, chosen to be in the stream's slot.

    The script touches the stream and the marker, so on a cluster both must share a slot (else
    CROSSSLOT), and then MIGRATE moves them together.  The usual name ``<prefix>:sink:{<tag>}:``
    does that whenever the prefix has no braces (``tag``: `marker_tag`); else the name starts with a
    number in braces that hashes to the stream's slot (every slot has one below 110,000).  The hash
    tag must lie inside the base, so the instance id appended to it cannot move the key to another slot.
    """
    slot = key_slot(stream)
    base = f"{prefix}:sink:{{{tag}}}:"
    if hash_tag(base.encode("utf-8", "surrogateescape")) is not None and key_slot(base) == slot:
        return base
    n = 0
    while key_slot(f"{{{n}}}") != slot:
        n += 1
    return f"{{{n}}}:{prefix}:sink:"


def marker_key(prefix: str, shard: int | None, instance: str) -> str:
    """The resend marker of sink instance ``instance`` on the stream of ``shard``."""
    return marker_base(prefix, stream_name(prefix, shard), marker_tag(prefix, shard)) + instance

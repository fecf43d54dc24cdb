"""The statement sink: captured statements → Redis Stream, without ever making a client wait.

``put()`` runs inside the proxy's protocol callbacks, so it only appends to a list.  A sender task
per stream (a lane, ``lane.py``) takes whatever piled up since its last round trip and ships it as
**one EVALSHA per batch** (``encoding.py``): the script (``append.lua``) XADDs every event, keeps the
stream at its cap and advances an idempotency marker, all atomically.  The values of a whole batch
travel as few strings as possible (a NUL-joined string built by one C-level ``str.join``), instead of
being RESP-framed one by one; bench/sink_bench.py compares the alternatives.

Exactly once, in order, across outages, rests on three things kept in step:

* **Sequence numbers.**  Every event of a sink instance has one, implicitly: its position in put
  order.  The lane knows the number of the first event in memory and of the next event put while
  spooling, and a batch is "events seq0 … seq0+n-1 of instance X".
* **The marker** ``<prefix>:sink:{<tag>}:<X>`` (``proxy.streamkeys``) holds the next sequence number
  Redis already has from instance X on that stream.  The script compares it with seq0, skips the
  prefix of the batch that is already there and moves the marker in the same atomic call as the
  XADDs, so stream and marker cannot disagree.  A batch whose reply was lost (timeout, killed or
  paused Redis, a SIGSTOPped server executing the stale request later) can simply be sent again.
* **The spool** (``spool.py``) keeps each event with its instance and sequence number.  While Redis
  is unreachable or too slow events go there, and while it holds anything new events go behind it,
  so order holds; a replay, even by the next process, sends the same numbers again, which the marker
  recognises.  Only a full spool drops events, and each drop is counted.

A lane therefore never renumbers an event: a batch stays in flight until Redis confirms it, goes back
to memory or the spool with its numbers when it does not, and a marker lives in its stream's cluster
slot, so MIGRATE moves both together.

Sharding (optional): ``shards=N`` gives N lanes, streams ``<prefix>:statements:{0}`` …
``{N-1}``; ``route`` (the session id) picks the lane, so one session always lands on one stream.
Each lane has its own connection, spool file (``<spool_path>.<i>``), sequence numbers and marker.
Redis Cluster (``cluster.py``) lives in the sender; ``put()`` does not change.

Modules: ``streamsink`` (the facade, ``sink_for``), ``lane``, ``encoding``, ``script`` (loads
``append.lua``), ``spool``, ``cluster``, ``resp`` (a bare RESP client), ``metrics``.
"""

from fasterdata.proxy.streamkeys import CLUSTER_SLOTS, key_slot, marker_base

from .encoding import MAX_FIELDS, encode_batch
from .lane import MAX_BATCH_BYTES, Lane
from .metrics import LATENCY_BUCKETS, SinkCollector
from .resp import RedisConnection, RedisReplyError, RedisTarget
from .script import SCRIPT, SCRIPT_SHA
from .spool import Spool, SpoolLocked, SpoolRead, SpoolWriteError, spool_unusable
from .streamsink import StreamSink, sink_for

__all__ = [
    "CLUSTER_SLOTS",
    "LATENCY_BUCKETS",
    "MAX_BATCH_BYTES",
    "MAX_FIELDS",
    "SCRIPT",
    "SCRIPT_SHA",
    "Lane",
    "RedisConnection",
    "RedisReplyError",
    "RedisTarget",
    "SinkCollector",
    "Spool",
    "SpoolLocked",
    "SpoolRead",
    "SpoolWriteError",
    "StreamSink",
    "encode_batch",
    "key_slot",
    "marker_base",
    "sink_for",
    "spool_unusable",
]

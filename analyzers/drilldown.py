"""Bounded drill-down keys: what a fingerprint's samples, per-user rows, plan and shape links hold goes when its
stats go, and transaction shapes have a cap of their own. Swept with the worker's other sweeps.

The fingerprint cap (retention.py) evicts `stats:*`; every commit that writes drill-down keys of a fingerprint
stamps it in `samples:fps` (the drill index, by the second it was last written). A sweep reads the index's
oldest entries and, in one script per shard (drill_evict.lua, every key declared, one slot), removes the
drill-down keys of each fingerprint no longer in `stats:last` (and, with `stats_retention_days`, of those
older than that): `stats:u`, `stats:ts`, `samples:slow`, `samples:recent`, `plan`, `txshapes:fp`. The script
re-checks each one, so a fingerprint written again since it was chosen stays.

Transaction shapes (`txshape:<id>`, indexed in `txshapes` by when each was last seen) beyond
`txn_shapes_max` a shard are evicted least recently seen first (shape_evict.lua), taking their links from
`txshapes:fp:<fp>`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from . import scripts
from .keys import Keys

log = logging.getLogger("fasterdata.analyze")

DRILL_EVICT = scripts.read("drill_evict.lua")
SHAPE_EVICT = scripts.read("shape_evict.lua")
PER_SWEEP = 2000  # index entries looked at per shard and sweep
PER_CALL = 200  # victims per script call


class DrillSweeper:
    """One worker's drill-down sweeps over every shard."""

    def __init__(self, client: Any, shards: list[Keys], shapes_max: int, retention_days: int = 0) -> None:
        self.r = client
        self.shards = shards
        self.shapes_max = shapes_max
        self.age = retention_days * 86400
        self.drill = client.register_script(DRILL_EVICT)
        self.shape = client.register_script(SHAPE_EVICT)

    def run(self, now: float | None = None) -> tuple[list[str], list[str]]:
        """One sweep: (fingerprints whose drill-down keys went, shapes evicted)."""
        now = time.time() if now is None else now
        fps: list[str] = []
        shapes: list[str] = []
        for keys in self.shards:
            fps += self.sweep_fingerprints(keys, now)
            shapes += self.sweep_shapes(keys)
        if fps or shapes:
            log.info("sweep: removed the samples, per-user rows and plans of %d evicted fingerprint(s) and %d "
                     "transaction shape(s) beyond txn_shapes_max", len(fps), len(shapes))
        return fps, shapes

    def sweep_fingerprints(self, keys: Keys, now: float) -> list[str]:
        oldest = self.r.zrange(keys.drill_index, 0, PER_SWEEP - 1, withscores=True)
        if not oldest:
            return []
        pipe = self.r.pipeline(transaction=False)
        for fp, _ in oldest:
            pipe.zscore(keys.stats_last, fp)
        present = pipe.execute()
        cutoff = int(now) - self.age if self.age else 0
        victims = [(fp, score) for (fp, score), there in zip(oldest, present, strict=True)
                   if there is None or (cutoff and score <= cutoff)]
        head = [keys.stats_users(""), keys.samples_slow(""), keys.samples_recent(""), keys.plan(""),
                keys.txshapes_of(""), keys.stats_series(""), str(cutoff)]
        out: list[str] = []
        for i in range(0, len(victims), PER_CALL):
            part = victims[i:i + PER_CALL]
            names = [keys.stats_last, keys.drill_index]
            args = list(head)
            for fp, score in part:
                names += [keys.stats_users(fp), keys.samples_slow(fp), keys.samples_recent(fp), keys.plan(fp),
                          keys.txshapes_of(fp), keys.stats_series(fp)]
                args += [fp, repr(score)]
            out += [str(x) for x in self.drill(keys=names, args=args)]
        return out

    def sweep_shapes(self, keys: Keys) -> list[str]:
        excess = self.r.zcard(keys.txshapes) - self.shapes_max
        if excess <= 0:
            return []
        victims = self.r.zrange(keys.txshapes, 0, min(excess, PER_SWEEP) - 1, withscores=True)
        pipe = self.r.pipeline(transaction=False)
        for shape, _ in victims:
            pipe.hget(keys.txshape(shape), "fps")
        fps = pipe.execute()
        out: list[str] = []
        for i in range(0, len(victims), PER_CALL):
            names = [keys.txshapes]
            args = [str(self.shapes_max), keys.txshape(""), keys.txshapes_of("")]
            for (shape, score), seq in zip(victims[i:i + PER_CALL], fps[i:i + PER_CALL], strict=True):
                names.append(keys.txshape(shape))
                names += sorted({keys.txshapes_of(fp) for fp in (seq or "").split(",") if fp})
                args += [shape, repr(score)]
            out += [str(x) for x in self.shape(keys=names, args=args)]
        return out

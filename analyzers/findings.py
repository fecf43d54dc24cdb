"""Alerts of the drill-down analyses (N+1 statements, new business categories), written as security.py writes
its findings: counted in `<prefix>:alerts:counts` always, written to `<prefix>:alerts` once per dedup window
(in this process's memory and in Redis, `alerts:dedup:<rule>:<fp>:<app>`), inside the batch's commit.

The alert's `kind` is its own (`n_plus_one`, `new_category`), so readers can tell them from security and
anomaly alerts; the rule has the same name. They reach `fasterdata_security_findings_total` like the
security findings do (the batch's `findings`, or a note the commit reports when Redis decided it fired).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from .atomic import Writes
from .keys import Keys

NOTED = "finding\t"  # what security.py's noted findings start with: finding<TAB>rule<TAB>severity


class AlertBatch(Protocol):
    writes: Writes
    keys: Keys
    findings: list[tuple[str, str]]


class Alerter:
    """Writes one kind of alert to a batch, with its dedup window."""

    def __init__(self, maxlen: int, dedup_seconds: float, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.maxlen = maxlen
        self.dedup_seconds = dedup_seconds
        self.clock = clock
        self.wall = wall
        self.alerted: dict[tuple[str, str, str], float] = {}  # (rule, fp, app) → end of its window

    def write(self, batch: AlertBatch, fields: dict[str, str], writes: Writes | None = None,
              dedup: bool = True, counted: bool = True) -> bool:
        """One finding (fields: kind, rule, severity, fp, app, evidence …); False when the dedup window kept it
        off the stream (it is counted all the same). writes: where (a conditional child), else the batch's."""
        rule, fp, app = fields["rule"], fields.get("fp", ""), fields.get("app", "")
        w = batch.writes if writes is None else writes
        keys = batch.keys
        if counted:
            batch.findings.append((rule, fields["severity"]))
        w.hincr(keys.alert_counts, rule, 1)
        window = self.dedup_seconds
        if dedup and window > 0:
            key = (rule, fp, app)
            now = self.clock()
            if self.alerted.get(key, 0) > now:
                return False
            self.alerted[key] = now + window
            if len(self.alerted) > 50000:
                self.alerted = {k: v for k, v in self.alerted.items() if v > now}
            w = w.once(keys.alert_dedup(rule, fp, app), int(window))
        fields = {"at": str(int(self.wall() * 1e6)), **fields}
        w.xadd(keys.alerts, self.maxlen, fields)
        return True

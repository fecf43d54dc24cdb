"""New categories: a business rule's label takes a value never seen before (a new product category, a new
region, a new currency) — an alert of its own kind, `new_category`.

Whether a value is new is decided in Redis, inside the batch's commit, as security.py decides new shapes:
the value (`name=value`, one label of the match) is added to the rule's `biz:labels:<rule>` set; only if
it was not there, and the rule's values have been learnt for `new_category_learn_seconds` (since the
first one, `biz:labels:since`), is the alert written and counted (the commit reports it). Each worker
proposes a value once per process; the set is bounded by the rule's `max_series`, past which labels are
`other` and never proposed. Only committed work counts (what business metrics count).
"""

from __future__ import annotations

from typing import Any, Protocol

from .atomic import Writes
from .business import NO_LABELS, OTHER, Match, _unescape
from .findings import NOTED, Alerter
from .keys import Keys

SEVERITY = "info"


class CategoryBatch(Protocol):
    writes: Writes
    keys: Keys
    findings: list[tuple[str, str]]
    new_labels: set[tuple[str, str]]


class Categories:
    """Proposes label values new to this process as new categories."""

    def __init__(self, alerter: Alerter, learn_seconds: float, enabled: bool = True) -> None:
        self.alerter = alerter
        self.learn = int(learn_seconds)
        self.on = enabled
        self.known: set[tuple[str, str]] = set()  # (rule, labels) whose values Redis has been asked about

    def add(self, batch: CategoryBatch, matches: list[Match], ev: dict[str, str], fp: str, ts: int) -> None:
        known = self.known
        for m in matches:
            labels = m.labels
            if labels in (NO_LABELS, OTHER):
                continue
            name = m.rule.name
            whole = (name, "\0" + labels)  # the label set, asked about part by part
            if whole in known or whole in batch.new_labels:
                continue
            batch.new_labels.add(whole)
            for part in labels.split("|"):
                if (name, part) in known or (name, part) in batch.new_labels:
                    continue
                batch.new_labels.add((name, part))
                self._propose(batch, name, part, ev, fp, ts)

    def _propose(self, batch: CategoryBatch, rule: str, part: str, ev: dict[str, str], fp: str, ts: int) -> None:
        keys = batch.keys
        child = batch.writes.if_new_member(keys.biz_labels(rule), part)
        child = child.if_older(keys.biz_labels_since, rule, ts // 1_000_000, self.learn)
        label, _, value = part.partition("=")
        value = _unescape(value)
        fields: dict[str, Any] = {
            "kind": "new_category", "rule": "new_category", "severity": SEVERITY, "ts": str(ts),
            "metric": rule, "label": label, "value": value, "sid": ev.get("sid", ""), "user": ev.get("user", ""),
            "db": ev.get("db", ""), "app": ev.get("app", ""), "fp": fp,
            "evidence": f"business rule {rule}: {label} = {value!r}, never seen before"}
        self.alerter.write(batch, fields, writes=child, dedup=False, counted=False)
        child.note(f"{NOTED}new_category\t{SEVERITY}")

    def committed(self, batch: CategoryBatch) -> None:
        if len(self.known) > 200_000:
            self.known.clear()
        self.known.update(batch.new_labels)

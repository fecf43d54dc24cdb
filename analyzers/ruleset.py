"""What a worker derives from one rules file, built in one place for start-up and for SIGHUP alike:
the business rules' index, the security checks, the anomaly counter and the per-fingerprint plans
that depend on them. A reload builds a new `RuleSet`; nothing of the old one is patched."""

from __future__ import annotations

from .anomaly import Counter as AnomalyCounter
from .business import Business
from .keys import Keys
from .rules import Rule, RulesFile
from .security import Checks, ShapeChecks
from .shape import Shape


class Plan:
    """Per fingerprint: its shape, anomaly series, candidate business rules and security checks."""

    __slots__ = ("checks", "rules", "series", "shape")

    def __init__(self, shape: Shape, series: str, rules: list[Rule] | None, checks: ShapeChecks) -> None:
        self.shape = shape
        self.series = series
        self.rules = rules  # None: not a business statement
        self.checks = checks


class RuleSet:
    """One rules file, ready for the worker's hot path."""

    def __init__(self, file: RulesFile, keys: Keys, events_maxlen: int = 100000, retention_days: int = 0,
                 max_plans: int = 10000) -> None:
        self.file = file
        self.business = Business(file.rules, keys, events_maxlen, retention_days)
        self.checks = Checks(file.security)
        self.anomaly = AnomalyCounter(keys, file.anomaly)
        self.window_us = file.anomaly.window_seconds * 1_000_000
        self.max_plans = max_plans
        self.plans: dict[str, Plan] = {}

    @property
    def rules(self) -> list[Rule]:
        return self.file.rules

    @property
    def names(self) -> list[str]:
        return [rule.name for rule in self.file.rules]

    def plan(self, fp: str, shape: Shape) -> Plan:
        """What a fingerprint needs on every later statement, worked out on its first one."""
        business = self.business
        rules = business.candidates(shape) if shape.parsed and shape.table in business.tables else None
        plan = Plan(shape, "fp:" + fp, rules, self.checks.for_shape(shape))
        if len(self.plans) >= self.max_plans:
            self.plans.clear()
        self.plans[fp] = plan
        return plan

    def changes(self, before: RuleSet) -> str:
        """What replacing `before` by this one changes, in words: the business rules added, removed and
        changed, and the security policy and anomaly settings when they differ."""
        old = {r.name: r for r in before.rules}
        new = {r.name: r for r in self.rules}
        changed = sorted(n for n in new if n in old and old[n] != new[n])
        if before.file.security != self.file.security:
            changed.append("security policy")
        if before.file.anomaly != self.file.anomaly:
            changed.append("anomaly settings")
        return (f"added: {', '.join(sorted(set(new) - set(old))) or 'none'}; "
                f"removed: {', '.join(sorted(set(old) - set(new))) or 'none'}; "
                f"changed: {', '.join(changed) or 'none'}")

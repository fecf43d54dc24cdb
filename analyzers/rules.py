"""The rules file (config/rules.yaml): business rules, security policy, anomaly detection.

Validated with pydantic so a typo stops start-up with the rule's name and the bad key, instead of
a rule that silently never matches. Problems are told in the file's words (the rule, its key, what
is expected, the spelling probably meant), one a line; RulesError.problems lists them, for
`fasterdata config check`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fasterdata.config.explain import ProblemsError, did_you_mean
from fasterdata.config.explain import problems as explain

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class RulesError(ProblemsError):
    """The rules file is unreadable or invalid; one problem a line, each saying where."""

    kind = "rules"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Strict):
    """One business metric: which writes (or reads) count, what value, labelled how, aggregated how."""

    name: str = Field(description="Metric name: fasterdata_business_<name>; lower-case letters, digits, _")
    description: str = ""
    table: str = Field(description="Table name (unqualified, as in the SQL; case-insensitive unless quoted)")
    operation: Literal["insert", "update", "delete", "copy", "select"]
    value: str | dict[str, str] = Field(
        "rows", description="'rows' (the row count), a column name, {column: <name>}, or {delta: <name>} for "
        "SET c = c ± x")
    labels: list[str] = Field(default_factory=list, description="Columns (or @app/@db/@user/@<comment key>)")
    aggregate: Literal["count", "sum", "min", "max", "distinct"] = "sum"
    match: dict[str, str] = Field(default_factory=dict, description="Only rows whose column equals the value")
    scale: int = Field(6, ge=0, le=12, description="Decimal places kept by sums (stored as exact integers)")
    max_series: int = Field(200, ge=1, description="Distinct label sets kept; the rest go to 'other'")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"must be lower-case letters, digits and _ (it names a metric), not {value!r}")
        return value

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        return value.split(".")[-1].strip('"') if value.startswith('"') or value.endswith('"') \
            else value.split(".")[-1].lower()

    @model_validator(mode="after")
    def _value(self) -> Rule:
        if isinstance(self.value, dict) and set(self.value) not in ({"delta"}, {"column"}):
            keys = ", ".join(repr(k) for k in self.value)
            hint = "".join(did_you_mean(k, ("column", "delta")) for k in self.value if k not in ("column", "delta"))
            raise ValueError(f"value: a mapping holds one key, column or delta, not {keys}{hint}")
        kind, col = self.value_kind, self.value_column
        if kind == "delta" and self.operation != "update":
            raise ValueError(f"value: a delta needs operation: update, not {self.operation}")
        if kind == "column" and self.operation in ("copy", "select", "delete"):
            raise ValueError(f"value: operation {self.operation} has no column values; use value: rows")
        if kind == "column" and not col:
            raise ValueError("value: the column name is empty")
        if kind == "rows" and self.aggregate in ("min", "max", "distinct"):
            raise ValueError(f"aggregate: {self.aggregate} needs a column value (value: <column>), not rows")
        return self

    @property
    def value_kind(self) -> str:
        if isinstance(self.value, dict):
            if set(self.value) == {"delta"}:
                return "delta"
            if set(self.value) == {"column"}:
                return "column"
            raise ValueError("value must be 'rows', a column, {column: c} or {delta: c}")
        return "rows" if self.value == "rows" else "column"

    @property
    def value_column(self) -> str:
        if isinstance(self.value, dict):
            return next(iter(self.value.values())).lower()
        return "" if self.value == "rows" else self.value.lower()


class InjectionPolicy(_Strict):
    enabled: bool = True
    severity: str = "high"
    learn_seen: int = Field(5, ge=1, description="A shape is learnt after this many statements…")
    learn_sessions: int = Field(2, ge=1, description="…from this many sessions, with no finding on any")


class NewFingerprintPolicy(_Strict):
    enabled: bool = True
    learn_seconds: float = Field(3600, ge=0, description="An application's first N seconds teach, not alert")
    severity: str = "info"


class SecurityPolicy(_Strict):
    injection: InjectionPolicy = InjectionPolicy()
    ddl_allowed_apps: list[str] = Field(default_factory=list, description="application_name values allowed DDL")
    ddl_severity: str = "medium"
    role_severity: str = "high"
    sensitive_tables: list[str] = Field(default_factory=list)
    sensitive_allowed_apps: list[str] = Field(default_factory=list)
    sensitive_severity: str = "medium"
    unbounded_writes: bool = Field(True, description="Alert on UPDATE/DELETE without WHERE")
    unbounded_severity: str = "high"
    max_rows: int = Field(10000, ge=0, description="Alert when a read returns more rows (0: off)")
    max_rows_severity: str = "low"
    new_fingerprint: NewFingerprintPolicy = NewFingerprintPolicy()
    dedup_seconds: float = Field(60, ge=0, description="Same finding (rule, fingerprint, app) at most once per …")


class AnomalyPolicy(_Strict):
    enabled: bool = True
    window_seconds: int = Field(60, ge=1, description="Rates are counted per window of event time")
    alpha: float = Field(0.2, gt=0, le=1, description="EWMA weight of the newest window")
    z: float = Field(4.0, gt=0, description="|z-score| that raises an alert")
    warmup_windows: int = Field(10, ge=1, description="Windows a series must have before it can alert")
    min_mean: float = Field(5.0, ge=0, description="Series averaging fewer events per window never alert")
    max_series: int = Field(2000, ge=1, description="Series tracked (fingerprints + business metrics)")
    severity: str = "warning"


class RulesFile(_Strict):
    rules: list[Rule] = Field(default_factory=list)
    security: SecurityPolicy = SecurityPolicy()
    anomaly: AnomalyPolicy = AnomalyPolicy()

    @model_validator(mode="after")
    def _unique(self) -> RulesFile:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return self


def parse(data: Any, source: str = "rules") -> RulesFile:
    """Validate the file's content; RulesError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RulesError(f"{source}: expected a mapping with rules:, security:, anomaly:")
    try:
        return RulesFile(**data)
    except ValidationError as exc:
        raise RulesError(*(f"{source}: {line}" for line in _in_rule_words(exc, data))) from None


def _in_rule_words(error: ValidationError, data: dict[str, Any]) -> list[str]:
    lines = []
    for p in explain(error, RulesFile):
        where = _where(p.path, data)
        if p.unknown and not p.path:
            lines.append(f"unknown section {p.key!r}{did_you_mean(p.key, RulesFile.model_fields)}")
        elif p.key is None or p.unknown:
            lines.append(f"{where}: {p.message}" if where else p.message)
        else:
            lines.append(f"{where}: {p.key}: {p.message}" if where else f"{p.key}: {p.message}")
    return lines


def _where(path: tuple[str | int, ...], data: dict[str, Any]) -> str:
    """'rule 'sales_amount'' for a rule (by its name, else its place), 'security.injection' for a policy."""
    if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int):
        rules = data.get("rules")
        rule = rules[path[1]] if isinstance(rules, list) and path[1] < len(rules) else None
        name = rule.get("name") if isinstance(rule, dict) else None
        rest = ".".join(str(p) for p in path[2:])
        return (f"rule {name!r}" if isinstance(name, str) else f"rule {path[1] + 1} (no name)") + \
            (f" {rest}" if rest else "")
    return ".".join(str(p) for p in path)


def load(path: str | Path | None) -> RulesFile:
    """Read and validate a rules file; None gives the defaults with no business rules."""
    if path is None:
        return RulesFile()
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise RulesError(f"cannot read rules file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    return parse(data, str(path))

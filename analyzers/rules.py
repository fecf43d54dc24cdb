"""The rules file (config/rules.yaml): business rules, security policy, anomaly detection.

Validated with pydantic so a typo stops start-up with the rule's name and the bad key, instead of
a rule that silently never matches.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class RulesError(Exception):
    """The rules file is unreadable or invalid; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Strict):
    """One business metric: which writes (or reads) count, what value, labelled how, aggregated how."""

    name: str = Field(description="Metric name: fasterdata_business_<name>; lower-case letters, digits, _")
    description: str = ""
    table: str = Field(description="Table name (unqualified, as in the SQL; case-insensitive unless quoted)")
    operation: Literal["insert", "update", "delete", "copy", "select"]
    value: str | dict[str, str] = Field(
        "rows", description="'rows' (row count), a column name, {column: c} or {delta: c} for SET c = c ± x")
    labels: list[str] = Field(default_factory=list, description="Columns (or @app/@db/@user/@<comment key>)")
    aggregate: Literal["count", "sum", "min", "max", "distinct"] = "sum"
    match: dict[str, str] = Field(default_factory=dict, description="Only rows whose column equals the value")
    scale: int = Field(6, ge=0, le=12, description="Decimal places kept by sums (stored as exact integers)")
    max_series: int = Field(200, ge=1, description="Distinct label sets kept; the rest go to 'other'")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"rule name must match {_NAME.pattern}, not {value!r}")
        return value

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        return value.split(".")[-1].strip('"') if value.startswith('"') or value.endswith('"') \
            else value.split(".")[-1].lower()

    @model_validator(mode="after")
    def _value(self) -> Rule:
        kind, col = self.value_kind, self.value_column
        if kind == "delta" and self.operation != "update":
            raise ValueError(f"rule {self.name}: a delta value needs operation: update")
        if kind == "column" and self.operation in ("copy", "select", "delete"):
            raise ValueError(f"rule {self.name}: operation {self.operation} has no column values; use value: rows")
        if kind == "column" and not col:
            raise ValueError(f"rule {self.name}: empty value column")
        if kind == "rows" and self.aggregate in ("min", "max", "distinct"):
            raise ValueError(f"rule {self.name}: aggregate {self.aggregate} needs a column value")
        return self

    @property
    def value_kind(self) -> str:
        if isinstance(self.value, dict):
            if set(self.value) == {"delta"}:
                return "delta"
            if set(self.value) == {"column"}:
                return "column"
            raise ValueError(f"rule {self.name}: value must be 'rows', a column, {{column: c}} or {{delta: c}}")
        return "rows" if self.value == "rows" else "column"

    @property
    def value_column(self) -> str:
        if isinstance(self.value, dict):
            return next(iter(self.value.values())).lower()
        return "" if self.value == "rows" else self.value.lower()


class InjectionPolicy(_Strict):
    enabled: bool = True
    severity: str = "high"


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
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RulesError(f"{source}: expected a mapping with rules:, security:, anomaly:")
    try:
        return RulesFile(**data)
    except ValidationError as exc:
        lines = []
        for item in exc.errors():
            loc = item["loc"]
            where = ".".join(str(p) for p in loc)
            if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
                rules = data.get("rules") or []
                name = rules[loc[1]].get("name") if loc[1] < len(rules) and isinstance(rules[loc[1]], dict) \
                    else None
                where = f"rule {name or loc[1]!r}" + ("." + ".".join(str(p) for p in loc[2:]) if loc[2:] else "")
            msg = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"{source}: {where}: {msg}")
        raise RulesError("\n".join(lines)) from None


def load(path: str | Path | None) -> RulesFile:
    """Read and validate a rules file; None gives the defaults with no business rules."""
    if path is None:
        return RulesFile()
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise RulesError(f"cannot read rules file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from None
    return parse(data, str(path))

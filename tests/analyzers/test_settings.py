"""AnalyzerSettings (file < environment < flags) and the shipped rules file."""

from __future__ import annotations

from pathlib import Path

import pytest

from fasterdata.analyzers.rules import RulesError, load, parse
from fasterdata.config.analyzer_settings import SHIPPED_RULES, AnalyzerSettings
from fasterdata.config.settings import ConfigError
from fasterdata.config.settings import load as load_settings


def test_defaults_and_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "f.yaml"
    cfg.write_text("prefix: shared\nanalyze:\n  batch: 100\n  claim_idle: 5\n  metrics: 0.0.0.0:9999\n")
    s = load_settings("analyze", cfg, {"batch": 300}, environ={"FASTERDATA_CLAIM_IDLE": "7.5"})
    assert isinstance(s, AnalyzerSettings)
    assert (s.prefix, s.batch, s.claim_idle, s.metrics) == ("shared", 300, 7.5, "0.0.0.0:9999")
    d = load_settings("analyze", None, {}, environ={})
    assert (d.metrics, d.batch, d.group, d.rules) == ("127.0.0.1:9931", 1000, "analyzers", SHIPPED_RULES)


@pytest.mark.parametrize(("flags", "needle"), [({"metrics": "nope"}, "metrics"), ({"batch": 0}, "batch"),
                                               ({"consumer": "a b"}, "consumer"), ({"start_id": "x"}, "start_id")])
def test_bad_values_name_the_setting(flags: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings("analyze", None, flags, environ={})


def test_shipped_rules_are_valid_and_documented() -> None:
    rules = load(SHIPPED_RULES)
    names = {r.name for r in rules.rules}
    assert {"sales_amount", "items_sold", "stock_moves", "gl_debits", "gl_credits"} <= names
    assert next(r for r in rules.rules if r.name == "stock_moves").value_kind == "delta"
    text = Path(SHIPPED_RULES).read_text()
    assert text.count("#") > 40  # the file documents itself


@pytest.mark.parametrize(("rule", "needle"), [
    ({"name": "x", "table": "t", "operation": "insert", "valu": "a"}, "unknown key"),
    ({"name": "x", "table": "t", "operation": "delete", "value": "a"}, "use value: rows"),
    ({"name": "y", "table": "t", "operation": "insert", "value": {"delta": "q"}}, "needs operation: update"),
    ({"name": "z", "table": "t", "operation": "insert", "aggregate": "max"}, "needs a column"),
])
def test_bad_rules_are_reported_by_name(rule: dict, needle: str) -> None:
    with pytest.raises(RulesError, match=needle):
        parse({"rules": [rule]})

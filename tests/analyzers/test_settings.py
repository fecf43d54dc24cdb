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


def problems_of(data: dict) -> list[str]:
    with pytest.raises(RulesError) as caught:
        parse(data, "r.yaml")
    return caught.value.problems


def test_rules_errors_are_in_the_rules_words() -> None:
    """Not pydantic's `value.dict[str,str].delta: Input should be a valid string`: the rule, its key, what
    is expected, the value given."""
    [problem] = problems_of({"rules": [{"name": "stock_moves", "table": "inventory", "operation": "update",
                                        "value": {"delta": 5}}]})
    assert problem == ("r.yaml: rule 'stock_moves': value: expected 'rows' (the row count), a column name, "
                       "{column: <name>}, or {delta: <name>} for SET c = c ± x, not {'delta': 5}")
    assert problems_of({"rules": [{"name": "x", "table": "t", "operation": "insert", "labels": "region",
                                   "scale": 20}]}) == [
        "r.yaml: rule 'x': labels: expected a list, not 'region'",
        "r.yaml: rule 'x': scale: must be at most 12, not 20"]
    assert problems_of({"rules": [{"table": "t", "operation": "insert"}]}) == [
        "r.yaml: rule 1 (no name): name: is required"]
    assert problems_of({"security": {"max_rows": "many"}}) == [
        "r.yaml: security: max_rows: expected a whole number, not 'many'"]


def test_rules_errors_suggest_the_spelling_meant() -> None:
    assert problems_of({"rules": [{"name": "x", "table": "t", "operation": "insert", "value": "total",
                                   "aggregat": "sum", "aggregate": "distnct"}]}) == [
        "r.yaml: rule 'x': aggregate: must be one of 'count', 'sum', 'min', 'max' or 'distinct', not 'distnct' "
        "(did you mean 'distinct'?)",
        "r.yaml: rule 'x': unknown key 'aggregat' (did you mean 'aggregate'?)"]
    assert problems_of({"rulez": [], "security": {"injection": {"enabld": False}}}) == [
        "r.yaml: unknown section 'rulez' (did you mean 'rules'?)",
        "r.yaml: security.injection: unknown key 'enabld' (did you mean 'enabled'?)"]
    assert problems_of({"rules": [{"name": "x", "table": "t", "operation": "insert", "value": {"colum": "c"}}]}) == [
        "r.yaml: rule 'x': value: a mapping holds one key, column or delta, not 'colum' (did you mean 'column'?)"]


def test_analyze_refuses_a_bad_rules_file_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: x, table: t, operation: upsert}\n")
    run = subprocess.run([sys.executable, "-m", "fasterdata", "analyze", "--rules", str(rules), "--metrics", ""],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"fasterdata: rules error: {rules}: rule 'x': operation: must be one of 'insert', 'update', 'delete', "
        "'copy' or 'select', not 'upsert' (did you mean 'insert'?)"]


def test_metrics_access_settings_of_analyze() -> None:
    s = load_settings("analyze", None, {"metrics_user": "u", "metrics_password": "p"},
                      environ={"FASTERDATA_METRICS_TLS_CERT": "c.pem", "FASTERDATA_METRICS_TLS_KEY": "k.pem"})
    assert isinstance(s, AnalyzerSettings)
    assert (s.metrics_user, s.metrics_password, s.metrics_tls_cert, s.metrics_tls_key) == ("u", "p", "c.pem", "k.pem")
    with pytest.raises(ConfigError, match="metrics_user and metrics_password must be set together"):
        load_settings("analyze", None, {"metrics_user": "u"}, environ={})
    with pytest.raises(ConfigError, match="metrics_tls_cert and metrics_tls_key must be set together"):
        load_settings("gl", None, {"metrics_tls_cert": "c.pem"}, environ={})

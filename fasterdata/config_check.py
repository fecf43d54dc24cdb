"""`fasterdata config check FILE`: every problem a start-up would meet in FILE, found offline.

FILE is a settings file, whose rules file (`analyze: rules:`, else the shipped one) is checked
too, since a bad rules file stops `analyze` as surely as a bad setting; or it is a rules file
itself, known by a top-level `rules:`, `security:` or `anomaly:` key, which no settings file has.
Only the file counts: the environment does not, so the answer is the same wherever it is run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fasterdata.analyzers import rules as rules_file
from fasterdata.config import settings
from fasterdata.config.analyzer_settings import AnalyzerSettings
from fasterdata.config.loader import read_yaml

_RULES_SECTIONS = frozenset(rules_file.RulesFile.model_fields)


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # "FILE: what it was checked as", for the ok lines


def is_rules_file(data: dict[str, Any]) -> bool:
    return bool(_RULES_SECTIONS.intersection(data))


def check(path: str | Path) -> Report:
    report = Report()
    try:
        data = read_yaml(path)
    except settings.ConfigError as exc:
        report.problems += exc.problems
        return report
    if is_rules_file(data):
        _check_rules(path, report)
        return report
    for command in settings.SECTIONS:
        try:
            settings.load(command, path, environ={})
        except settings.ConfigError as exc:
            report.problems += [p for p in exc.problems if p not in report.problems]
    if not report.problems:
        report.checked.append(f"{path}: ok")
    _check_rules(_rules_named(data), report)  # even when a setting is wrong: report everything at once
    return report


def _rules_named(data: dict[str, Any]) -> str:
    """The rules file `analyze` would read with these settings (a relative path: from where it starts)."""
    section = data.get("analyze")
    named = section.get("rules") if isinstance(section, dict) else None
    return named if isinstance(named, str) else str(AnalyzerSettings.model_fields["rules"].default)


def _check_rules(path: str | Path, report: Report) -> None:
    try:
        rules_file.load(path)
    except rules_file.RulesError as exc:
        report.problems += exc.problems
    else:
        report.checked.append(f"{path}: ok (rules)")

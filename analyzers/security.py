"""Security findings from single statements: injection signatures, DDL and role changes, sensitive
reads, unbounded writes, oversized reads. (New fingerprints need shared state: see `worker`.)

Injection signatures only apply to the simple protocol: with bound parameters, user input never
becomes SQL text. They look at the raw text, because the signature *is* the literal (OR 1=1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .fingerprint import Normalized
from .rules import SecurityPolicy
from .shape import Shape

_TAUTOLOGY = re.compile(
    r"""(?ix)\b(?:or|\|\|)\s+(?:
        (?P<n>\d+)\s*(?:=|>=|<=|like)\s*(?P=n)\b             # OR 1=1
      | '(?P<s>[^']*)'\s*(?:=|like)\s*'(?P=s)'               # OR 'a'='a'
      | (?P<c>[a-z_]\w*)\s*=\s*(?P=c)\b                      # OR x=x
      | true\b | not\s+false\b                               # OR TRUE
      | \d+\s*(?:--|;|/\*|$)                                 # OR 1 --
    )""")
_UNION = re.compile(r"(?i)\bunion\s+(?:all\s+)?select\b")
_CATALOG = re.compile(r"(?i)\b(?:pg_catalog|information_schema|pg_shadow|pg_authid|pg_user|pg_roles|"
                      r"pg_tables|pg_stat_activity|current_user|version\s*\()")
_WHERE = re.compile(r"(?i)\bwhere\b")
_SLEEP = re.compile(r"(?i)\b(?:pg_sleep|pg_sleep_for|pg_sleep_until)\s*\(")
_PROGRAM = re.compile(r"(?i)\bcopy\b.*\b(?:to|from)\s+program\b", re.S)
_LINE_COMMENT_AFTER_QUOTE = re.compile(r"'\s*--")
_WRITES = frozenset({"update", "delete"})
_STACKED_FOLLOWERS = frozenset({"insert", "update", "delete", "copy", "ddl", "role", "utility", "merge"})
_READS = frozenset({"select", "copy"})


@dataclass(slots=True)
class Finding:
    rule: str
    severity: str
    evidence: str


def _snippet(text: str, start: int, end: int, pad: int = 40) -> str:
    return text[max(0, start - pad):end + pad].replace("\n", " ")[:200]


class Security:
    """Checks one statement against the security policy."""

    def __init__(self, policy: SecurityPolicy) -> None:
        self.p = policy
        self.ddl_allowed = frozenset(policy.ddl_allowed_apps)
        self.sensitive = frozenset(t.lower() for t in policy.sensitive_tables)
        self.sensitive_allowed = frozenset(policy.sensitive_allowed_apps)

    def injection(self, sql: str, norm: Normalized) -> list[Finding]:
        """Signatures of SQL injection in a simple-protocol text."""
        sev = self.p.injection.severity
        out = []
        m = _TAUTOLOGY.search(sql)
        if m and _WHERE.search(sql, 0, m.start()):
            out.append(Finding("sqli_tautology", sev, _snippet(sql, m.start(), m.end())))
        m = _UNION.search(sql)
        if m:
            before = sql[:m.start()].rstrip()
            after = sql[m.end():]
            # UNION SELECT glued onto a WHERE literal, or reaching for the catalog
            if _CATALOG.search(after) or (_WHERE.search(before) and before[-1:] in "'0123456789"):
                out.append(Finding("sqli_union", sev, _snippet(sql, m.start(), m.end())))
        if norm.stacked:
            head, _, tail = norm.text.partition(";")
            where = _WHERE.search(head)
            if where and "$" in head[where.end():]:  # a literal in the WHERE clause, then more SQL
                out.append(Finding("sqli_stacked", sev, "…" + tail.strip()[:160]))
        if _LINE_COMMENT_AFTER_QUOTE.search(sql):
            # the tokenizer decides: a -- comment that starts right after a closing quote
            stripped = _quote_comment(sql)
            if stripped is not None:
                out.append(Finding("sqli_comment", sev, _snippet(sql, stripped, stripped + 2)))
        m = _SLEEP.search(sql)
        if m:
            out.append(Finding("sqli_time", sev, _snippet(sql, m.start(), m.end())))
        return out

    def stacked(self, previous: str, norm: Normalized, shape: Shape) -> Finding | None:
        """The proxy splits a multi-statement Query into one event per statement: `previous` is the
        normalised text of the statement before this one in the same Query message. A SELECT with a
        literal in its WHERE clause followed by a write, DDL or role change is the `1; DROP TABLE` shape."""
        if shape.op not in _STACKED_FOLLOWERS or not previous.upper().startswith(("SELECT", "WITH")):
            return None
        where = _WHERE.search(previous)
        if where is None or "$" not in previous[where.end():]:
            return None
        return Finding("sqli_stacked", self.p.injection.severity, f"{previous[-80:]}; {norm.text[:100]}")

    def fires_for(self, norm: Normalized, shape: Shape, app: str) -> bool:
        """Whether any finding of `check` but large_read can fire for this statement from `app`: they depend
        on nothing else, so the worker asks once per fingerprint and application (rows=0: no large_read)."""
        return bool(self.check({"app": app}, norm, shape, 0))

    def row_limited(self, shape: Shape) -> int:
        """Rows above which `check` reports a large read of this statement; -1 when it never does."""
        return self.p.max_rows if shape.op in _READS and self.p.max_rows else -1

    def check(self, ev: dict[str, str], norm: Normalized, shape: Shape, rows: int) -> list[Finding]:
        """Findings that depend on what the statement does (injection signatures: see `injection`)."""
        out: list[Finding] = []
        p = self.p
        op = shape.op
        app = ev.get("app", "")
        if op == "role" and app not in self.ddl_allowed:
            out.append(Finding("role_change", p.role_severity, norm.text[:200]))
        elif op == "ddl" and app not in self.ddl_allowed:
            out.append(Finding("ddl", p.ddl_severity, norm.text[:200]))
        if op in _WRITES and p.unbounded_writes and shape.parsed and not shape.has_where:
            out.append(Finding("unbounded_write", p.unbounded_severity,
                               f"{op.upper()} of {shape.table or '?'} without WHERE ({rows} rows)"))
        if op in _READS and self.sensitive and app not in self.sensitive_allowed \
                and not (op == "copy" and shape.copy_from):
            hit = sorted(self.sensitive.intersection(shape.tables))
            if hit:
                out.append(Finding("sensitive_read", p.sensitive_severity,
                                   f"read of {', '.join(hit)} ({rows} rows)"))
        if op in _READS and p.max_rows and rows > p.max_rows:
            out.append(Finding("large_read", p.max_rows_severity, f"{rows} rows > {p.max_rows}"))
        if op == "copy" and _PROGRAM.search(norm.text):
            out.append(Finding("copy_program", p.role_severity, norm.text[:200]))
        return out


_QUOTED = re.compile(r"""'[^']*(?:''[^']*)*'|"[^"]*(?:""[^"]*)*"|/\*.*?\*/|--""", re.S)


def _quote_comment(sql: str) -> int | None:
    """Offset of a `--` comment that directly follows a string literal (`…'admin'--`), or None."""
    last_end = -1
    last_was_string = False
    for m in _QUOTED.finditer(sql):
        tok = m.group(0)
        if tok == "--":
            if last_was_string and sql[last_end:m.start()].strip() == "":
                return m.start()
            return None  # the rest of the line is a comment; a later quote is inside it
        last_was_string = tok[0] == "'"
        last_end = m.end()
    return None

"""Security findings: injection signatures, DDL and role changes, sensitive reads, unbounded writes,
oversized reads (`Checks`, one statement at a time), stacked statements and shapes new to an
application (`Security`, which remembers what came before and writes the findings to a batch).

Injection is found in the statement's tokens and in the shapes each application is known to send
(`injection.Injection`), on the simple and the extended protocol alike: a text an application built
from its input and then prepared is as injectable as one it sent as a Query.

Whether a shape is new to an application is decided in Redis (the `seen` sets are shared by every
worker), inside the batch's commit; that finding is counted here only when the commit reports that
it fired (`Writes.note`), so the Prometheus counter sees it as Redis does.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .atomic import Writes
from .fingerprint import Normalized
from .injection import Hit, Injection, describe
from .keys import Keys
from .rules import SecurityPolicy
from .shape import Shape

_WHERE = re.compile(r"(?i)\bwhere\b")
_PROGRAM = re.compile(r"(?i)\bcopy\b.*\b(?:to|from)\s+program\b", re.S)
_WRITES = frozenset({"update", "delete"})
_STACKED_FOLLOWERS = frozenset({"insert", "update", "delete", "copy", "ddl", "role", "utility", "merge"})
_READS = frozenset({"select", "copy"})
_CHECKED_OPS = frozenset({"select", "copy", "update", "delete", "ddl", "role"})  # what `Checks.check` looks at
_NOTED = "finding\t"  # a finding the commit reports back: finding<TAB>rule<TAB>severity
_MEMO = 20000  # statements remembered per memo before it starts again


@dataclass(slots=True)
class Finding:
    rule: str
    severity: str
    evidence: str
    fields: dict[str, str] | None = None  # more alert fields (an injection's offset, fragment, shape)


def _rows(n: int) -> str:
    return "1 row" if n == 1 else f"{n} rows"


class Checks:
    """Checks one statement against the security policy."""

    def __init__(self, policy: SecurityPolicy) -> None:
        self.policy = policy
        self.ddl_allowed = frozenset(policy.ddl_allowed_apps)
        self.sensitive = frozenset(t.lower() for t in policy.sensitive_tables)
        self.sensitive_allowed = frozenset(policy.sensitive_allowed_apps)

    def stacked(self, previous: str, norm: Normalized, shape: Shape) -> Finding | None:
        """The proxy splits a multi-statement Query into one event per statement: `previous` is the
        normalised text of the statement before this one in the same Query message. A SELECT with a
        literal in its WHERE clause followed by a write, DDL or role change is the `1; DROP TABLE` shape."""
        if shape.op not in _STACKED_FOLLOWERS or not previous.upper().startswith(("SELECT", "WITH")):
            return None
        where = _WHERE.search(previous)
        if where is None or "$" not in previous[where.end():]:
            return None
        return Finding("sqli_stacked", self.policy.injection.severity, f"{previous[-80:]}; {norm.text[:100]}")

    def fires_for(self, norm: Normalized, shape: Shape, app: str) -> bool:
        """Whether any finding of `check` but large_read can fire for this statement from `app`: they depend
        on nothing else, so `Security` asks once per fingerprint and application (rows=0: no large_read)."""
        return bool(self.check({"app": app}, norm, shape, 0))

    def row_limited(self, shape: Shape) -> int:
        """Rows above which `check` reports a large read of this statement; -1 when it never does."""
        return self.policy.max_rows if shape.op in _READS and self.policy.max_rows else -1

    def for_shape(self, shape: Shape) -> ShapeChecks:
        """What a fingerprint's later statements need, decided on its first one."""
        return ShapeChecks(shape.op in _CHECKED_OPS, self.row_limited(shape))

    def check(self, ev: dict[str, str], norm: Normalized, shape: Shape, rows: int) -> list[Finding]:
        """Findings that depend on what the statement does (injection signatures: see `injection`)."""
        out: list[Finding] = []
        p = self.policy
        op = shape.op
        app = ev.get("app", "")
        if op == "role" and app not in self.ddl_allowed:
            out.append(Finding("role_change", p.role_severity, norm.text[:200]))
        elif op == "ddl" and app not in self.ddl_allowed:
            out.append(Finding("ddl", p.ddl_severity, norm.text[:200]))
        if op in _WRITES and p.unbounded_writes and shape.parsed and not shape.has_where:
            out.append(Finding("unbounded_write", p.unbounded_severity,
                               f"{op.upper()} of {shape.table or '?'} without WHERE ({_rows(rows)})"))
        if op in _READS and self.sensitive and app not in self.sensitive_allowed \
                and not (op == "copy" and shape.copy_from):
            hit = sorted(self.sensitive.intersection(shape.tables))
            if hit:
                out.append(Finding("sensitive_read", p.sensitive_severity,
                                   f"read of {', '.join(hit)} ({_rows(rows)})"))
        if op in _READS and p.max_rows and rows > p.max_rows:
            out.append(Finding("large_read", p.max_rows_severity, f"{_rows(rows)} > {p.max_rows}"))
        if op == "copy" and _PROGRAM.search(norm.text):
            out.append(Finding("copy_program", p.role_severity, norm.text[:200]))
        return out


class ShapeChecks:
    """Per fingerprint: whether `Checks.check` applies to its operation, the rows above which it is a large
    read (-1: never), and per application whether any other finding fires (asked once)."""

    __slots__ = ("apps", "checked", "max_rows")

    def __init__(self, checked: bool, max_rows: int) -> None:
        self.checked = checked
        self.max_rows = max_rows
        self.apps: dict[str, bool] = {}


class FindingBatch(Protocol):
    """What `Security` needs of a batch: its writes and keys, and what it keeps until the commit succeeds."""

    writes: Writes
    keys: Keys
    findings: list[tuple[str, str]]  # (rule, severity) of each finding, counted once the batch is committed
    new_pairs: set[tuple[str, str]]  # (application, fingerprint) proposed to Redis as new in this batch


class Security:
    """A statement's findings, written to its batch: counted in `<prefix>:alerts:counts`, and written to
    `<prefix>:alerts` once per dedup window (rule, fingerprint, application).

    Remembers across batches what the checks of one statement cannot know: the statement before in the
    same Query (stacked statements), the shapes each application is known to send, and the findings
    written recently (so the dedup key is not sent again and again)."""

    def __init__(self, checks: Checks, alerts_maxlen: int = 100000, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.alerts_maxlen = alerts_maxlen
        self.clock = clock  # dedup windows
        self.wall = wall  # the alert's `at`
        self.alerted: dict[tuple[str, str, str], float] = {}  # (rule, fp, app) → end of its dedup window
        self.last_simple: dict[str, Normalized] = {}  # session → its last simple-protocol statement
        self.seen_pairs: set[tuple[str, str]] = set()  # (application, fingerprint) Redis knows already
        self.injection = Injection()
        self.use(checks)

    def use(self, checks: Checks) -> None:
        """The policy of a (re)loaded rules file; what was remembered stays."""
        self.checks = checks
        self.policy = checks.policy
        self.injection_on = checks.policy.injection.enabled
        self.injection.learn_seen = checks.policy.injection.learn_seen
        self.injection.learn_sessions = checks.policy.injection.learn_sessions
        self.new_fp_on = checks.policy.new_fingerprint.enabled

    def inspect(self, batch: FindingBatch, ev: dict[str, str], sql: str, norm: Normalized, shape: Shape,
                plan: ShapeChecks, rows: int, ts: int, app: str) -> None:
        """One statement's findings, added to the batch (hot path: the cheap tests decide what runs)."""
        findings: list[Finding] | None = None
        checks = self.checks
        if self.injection_on:
            sid = ev.get("sid", "")
            if ev.get("proto") == "simple":
                # a later statement of one multi-statement Query (the proxy's `part` says i/n)
                prev = self.last_simple.get(sid)
                if prev is not None and ev.get("part", "1/").partition("/")[0] not in ("1", ""):
                    finding = checks.stacked(prev.text, norm, shape) \
                        or self._stacked_on_learnt(prev, norm, app, sid, ev.get("client", ""))
                    if finding:
                        findings = [finding]
                if len(self.last_simple) > _MEMO:
                    self.last_simple.clear()
                self.last_simple[sid] = norm
            hits = self.injection.inspect(sql, norm.fp, app, sid, tainted=findings is not None)
            if hits:
                findings = (findings or []) + [self._injection_finding(h, ev, app, sid) for h in hits]
        if plan.checked:
            # every finding but large_read depends on the statement and the application only: asked once
            static = plan.apps.get(app)
            if static is None:
                static = checks.fires_for(norm, shape, app)
                if len(plan.apps) >= 1000:
                    plan.apps.clear()
                plan.apps[app] = static
            if static or rows > plan.max_rows >= 0:
                more = checks.check(ev, norm, shape, rows)
                if more:
                    findings = (findings or []) + more
        fp = norm.fp
        if self.new_fp_on and (app, fp) not in self.seen_pairs and (app, fp) not in batch.new_pairs:
            self._propose_new(batch, ev, norm, shape, ts, app)
        if findings:
            for f in findings:
                self.alert(batch.writes, batch, f, ev, norm, ts)

    def _stacked_on_learnt(self, prev: Normalized, norm: Normalized, app: str, sid: str,
                           client: str) -> Finding | None:
        """A statement the application never sent, appended in one Query to a shape it has learnt."""
        learnt = self.injection.apps.get(app)
        if learnt is None or prev.fp not in learnt.learnt or norm.fp in learnt.learnt:
            return None
        return Finding("sqli_stacked", self.policy.injection.severity,
                       f"a statement appended in the same Query to a learnt shape: {norm.text[:120]!r}; "
                       f"application {app!r}, session {sid or '?'}, client {client or '?'}; breaks learnt shape "
                       f"{prev.fp} ({prev.text[:100]})", {"offset": "0", "fragment": norm.text[:160], "shape": prev.fp})

    def _injection_finding(self, hit: Hit, ev: dict[str, str], app: str, sid: str) -> Finding:
        shape_text = ""
        if hit.shape:
            state = self.injection.apps.get(app)
            shape_text = " ".join(state.learnt.get(hit.shape, ())) if state else ""
        fields = {"offset": str(hit.offset), "fragment": hit.fragment}
        if hit.shape:
            fields["shape"] = hit.shape
        return Finding(hit.rule, self.policy.injection.severity,
                       describe(hit, app, sid, ev.get("client", ""), shape_text), fields)

    def _propose_new(self, batch: FindingBatch, ev: dict[str, str], norm: Normalized, shape: Shape, ts: int,
                     app: str) -> None:
        """The shape may be new to the application: Redis decides in the commit (a member new to the
        application's `seen` set, the application past its learning time), and only then is it a finding."""
        policy = self.policy.new_fingerprint
        batch.new_pairs.add((app, norm.fp))
        keys = batch.keys
        child = batch.writes.if_new_member(keys.seen(app), norm.fp)
        child = child.if_older(keys.seen_since, app, ts // 1_000_000, int(policy.learn_seconds))
        finding = Finding("new_fingerprint", policy.severity,
                          f"first {shape.op} of this shape from application {app!r}")
        self.alert(child, batch, finding, ev, norm, ts, dedup=False, counted=False)
        child.note(f"{_NOTED}{finding.rule}\t{finding.severity}")

    def alert(self, writes: Writes, batch: FindingBatch, f: Finding, ev: dict[str, str], norm: Normalized, ts: int,
              dedup: bool = True, counted: bool = True) -> None:
        """A finding: counted always; written to the alerts stream once per dedup window. counted=False: the
        caller has the commit report it (`noted_findings`), as only Redis knows whether it fired."""
        if counted:
            batch.findings.append((f.rule, f.severity))
        keys = batch.keys
        writes.hincr(keys.alert_counts, f.rule, 1)
        app = ev.get("app", "")
        window = self.policy.dedup_seconds
        if dedup and window > 0:
            key = (f.rule, norm.fp, app)
            now = self.clock()
            if self.alerted.get(key, 0) > now:
                return
            self.alerted[key] = now + window
            if len(self.alerted) > 50000:
                self.alerted = {k: v for k, v in self.alerted.items() if v > now}
            writes = writes.once(keys.alert_dedup(f.rule, norm.fp, app), int(window))
        fields = {"kind": "security", "rule": f.rule, "severity": f.severity, "ts": str(ts),
                  "at": str(int(self.wall() * 1e6)), "sid": ev.get("sid", ""), "client": ev.get("client", ""),
                  "user": ev.get("user", ""), "db": ev.get("db", ""), "app": app, "fp": norm.fp,
                  "text": norm.text[:300], "evidence": f.evidence}
        if f.fields:
            fields.update(f.fields)
        if norm.comment:
            fields["comment"] = json.dumps(norm.comment, sort_keys=True)
            for key in ("traceparent", "route", "controller", "action"):
                if key in norm.comment:
                    fields[key] = norm.comment[key]
        writes.xadd(keys.alerts, self.alerts_maxlen, fields)

    @staticmethod
    def noted_findings(noted: list[str]) -> list[tuple[str, str]]:
        """(rule, severity) of the findings a commit reported as fired."""
        out = []
        for item in noted:
            if item.startswith(_NOTED):
                rule, _, severity = item[len(_NOTED):].partition("\t")
                out.append((rule, severity))
        return out

    def committed(self, batch: FindingBatch) -> list[tuple[str, str]]:
        """The batch is in Redis: remember its pairs; returns every finding it holds, for the counter."""
        self.seen_pairs.update(batch.new_pairs)
        if len(self.seen_pairs) > 200000:
            self.seen_pairs.clear()
        return batch.findings + self.noted_findings(batch.writes.noted)

    def forget(self, fps: set[str]) -> None:
        """Fingerprints evicted from Redis: whether they are new to an application is asked again."""
        self.seen_pairs = {pair for pair in self.seen_pairs if pair[1] not in fps}

    def forget_pair(self, app: str, fp: str) -> None:
        self.seen_pairs.discard((app, fp))


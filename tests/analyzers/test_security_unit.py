"""`Security` without Redis: statements in, a batch's findings and writes out (alerts, counts, dedup, the
new-shape proposal whose finding the commit reports back)."""

from __future__ import annotations

from typing import Any

from fasterdata.analyzers import ops
from fasterdata.analyzers.atomic import Writes
from fasterdata.analyzers.fingerprint import Normalizer
from fasterdata.analyzers.keys import Keys
from fasterdata.analyzers.rules import parse
from fasterdata.analyzers.security import Checks, Security, ShapeChecks
from fasterdata.analyzers.shape import ShapeCache

KEYS = Keys("unit")
POLICY = {"ddl_allowed_apps": ["migrations"], "max_rows": 1000, "new_fingerprint": {"enabled": False},
          "dedup_seconds": 60}


class Batch:
    """The batch side of `Security` (FindingBatch)."""

    def __init__(self) -> None:
        self.writes = Writes()
        self.keys = KEYS
        self.findings: list[tuple[str, str]] = []
        self.new_pairs: set[tuple[str, str]] = set()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Feed:
    """Statements through one `Security`, as the worker feeds them (normalised, shaped, planned once)."""

    def __init__(self, security: dict[str, Any] | None = None) -> None:
        self.clock = Clock()
        self.security = Security(Checks(parse({"security": {**POLICY, **(security or {})}}).security),
                                 alerts_maxlen=500, clock=self.clock, wall=lambda: 1_700_000_000.0)
        self.normalize = Normalizer(1000)
        self.shapes = ShapeCache()
        self.plans: dict[str, ShapeChecks] = {}
        self.ts = 1_700_000_000_000_000

    def stmt(self, batch: Batch, sql: str, *, proto: str = "simple", app: str = "shop", rows: int = 0,
             part: str = "", sid: str = "s1", ts: int | None = None) -> None:
        norm = self.normalize(sql)
        shape = self.shapes.get(norm.fp, norm.text)
        plan = self.plans.get(norm.fp) or self.plans.setdefault(norm.fp, self.security.checks.for_shape(shape))
        self.ts += 10
        ev = {"sid": sid, "proto": proto, "app": app, "user": "u", "db": "d", "client": "c"}
        if part:
            ev["part"] = part
        self.security.inspect(batch, ev, sql, norm, shape, plan, rows, self.ts if ts is None else ts, app)


def written(writes: Writes) -> list[tuple[str, list[str], tuple[str, ...]]]:
    """Each op of a batch's writes: (opcode, its arguments and tail, the opcodes of the conditions around it)."""
    flat = writes.args()
    out = []
    spans: list[tuple[int, int, str]] = []  # nested ops: (first child, end, opcode)
    for i, op in ops.parse(flat):
        tail = i + 1 + len(op.args)
        end = tail + (int(flat[i + op.count_offset]) * op.per if op.count else 0)
        around = tuple(code for lo, hi, code in spans if lo <= i < hi)
        if op.nested:
            spans.append((tail, end, op.code))
        out.append((op.code, flat[i + 1:end], around))
    return out


def alerts(writes: Writes) -> list[tuple[dict[str, str], tuple[str, ...]]]:
    """The alerts a batch writes (their fields) and the conditions they are written under."""
    out = []
    for code, args, around in written(writes):
        if code == "X" and args[0] == KEYS.alerts:
            fields = args[3:]
            out.append((dict(zip(fields[::2], fields[1::2], strict=True)), around))
    return out


def test_a_finding_is_counted_and_written_once_per_dedup_window() -> None:
    feed, batch = Feed(), Batch()
    for _ in range(3):
        feed.stmt(batch, "SELECT * FROM users WHERE name = 'x' OR 1=1")
    assert batch.findings == [("sqli_tautology", "high")] * 3
    assert batch.writes.incr[(KEYS.alert_counts, "sqli_tautology")] == 3
    [(alert, around)] = alerts(batch.writes)
    assert around == ("IFNX",)  # and only if no other worker wrote it within the window
    assert alert["rule"] == "sqli_tautology" and alert["severity"] == "high" and alert["app"] == "shop"
    assert "OR 1=1" in alert["evidence"] and alert["at"] == str(1_700_000_000 * 10**6)
    [(_, args, _)] = [w for w in written(batch.writes) if w[0] == "IFNX"]
    assert args[:2] == [KEYS.alert_dedup("sqli_tautology", alert["fp"], "shop"), "60"]
    feed.clock.now += 61  # the window has passed
    later = Batch()
    feed.stmt(later, "SELECT * FROM users WHERE name = 'y' OR 1=1")
    assert len(alerts(later.writes)) == 1


def test_another_application_is_its_own_alert() -> None:
    feed, batch = Feed(), Batch()
    feed.stmt(batch, "SELECT * FROM users WHERE name = 'x' OR 1=1", app="a")
    feed.stmt(batch, "SELECT * FROM users WHERE name = 'x' OR 1=1", app="b")
    assert [a["app"] for a, _ in alerts(batch.writes)] == ["a", "b"]


def test_bound_parameters_carry_no_injection() -> None:
    feed, batch = Feed(), Batch()
    feed.stmt(batch, "SELECT * FROM users WHERE name = $1 OR 'a' = $2", proto="extended")
    assert batch.findings == [] and not batch.writes
    feed.stmt(batch, "SELECT * FROM users WHERE name = '' OR 'a'='a'", proto="extended")  # input in a Parse's text
    assert batch.findings == [("sqli_tautology", "high")]


def test_a_stacked_statement_is_judged_with_the_one_before_it() -> None:
    feed, batch = Feed(), Batch()
    feed.stmt(batch, "SELECT * FROM users WHERE id = 1", part="1/2", app="migrations")
    feed.stmt(batch, "DROP TABLE users", part="2/2", app="migrations")
    feed.stmt(batch, "SELECT * FROM users WHERE id = 1", app="migrations")  # separate Queries
    feed.stmt(batch, "DROP TABLE users", app="migrations")
    assert batch.findings == [("sqli_stacked", "high")]
    [(alert, _)] = alerts(batch.writes)
    assert alert["evidence"] == "SELECT * FROM users WHERE id = $1; DROP TABLE users"


def test_checks_asked_once_per_application_still_follow_rows() -> None:
    feed, batch = Feed(), Batch()
    for rows in (5, 5000, 7):
        feed.stmt(batch, "SELECT total FROM orders WHERE region = 'eu'", rows=rows, proto="extended")
    feed.stmt(batch, "DROP TABLE orders", app="migrations")
    feed.stmt(batch, "DROP TABLE orders", app="web")
    assert batch.findings == [("large_read", "low"), ("ddl", "medium")]
    assert [(a["rule"], a["app"]) for a, _ in alerts(batch.writes)] == [("large_read", "shop"), ("ddl", "web")]


def test_a_new_shape_is_proposed_to_redis_and_counted_when_the_commit_reports_it() -> None:
    feed = Feed({"new_fingerprint": {"enabled": True, "learn_seconds": 600, "severity": "info"}})
    batch = Batch()
    feed.stmt(batch, "SELECT * FROM orders WHERE id = $1", proto="extended", app="billing")
    feed.stmt(batch, "SELECT * FROM orders WHERE id = $1", proto="extended", app="billing")  # proposed once
    assert batch.findings == []  # not yet: only Redis knows whether the shape is new to the application
    fp = feed.normalize("SELECT * FROM orders WHERE id = $1").fp
    assert batch.new_pairs == {("billing", fp)}
    ops_ = written(batch.writes)
    [(_, if_new, _)] = [w for w in ops_ if w[0] == "IFADD"]
    assert if_new[:2] == [KEYS.seen("billing"), fp]
    [(_, if_old, around)] = [w for w in ops_ if w[0] == "IFAGE"]
    assert if_old[:4] == [KEYS.seen_since, "billing", str(feed.ts // 1_000_000), "600"] and around == ("IFADD",)
    [(alert, around)] = alerts(batch.writes)
    assert alert["rule"] == "new_fingerprint" and around == ("IFADD", "IFAGE")  # not deduplicated: once by nature
    [(_, count, around)] = [w for w in ops_ if w[0] == "H" and w[1][0] == KEYS.alert_counts]
    assert count == [KEYS.alert_counts, "new_fingerprint", "1"] and around == ("IFADD", "IFAGE")
    [(_, note, around)] = [w for w in ops_ if w[0] == "N"]
    assert around == ("IFADD", "IFAGE")

    batch.writes.noted = note  # as the commit's reply says when both conditions held
    assert feed.security.committed(batch) == [("new_fingerprint", "info")]
    again = Batch()
    feed.stmt(again, "SELECT * FROM orders WHERE id = $1", proto="extended", app="billing")
    assert not again.writes  # known now: not proposed again
    feed.stmt(again, "SELECT * FROM orders WHERE id = $1", proto="extended", app="reports")
    assert again.new_pairs == {("reports", fp)}
    assert feed.security.committed(again) == []  # the commit reported nothing: learning, or known elsewhere


def test_an_evicted_shape_is_asked_about_again() -> None:
    feed = Feed({"new_fingerprint": {"enabled": True}})
    batch = Batch()
    feed.stmt(batch, "SELECT 1", app="a")
    feed.security.committed(batch)
    fp = feed.normalize("SELECT 1").fp
    feed.security.forget({fp})
    again = Batch()
    feed.stmt(again, "SELECT 1", app="a")
    assert again.new_pairs == {("a", fp)}


def test_a_reloaded_policy_applies_to_the_next_statement() -> None:
    feed, batch = Feed(), Batch()
    feed.security.use(Checks(parse({"security": {"injection": {"enabled": False}}}).security))
    feed.stmt(batch, "SELECT * FROM users WHERE name = 'x' OR 1=1")
    assert batch.findings == [] and feed.security.policy.injection.enabled is False

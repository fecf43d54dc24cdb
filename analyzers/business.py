"""Business rules applied to statements: which rows match, their values and labels.

Values come from the slot table (literals and bound parameters alike) through the shape's map of
where each placeholder lands, so `INSERT … VALUES ($1, $2)` and `INSERT … VALUES (5, 'x')` give the
same result. Multi-row VALUES yield one match per row. Statements that carry no values on the wire
(INSERT … SELECT, COPY) yield their row count, flagged `rows_only`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from . import event
from .fingerprint import Normalized
from .keys import Keys
from .rules import Rule
from .shape import Ref, Shape

OTHER = "other"
NO_LABELS = "-"
_ONE = Decimal(1)
_NOTHING: frozenset[str] = frozenset()


@dataclass(slots=True)
class Match:
    """One counted item: a row of an INSERT, or a statement."""

    rule: Rule
    value: Any  # Decimal for sums/min/max, str for distinct, None for rows_only
    labels: str  # canonical label string, "-" when the rule has none
    count: int = 1
    rows_only: bool = False


def _resolve(ref: Ref, values: list[Any]) -> Any:
    if ref is None:
        return None
    kind, arg = ref
    if kind == "const":
        return arg
    v = values[arg] if arg < len(values) else None
    if kind == "neg":
        d = event.decimal(v)
        return -d if d is not None else None
    return v


def _escape(value: str) -> str:
    return value.replace("%", "%25").replace("|", "%7C").replace("=", "%3D")


class Business:
    """All rules, indexed by (table, operation)."""

    def __init__(self, rules: list[Rule], keys: Keys, events_maxlen: int = 100000, retention_days: int = 0) -> None:
        self.rules = rules
        self.keys = keys
        self.events_maxlen = events_maxlen
        self.retention_days = retention_days  # 0: per-day keys never expire
        # per-day keys whose expiry this process has committed (key → epoch second): their expiry is sent
        # once, not with every statement; forgetting one only sends it again, which changes nothing
        self.expiring: dict[str, int] = {}
        self.index: dict[tuple[str, str], list[Rule]] = {}
        for rule in rules:
            self.index.setdefault((rule.table, rule.operation), []).append(rule)
        self.tables = {rule.table for rule in rules}
        self.label_sets: dict[str, set[str]] = {rule.name: set() for rule in rules}
        # per rule, computed once: (value kind, value column, label specs (name, source, key), match filter)
        self.facts: dict[str, tuple[str, str, tuple[tuple[str, str, str], ...], tuple[tuple[str, str], ...]]] = {}
        for rule in rules:
            specs = []
            for name in rule.labels:
                if name.startswith("@"):
                    key = name[1:]
                    specs.append((key, "ev" if key in ("app", "db", "user") else "comment", key))
                else:
                    specs.append((name, "col", name.lower()))
            match = tuple((c.lower(), str(v)) for c, v in rule.match.items())
            self.facts[rule.name] = (rule.value_kind, rule.value_column, tuple(specs), match)
        self._keys_cache: dict[tuple[str, str, str], dict[str, tuple[str, str, str]]] = {}

    def describe(self) -> dict[str, str]:
        """rule → JSON description, stored in Redis for readers (top)."""
        return {r.name: json.dumps({"aggregate": r.aggregate, "scale": r.scale, "labels": r.labels,
                                    "value": r.value_kind, "table": r.table, "operation": r.operation,
                                    "description": r.description}) for r in self.rules}

    def candidates(self, shape: Shape) -> list[Rule] | None:
        op = shape.op
        if shape.prepared:
            return None  # PREPARE runs nothing: the work is its EXECUTEs'
        if op == "copy":
            if not shape.copy_from:
                return None
        elif op not in ("insert", "update", "delete", "select"):
            return None
        return self.index.get((shape.table, op))

    def evaluate(self, ev: dict[str, str], norm: Normalized, shape: Shape, rules: list[Rule]) -> list[Match]:
        """Matches of one statement (the caller has checked it succeeded and its work counts)."""
        rows = int(ev.get("rows") or 0)
        op = shape.op
        envs: list[dict[str, Any]] | None = None  # column → value, per row (INSERT) or per statement
        rows_only = False
        params = event.params(ev) if "params" in ev else None
        if op == "insert":
            if shape.insert_select or shape.insert_cols is None or not shape.row:
                rows_only = True
            else:
                all_rows = norm.rows(params)
                if len(all_rows) != rows:
                    # ON CONFLICT DO NOTHING skipped some rows: which ones is unknowable here
                    rows_only = rows > 0
                    if rows == 0:
                        return []
                else:
                    cols = shape.insert_cols
                    envs = [{c: _resolve(ref, vals) for c, ref in zip(cols, shape.row)}  # noqa: B905
                            for vals in all_rows]
        elif op == "copy":
            rows_only = True
        else:
            values = norm.values(params)
            env = {c: _resolve(ref, values) for c, ref in shape.where_eq.items()}
            if op == "update":
                for c, ref in shape.sets.items():
                    env[c] = _resolve(ref, values)
                for c, (sign, ref) in shape.deltas.items():
                    d = event.decimal(_resolve(ref, values))
                    env["\0delta:" + c] = None if d is None else sign * d
            envs = [env]
        if rows == 0 and op != "select":
            return []
        out: list[Match] = []
        facts = self.facts
        for rule in rules:
            kind, column, specs, match = facts[rule.name]
            if rows_only or envs is None:
                if match:
                    continue  # cannot tell whether rows satisfy the filter
                labels = self._labels(rule, specs, ev, norm, {})
                if kind == "rows":
                    out.append(Match(rule, Decimal(rows), labels, 1))
                elif rule.aggregate == "count":
                    out.append(Match(rule, Decimal(rows), labels, rows))
                else:
                    out.append(Match(rule, None, labels, rows, rows_only=True))
                continue
            agg = rule.aggregate
            for env in envs:
                if match and not all(event.text(env.get(c)) == v for c, v in match):
                    continue
                if kind == "rows":
                    value: Any = _ONE if op == "insert" else Decimal(rows)  # INSERT: one match a row
                elif kind == "delta":
                    delta = env.get("\0delta:" + column)
                    if delta is None:
                        continue
                    value = delta * rows
                else:
                    raw = env.get(column)
                    if agg == "distinct":
                        if raw is None:
                            continue
                        value = raw if type(raw) is str else event.text(raw)
                    elif agg == "count":
                        value = _ONE
                    else:
                        value = event.decimal(raw)
                        if value is None:
                            continue
                out.append(Match(rule, value, self._labels(rule, specs, ev, norm, env) if specs else NO_LABELS, 1))
        return out

    def _labels(self, rule: Rule, specs: tuple[tuple[str, str, str], ...], ev: dict[str, str], norm: Normalized,
                env: dict[str, Any]) -> str:
        if not specs:
            return NO_LABELS
        parts = []
        for name, source, key in specs:
            if source == "col":
                raw = env.get(key)
                value = raw if type(raw) is str else ("" if raw is None and key not in env else event.text(raw))
            elif source == "ev":
                value = ev.get(key, "")
            else:
                value = norm.comment.get(key, "")
            if "|" in value or "=" in value or "%" in value:
                value = _escape(value)
            parts.append(f"{name}={value}")
        labels = "|".join(parts)
        seen = self.label_sets[rule.name]
        if labels not in seen:
            if len(seen) >= rule.max_series:
                return OTHER
            seen.add(labels)
        return labels

    def write(self, writes: Any, matches: list[Match], ev: dict[str, str], norm: Normalized, ts: int,
              keys: Keys | None = None) -> None:
        """The Redis effects of a statement's matches: the day's aggregates and one business event each
        (keys: the shard's, when sharded)."""
        day = event.day(ts)
        k = keys or self.keys
        writes.declared.add(k.events)
        # one event per match is the biggest share of a worker's Redis writes: one `B` op per statement
        # carries the shared fields once and five strings a match (atomic.py); parked writes use `X`
        comment = json.dumps(norm.comment, sort_keys=True) if norm.comment else ""
        if writes.portable:
            out: list[str] = []
        else:
            out = writes.ordered
            out += ("B", k.events, str(self.events_maxlen), str(ts), ev.get("sid", ""), ev.get("txid", ""),
                    ev.get("app", ""), norm.fp, comment, str(len(matches)))
        day_keys = self._day_keys(k, day)
        retention = self.retention_days
        fresh = _NOTHING if writes.portable else self.expiring  # parked: every statement carries its expiries
        for m in matches:
            rule = m.rule
            name = rule.name
            key, rows_only_key, days_key = day_keys[name]
            agg = rule.aggregate
            if m.rows_only:
                writes.hincr(rows_only_key, m.labels, m.count)
                if retention and rows_only_key not in fresh:
                    writes.expire_at(rows_only_key, self.expires_at(ts))
            elif agg == "sum":
                writes.hincr(key, m.labels, int(m.value.scaleb(rule.scale).to_integral_value(ROUND_HALF_EVEN)))
            elif agg == "count":
                writes.hincr(key, m.labels, m.count)
            elif agg == "max":
                writes.hmax(key, m.labels, m.value)
            elif agg == "min":
                writes.hmin(key, m.labels, m.value)
            else:
                set_key = k.biz_set(name, day, m.labels)
                writes.distinct(set_key, key, m.labels, m.value)
                if retention and set_key not in fresh:
                    writes.expire_at(set_key, self.expires_at(ts))
            if retention and not m.rows_only and key not in fresh:
                writes.expire_at(key, self.expires_at(ts))
            writes.sadd.add((days_key, day))
            v = m.value
            out += (name, "" if v is None else (v if type(v) is str else str(v)), m.labels,
                    "" if m.count == 1 else str(m.count), "true" if m.rows_only else "")
        if writes.portable:
            self._portable_events(writes, out, k.events, ts, ev, norm, comment)

    def _portable_events(self, writes: Any, flat: list[str], stream: str, ts: int, ev: dict[str, str],
                         norm: Normalized, comment: str) -> None:
        """The same events as `X` ops (one per match, every field named): what parked writes carry."""
        common = ["ts", str(ts), "sid", ev.get("sid", ""), "txid", ev.get("txid", ""), "app", ev.get("app", ""),
                  "fp", norm.fp]
        if comment:
            common += ["comment", comment]
        for j in range(0, len(flat), 5):
            name, value, labels, count, rows_only = flat[j:j + 5]
            fields = ["rule", name, "value", value, "labels", labels, *common]
            if count:
                fields += ["count", count]
            if rows_only:
                fields += ["rows_only", rows_only]
            writes.ordered += ["X", stream, str(self.events_maxlen), str(len(fields)), *fields]

    def expires_at(self, ts_us: int) -> int:
        """When the per-day keys of an event's (UTC) day expire: the end of that day plus the retention,
        in epoch seconds — a function of the day alone, so every worker and every repetition agree."""
        return (ts_us // 86_400_000_000 + 1 + self.retention_days) * 86400

    def remember(self, expire_ats: dict[str, int], now: float) -> None:
        """A commit set these expiries: later statements need not send them. A key whose time has come is not
        remembered (written again, it is created anew and needs its expiry again); bounded memory."""
        if len(self.expiring) > 100_000:
            self.expiring.clear()
        for key, at in expire_ats.items():
            if at > now:
                self.expiring[key] = at

    def forget_expired(self, now: float) -> None:
        """Drop remembered keys that Redis has expired by now (a late write would create them again)."""
        self.expiring = {key: at for key, at in self.expiring.items() if at > now}

    def _day_keys(self, k: Keys, day: str) -> dict[str, tuple[str, str, str]]:
        """rule → (aggregate hash, rows_only hash, days set) of one shard and day, built once."""
        cache_key = (k.p, k.t, day)
        got = self._keys_cache.get(cache_key)
        if got is None:
            if len(self._keys_cache) > 1000:
                self._keys_cache.clear()
            got = self._keys_cache[cache_key] = {r.name: (k.biz(r.name, day), k.biz_rows_only(r.name, day),
                                                          k.biz_days(r.name)) for r in self.rules}
        return got


def _unescape(value: str) -> str:
    return value.replace("%3D", "=").replace("%7C", "|").replace("%25", "%")


def label_values(labels: str, names: list[str]) -> list[str]:
    """The values of a canonical label string (`region=eu|currency=EUR`, "-", "other"), in `names` order."""
    if not names:
        return []
    if labels == OTHER:
        return [OTHER] * len(names)
    parsed = dict(part.split("=", 1) for part in labels.split("|") if "=" in part)  # "-": a rule given labels today
    return [_unescape(parsed.get(n, "")) for n in names]

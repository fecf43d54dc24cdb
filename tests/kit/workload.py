"""A scripted shop + ledger workload run against a real database, emitting the statement events the
proxy would capture for it (until the proxy captures for real).

Every statement really runs on PostgreSQL; its event carries the text as sent (literals for the
simple protocol, $n and JSON params for the extended one), the command tag's row count, and the
transaction outcome stamped when the transaction ends — rolled_back for statements undone by
ROLLBACK TO SAVEPOINT, as proxy/events.py specifies. Some transactions go out early with txn=open
and a txn_end marker, as the proxy does for long ones.
"""

from __future__ import annotations

import contextlib
import json
import random
from decimal import Decimal
from typing import Any

import psycopg

from fasterdata.analyzers import merged
from fasterdata.analyzers.keys import shard_keys
from tests.kit.eventwriter import Events

SKUS = [f"SKU-{i}" for i in range(8)]
REGIONS = ["eu", "us", "ap"]
ACCOUNTS = ["1000", "1200", "4000", "5000"]
CARTS = 400
START_QTY = 100000

SCHEMA = """
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL, region text NOT NULL,
                     total numeric(12,2) NOT NULL);
CREATE TABLE order_items (order_id bigint NOT NULL, sku text NOT NULL, quantity int NOT NULL);
CREATE TABLE inventory (sku text PRIMARY KEY, qty int NOT NULL);
CREATE TABLE gl_entries (id bigserial PRIMARY KEY, trx_date date NOT NULL, account text NOT NULL,
                         side char(1) NOT NULL, amount numeric(14,2) NOT NULL);
CREATE TABLE carts (id int PRIMARY KEY, customer_id int NOT NULL);
"""

RULES: dict[str, Any] = {
    "rules": [
        {"name": "sales", "table": "orders", "operation": "insert", "value": "total", "labels": ["region"],
         "aggregate": "sum", "scale": 2},
        {"name": "orders_placed", "table": "orders", "operation": "insert", "value": "rows", "aggregate": "sum",
         "scale": 0},
        {"name": "customers", "table": "orders", "operation": "insert", "value": "customer_id",
         "aggregate": "distinct"},
        {"name": "items_sold", "table": "order_items", "operation": "insert", "value": "quantity",
         "labels": ["sku"], "aggregate": "sum", "scale": 0},
        {"name": "stock_moves", "table": "inventory", "operation": "update", "value": {"delta": "qty"},
         "labels": ["sku"], "aggregate": "sum", "scale": 0},
        {"name": "gl_postings", "table": "gl_entries", "operation": "insert", "value": "amount",
         "labels": ["account"], "aggregate": "sum", "scale": 2},
        {"name": "gl_debits", "table": "gl_entries", "operation": "insert", "value": "amount",
         "match": {"side": "D"}, "aggregate": "sum", "scale": 2},
        {"name": "carts_removed", "table": "carts", "operation": "delete", "value": "rows", "aggregate": "sum",
         "scale": 0},
    ],
    "security": {"new_fingerprint": {"enabled": False}},
    "anomaly": {"enabled": False},
}


class NoEvents:
    """The proxy writes the events: the workload only runs its SQL."""

    ts = 0

    def stmt(self, *args: object, **kwargs: object) -> None:
        pass

    def txn_end(self, *args: object, **kwargs: object) -> None:
        pass


def literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def param(value: Any) -> Any:
    """A value as the proxy's params JSON holds it: numeric as an exact string."""
    return str(value) if isinstance(value, Decimal) else value


class Workload:
    """Runs transactions on `conn` and emits their events through `events`."""

    def __init__(self, conn: psycopg.Connection, events: Events, seed: int = 1, sessions: int = 1) -> None:
        self.conn = conn
        self.events = events
        self.rng = random.Random(seed)
        self.sessions = sessions  # > 1: transactions take turns among that many session ids (shards)
        self.next_order = 1
        self.sid = "w1"
        self.txid = 0
        self.buffer: list[dict[str, Any]] = []
        self.savepoint_mark: int | None = None
        self.statements = 0

    def setup(self) -> None:
        with self.conn.transaction():
            self.conn.execute(SCHEMA)
            for sku in SKUS:
                self.conn.execute("INSERT INTO inventory VALUES (%s, %s)", (sku, START_QTY))
            for i in range(CARTS):
                self.conn.execute("INSERT INTO carts VALUES (%s, %s)", (i, i % 50))

    # ── running one statement and recording its event ────────────────────────────────────────────
    def run(self, template: str, values: list[Any], simple: bool | None = None) -> int:
        """template uses {} for each value; simple: literals in the text, else $n + params."""
        if simple is None:
            simple = self.rng.random() < 0.4
        if simple:
            sql = template.format(*(literal(v) for v in values))
            cur = self.conn.execute(sql, prepare=False)  # no params: sent as is
            event = {"sql": sql, "params": None}
        else:
            sql = template.format(*(f"${i + 1}" for i in range(len(values))))
            cur = self.conn.execute(template.format(*(["%s"] * len(values))), values)
            event = {"sql": sql, "params": [param(v) for v in values]}
        tag = (cur.statusmessage or "").split()
        event.update(tag=tag[0] if tag else "", rows=cur.rowcount if cur.rowcount >= 0 else 0, simple=simple)
        self.buffer.append(event)
        self.statements += 1
        return cur.rowcount

    def _control(self, sql: str) -> None:
        self.conn.execute(sql)
        self.buffer.append({"sql": sql, "params": None, "tag": sql.split()[0].upper(), "rows": None,
                            "simple": True})

    def _flush(self, outcome: str, early: bool) -> None:
        for e in self.buffer:
            # undone by ROLLBACK TO SAVEPOINT: the proxy stamps those rolled_back even in a long transaction
            self._emit(e, e.pop("outcome", "open" if early else outcome))
        if early:
            self.events.txn_end(self.sid, self.txid, outcome, stmts=len(self.buffer))
        self.buffer = []

    def _emit(self, e: dict[str, Any], txn: str) -> None:
        self.events.stmt(e["sql"], e["params"], proto="simple" if e["simple"] else "extended", tag=e["tag"],
                         rows=e["rows"], txn=txn, sid=self.sid, txid=self.txid, app="shop")

    # ── transactions ─────────────────────────────────────────────────────────────────────────────
    def order(self, multi: bool) -> None:
        n = self.rng.randint(2, 4) if multi else 1
        rows = []
        for _ in range(n):
            oid = self.next_order
            self.next_order += 1
            total = Decimal(self.rng.randint(1, 100000)) / 100
            rows.append([oid, self.rng.randint(1, 300), self.rng.choice(REGIONS), total])
        template = "INSERT INTO orders (id, customer_id, region, total) VALUES " + \
            ", ".join(["({}, {}, {}, {})"] * n)
        if self.rng.random() < 0.3:
            template += " RETURNING id"
        self.run(template, [v for row in rows for v in row])
        for row in rows:
            sku = self.rng.choice(SKUS)
            qty = self.rng.randint(1, 5)
            self.run("INSERT INTO order_items (order_id, sku, quantity) VALUES ({}, {}, {})", [row[0], sku, qty])
            self.run("UPDATE inventory SET qty = qty - {} WHERE sku = {}", [qty, sku])

    def posting(self) -> None:
        amount = Decimal(self.rng.randint(1, 10**7)) / 100
        debit, credit = self.rng.sample(ACCOUNTS, 2)
        self.run("INSERT INTO gl_entries (trx_date, account, side, amount) VALUES ({}, {}, {}, {}), "
                 "({}, {}, {}, {})", ["2024-03-01", debit, "D", amount, "2024-03-01", credit, "C", amount])

    def restock(self) -> None:
        self.run("UPDATE inventory SET qty = qty + {} WHERE sku = {}", [self.rng.randint(1, 50),
                                                                        self.rng.choice(SKUS)])

    def remove_cart(self) -> None:
        self.run("DELETE FROM carts WHERE id = {}", [self.rng.randrange(CARTS)])

    def transaction(self) -> None:
        """One random unit of work: autocommit, committed, rolled back, with savepoints, or early."""
        self.txid += 1
        if self.sessions > 1:
            self.sid = f"w{self.txid % self.sessions + 1}"
        kind = self.rng.random()
        body = [lambda: self.order(self.rng.random() < 0.3), self.posting, self.restock, self.remove_cart]
        if kind < 0.25:  # autocommit statement
            self.rng.choice(body)()
            self._flush("autocommit", early=False)
            return
        early = self.rng.random() < 0.2
        self._control("BEGIN")
        for _ in range(self.rng.randint(1, 4)):
            self.rng.choice(body)()
        if self.rng.random() < 0.3:  # a savepoint whose work is undone, then more work
            self._control("SAVEPOINT sp")
            mark = len(self.buffer)
            self.rng.choice(body)()
            self.conn.execute("ROLLBACK TO SAVEPOINT sp")
            for e in self.buffer[mark:]:
                e["outcome"] = "rolled_back"
            self.buffer.append({"sql": "ROLLBACK TO SAVEPOINT sp", "params": None, "tag": "ROLLBACK",
                                "rows": None, "simple": True})
            self.rng.choice(body)()
        if self.rng.random() < 0.2:
            self.conn.execute("ROLLBACK")
            self.buffer.append({"sql": "ROLLBACK", "params": None, "tag": "ROLLBACK", "rows": None,
                                "simple": True})
            for e in self.buffer:
                e["outcome"] = "rolled_back"
            self._flush("rolled_back", early)
        else:
            self.conn.execute("COMMIT")
            self.buffer.append({"sql": "COMMIT", "params": None, "tag": "COMMIT", "rows": None, "simple": True})
            self._flush("committed", early)

    def failing(self) -> None:
        """A statement that fails (duplicate key) in autocommit: rolled back, counted nowhere."""
        self.txid += 1
        sql = "INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4)"
        with contextlib.suppress(psycopg.errors.UniqueViolation):
            self.conn.execute(sql.replace("$1", "%s").replace("$2", "%s").replace("$3", "%s").replace("$4", "%s"),
                              [1, 1, "eu", Decimal("1.00")])
        self.events.stmt(sql, [1, 1, "eu", "1.00"], proto="extended", err="23505", txn="rolled_back",
                         sid=self.sid, txid=self.txid)

    def run_many(self, n: int) -> None:
        for i in range(n):
            self.transaction()
            if i % 25 == 0:
                self.failing()

    # ── what SQL says ────────────────────────────────────────────────────────────────────────────
    def truth(self) -> dict[str, dict[str, Any]]:
        """Each rule's expected total per label set, computed by SQL over the database."""
        q = self.conn.execute
        out: dict[str, dict[str, Any]] = {}
        out["sales"] = {f"region={r}": s for r, s in q("SELECT region, sum(total) FROM orders GROUP BY 1")}
        out["orders_placed"] = {"-": q("SELECT count(*) FROM orders").fetchone()[0]}
        out["customers"] = {"-": q("SELECT count(DISTINCT customer_id) FROM orders").fetchone()[0]}
        out["items_sold"] = {f"sku={s}": n for s, n in q("SELECT sku, sum(quantity) FROM order_items GROUP BY 1")}
        out["stock_moves"] = {f"sku={s}": n - START_QTY for s, n in q("SELECT sku, qty FROM inventory")
                              if n != START_QTY}
        out["gl_postings"] = {f"account={a}": s for a, s in
                              q("SELECT account, sum(amount) FROM gl_entries GROUP BY 1")}
        debits = q("SELECT sum(amount) FROM gl_entries WHERE side = 'D'").fetchone()[0]
        out["gl_debits"] = {"-": debits} if debits is not None else {}
        removed = CARTS - q("SELECT count(*) FROM carts").fetchone()[0]
        out["carts_removed"] = {"-": removed} if removed else {}
        return {k: {lab: Decimal(v) for lab, v in d.items()} for k, d in out.items()}


def measured(client: Any, prefix: str, shards: int = 1) -> dict[str, dict[str, Decimal]]:
    """Each rule's totals as the analyzers stored them in Redis (all days, merged over shards), as decimals."""
    ks = shard_keys(prefix, shards)
    out: dict[str, dict[str, Decimal]] = {}
    for rule in RULES["rules"]:
        name = rule["name"]
        scale = rule.get("scale", 6) if rule["aggregate"] == "sum" else 0
        acc: dict[str, Decimal] = {}
        for day in merged.biz_days(client, ks, name):
            for labels, value in merged.biz_values(client, ks, name, day, rule["aggregate"]).items():
                acc[labels] = acc.get(labels, Decimal(0)) + Decimal(value).scaleb(-scale)
        out[name] = {k: v for k, v in acc.items() if v != 0 or name != "stock_moves"}
    return out


def dump(obj: Any) -> str:
    return json.dumps(obj, default=str, sort_keys=True)

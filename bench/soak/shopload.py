#!/usr/bin/env python3
"""The business half of the pipeline soak: a shop with its ledger, run through the proxy at a fixed rate.

pipeline.py imports the schema and the SQL truth from here and runs the driver as a subprocess (its own
interpreter, so its schedule does not queue behind the soak's stream reader for the GIL):

    .venv/bin/python bench/soak/shopload.py --port 6432 --dbname fdpipe --seconds 60 --out /tmp/shop.json

Why a psycopg loop and not pgbench custom scripts: the business totals must be checked against what
committed, and the interesting cases are the ones a fixed script cannot vary — rollbacks decided per
transaction, savepoints released or rolled back (one after a failed statement), duplicate-key errors in
and out of transactions, multi-row inserts, COPY, pipelined Executes, and ledger batches longer than the
proxy's `max_held` (1000), whose statements go out early (`txn=open`) and are settled by a `txn_end`
marker, `undone` ranges included. psycopg also speaks both protocols the way applications do: a
ClientCursor sends literals in Query messages (simple), a plain cursor sends $n parameters (extended,
named prepared statements after a few executions or with prepare=True). The driver counts every
statement it sends per application_name, so the soak can check the stream and the analyzers against it.

Units of work (one per arrival, Poisson at --rate per second over all shoppers):

- order (55%): BEGIN, INSERT orders (1–3 rows, RETURNING id), INSERT order_items (multi-row), one UPDATE
  inventory SET qty = qty - x per item, a two-row ledger posting; sometimes a savepoint with an extra
  item, rolled back or released; sometimes a savepoint around a duplicate-key INSERT that fails and is
  rolled back to; then COMMIT, or ROLLBACK for about one in eight;
- autocommit (15%): a restock (qty = qty + x), a cash sale posting, or a lone order INSERT;
- cancel (10%): copy one of the connection's committed orders to cancelled_orders, DELETE it (rule
  orders_cancelled), COMMIT or ROLLBACK;
- failing (5%): a duplicate-key INSERT alone, or inside a transaction that then rolls back;
- reads (15%): two SELECTs.

The ledger thread posts a batch every --batch-every seconds: 1,227 statements in one transaction
(executemany in pipeline mode, two savepoints rolled back — the second after the proxy sent the
first 1,000 statements early — and a COPY of 50 rows), committed three times in four.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg import ClientCursor

HOST = "127.0.0.1"
REGIONS = ("north", "south", "east", "west")
CURRENCY = {"north": "EUR", "south": "EUR", "east": "USD", "west": "USD"}
SKUS = [f"SKU-{i:02d}" for i in range(1, 21)]
PRICE = {sku: Decimal(3 + (i * 7) % 60) + Decimal("0.99") for i, sku in enumerate(SKUS)}
START_QTY = 100_000_000
CUSTOMERS = 20_000
COPY_MARK = "copy"  # t_3 of ledger rows loaded with COPY: a COPY reaches only `operation: copy` rules

# The tables of config/rules.yaml (the demo's columns), without foreign keys so an order can be
# cancelled (deleted) while its items stay; cancelled_orders keeps a copy so SQL still sees every
# order that was ever committed.
SCHEMA = """
DROP TABLE IF EXISTS order_items, orders, cancelled_orders, inventory, gl_entries;
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int NOT NULL, region text NOT NULL,
                     currency text NOT NULL, total numeric(12,2) NOT NULL, status text NOT NULL DEFAULT 'placed',
                     created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE cancelled_orders (LIKE orders);
CREATE TABLE order_items (order_id bigint NOT NULL, sku text NOT NULL, quantity int NOT NULL,
                          price numeric(12,2) NOT NULL);
CREATE TABLE inventory (sku text PRIMARY KEY, qty bigint NOT NULL);
CREATE TABLE gl_entries (id bigserial PRIMARY KEY, trx_date date NOT NULL, acc_debit text NOT NULL,
                         acc_credit text NOT NULL, amount numeric(18,2) NOT NULL,
                         t_1 text, t_2 text, t_3 text, t_4 text, t_5 text);
"""


def create_schema(conn: psycopg.Connection) -> None:
    """Fresh shop tables (directly, not through the proxy): each soak starts its SQL truth at zero."""
    with conn.transaction():
        conn.execute(SCHEMA)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO inventory VALUES (%s, %s)", [(sku, START_QTY) for sku in SKUS])


# ── what SQL says ────────────────────────────────────────────────────────────────────────────────

_ALL_ORDERS = "(SELECT customer_id, region, currency, total FROM orders UNION ALL " \
              "SELECT customer_id, region, currency, total FROM cancelled_orders) o"
_NOT_COPY = f"t_3 IS DISTINCT FROM '{COPY_MARK}'"


def truth(conn: psycopg.Connection) -> dict[str, dict[str, Decimal]]:
    """Each shipped rule's expected total per label string, from the committed rows.

    Keys are rule names of config/rules.yaml; label strings are built as the analyzers build them
    (`col=value|col=value`, `-` without labels). Rows loaded with COPY are left out: a COPY is operation
    `copy` to the analyzers, and the shipped ledger rules are `insert` rules, so no rule sees them (and
    no rows_only count is expected either)."""
    def rows(sql: str) -> dict[str, Decimal]:
        return {str(k): Decimal(v) for k, v in conn.execute(sql).fetchall() if v is not None}

    out = {
        "sales_amount": rows(f"SELECT 'region=' || region || '|currency=' || currency, sum(total) FROM {_ALL_ORDERS} "
                             "GROUP BY 1"),
        "orders_placed": rows(f"SELECT '-', count(*) FROM {_ALL_ORDERS} HAVING count(*) > 0"),
        "largest_order": rows(f"SELECT '-', max(total) FROM {_ALL_ORDERS}"),
        "customers_ordering": rows(f"SELECT '-', count(DISTINCT customer_id) FROM {_ALL_ORDERS} "
                                   "HAVING count(*) > 0"),
        "items_sold": rows("SELECT 'sku=' || sku, sum(quantity) FROM order_items GROUP BY 1"),
        "stock_moves": rows(f"SELECT 'sku=' || sku, qty - {START_QTY} FROM inventory WHERE qty <> {START_QTY}"),
        "orders_cancelled": rows("SELECT '-', count(*) FROM cancelled_orders HAVING count(*) > 0"),
        "gl_debits": rows(f"SELECT 'acc_debit=' || acc_debit, sum(amount) FROM gl_entries WHERE {_NOT_COPY} "
                          "GROUP BY 1"),
        "gl_credits": rows(f"SELECT 'acc_credit=' || acc_credit, sum(amount) FROM gl_entries WHERE {_NOT_COPY} "
                           "GROUP BY 1"),
        "gl_revenue": rows(f"SELECT '-', sum(amount) FROM gl_entries WHERE acc_credit = '4000-revenue' "
                           f"AND {_NOT_COPY}"),
        "gl_lines": rows(f"SELECT '-', count(*) FROM gl_entries WHERE {_NOT_COPY} HAVING count(*) > 0"),
    }
    return out


def customers(conn: psycopg.Connection) -> set[str]:
    """Every customer with a committed order: the distinct rule's members, for a union over days."""
    return {str(r[0]) for r in conn.execute(f"SELECT DISTINCT customer_id FROM {_ALL_ORDERS}")}


# ── the driver ───────────────────────────────────────────────────────────────────────────────────


@dataclass
class Counts:
    """What one thread did; merged into the JSON report."""

    statements: int = 0
    errors: int = 0  # statements that failed on purpose (duplicate keys)
    units: dict[str, int] = field(default_factory=dict)
    committed: int = 0
    rolled_back: int = 0
    copy_rows: int = 0
    lag_ms: list[float] = field(default_factory=list)  # start of a unit minus its scheduled time
    unexpected: list[str] = field(default_factory=list)
    connects: int = 0


class Stopped(Exception):
    pass


class Client:
    """One connection that counts every statement it sends (autocommit on: BEGIN/COMMIT are explicit)."""

    def __init__(self, dsn: str, app: str, simple: bool, counts: Counts) -> None:
        self.dsn, self.app, self.simple, self.c = dsn, app, simple, counts
        self.conn: psycopg.Connection | None = None
        self.born = 0.0

    def connect(self) -> psycopg.Connection:
        if self.conn is not None:
            self.conn.close()
        self.conn = psycopg.connect(self.dsn, application_name=self.app, autocommit=True)
        self.born = time.monotonic()
        self.c.connects += 1
        return self.conn

    def cursor(self) -> psycopg.Cursor[Any]:
        assert self.conn is not None
        return ClientCursor(self.conn) if self.simple else self.conn.cursor()

    def prepared(self) -> int:
        """How many statements psycopg has prepared on this connection (its private manager, 3.1–3.3)."""
        return len(getattr(getattr(self.conn, "_prepared", None), "_names", None) or ())

    def q(self, sql: str, params: Sequence[Any] | None = None, prepare: bool | None = None) -> psycopg.Cursor[Any]:
        """One statement, counted. After a ROLLBACK (or ROLLBACK TO SAVEPOINT) on a connection with
        prepared statements, psycopg forgets them and sends DEALLOCATE ALL itself, within the same call:
        counted too, so that every statement on the wire is."""
        had = self.prepared()
        self.c.statements += 1
        try:
            return self.cursor().execute(sql, params, prepare=None if self.simple else prepare)
        finally:
            if had and not self.prepared():
                self.c.statements += 1

    def many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """executemany: pipeline mode on the extended protocol, one Execute (one event) per row."""
        self.c.statements += len(rows)
        with self.cursor() as cur:
            cur.executemany(sql, rows)

    def failed(self, exc: psycopg.Error) -> None:
        """A statement failed that should not have (a deadlock, say): it still counts as a statement with
        an error, the transaction is rolled back (counted too) and the soak reports the error."""
        self.c.unexpected.append(f"{type(exc).__name__}: {exc}"[:300])
        if getattr(exc, "sqlstate", None):
            self.c.errors += 1  # the server answered the statement with an ErrorResponse
        try:
            assert self.conn is not None
            if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self.q("ROLLBACK")
        except (psycopg.Error, AssertionError):
            with contextlib.suppress(psycopg.Error):
                self.connect()


class Shopper(threading.Thread):
    """Places orders and the rest of the mix at ``rate`` units per second until ``deadline``."""

    def __init__(self, dsn: str, app: str, simple: bool, rate: float, seed: int, deadline: float,
                 halt: threading.Event, recycle: float) -> None:
        super().__init__(daemon=True, name=app)
        self.counts = Counts()
        self.cl = Client(dsn, app, simple, self.counts)
        self.rng = random.Random(seed)
        self.rate, self.deadline, self.halt, self.recycle = rate, deadline, halt, recycle
        self.mine: list[int] = []  # committed, not cancelled orders of this connection

    def run(self) -> None:
        nxt = time.monotonic()
        self.cl.connect()
        while not self.halt.is_set():
            nxt += self.rng.expovariate(self.rate)
            if nxt >= self.deadline:
                break
            if self.halt.wait(max(0.0, nxt - time.monotonic())):
                break
            self.counts.lag_ms.append((time.monotonic() - nxt) * 1000)
            try:
                if time.monotonic() - self.cl.born > self.recycle:
                    self.cl.connect()  # a pool's max lifetime: sessions come and go through the proxy
                self.unit()
            except psycopg.Error as exc:
                self.cl.failed(exc)
        if self.cl.conn is not None:
            self.cl.conn.close()

    def bump(self, kind: str) -> None:
        self.counts.units[kind] = self.counts.units.get(kind, 0) + 1

    def unit(self) -> None:
        x = self.rng.random()
        if x < 0.55:
            self.order()
        elif x < 0.70:
            self.autocommit()
        elif x < 0.80:
            self.cancel()
        elif x < 0.85:
            self.failing()
        else:
            self.bump("read")
            self.cl.q("SELECT id, total FROM orders WHERE customer_id = %s ORDER BY id DESC LIMIT 5",
                      (self.rng.randint(1, CUSTOMERS),)).fetchall()
            self.cl.q("SELECT qty FROM inventory WHERE sku = %s", (self.rng.choice(SKUS),)).fetchall()

    def _order_rows(self, n: int) -> list[tuple[int, str, str, Decimal]]:
        out = []
        for _ in range(n):
            customer = self.rng.randint(1, CUSTOMERS)
            region = REGIONS[customer % 4]
            total = Decimal(self.rng.randint(100, 250_000)) / 100
            out.append((customer, region, CURRENCY[region], total))
        return out

    def _insert_orders(self, n: int, returning: bool = True) -> list[int]:
        rows = self._order_rows(n)
        sql = "INSERT INTO orders (customer_id, region, currency, total) VALUES " + \
            ", ".join(["(%s, %s, %s, %s)"] * n) + (" RETURNING id" if returning else "")
        cur = self.cl.q(sql, [v for r in rows for v in r], prepare=True if n == 1 else None)
        return [r[0] for r in cur.fetchall()] if returning else []

    def _item(self, order_id: int, lines: int, floor: str = "") -> str:
        """Items and their stock moves; inventory rows are updated in SKU order (every transaction takes
        its row locks in one order, so shoppers never deadlock). Returns the highest SKU touched."""
        eligible = [s for s in SKUS if s >= floor]
        picks = sorted((self.rng.choice(eligible), self.rng.randint(1, 4)) for _ in range(lines))
        self.cl.q("INSERT INTO order_items (order_id, sku, quantity, price) VALUES "
                  + ", ".join(["(%s, %s, %s, %s)"] * lines),
                  [v for sku, qty in picks for v in (order_id, sku, qty, PRICE[sku])])
        for sku, qty in picks:
            self.cl.q("UPDATE inventory SET qty = qty - %s WHERE sku = %s", (qty, sku))
        return picks[-1][0]

    def _posting(self, debit: str, credit: str, amount: Decimal, note: str, second: tuple[str, str] | None) -> None:
        today = dt.datetime.now(dt.UTC).date()
        rows = [(today, debit, credit, amount, "web", note)]
        if second:
            rows.append((today, second[0], second[1], (amount * Decimal("0.6")).quantize(Decimal("0.01")), "web", note))
        self.cl.q("INSERT INTO gl_entries (trx_date, acc_debit, acc_credit, amount, t_1, t_2) VALUES "
                  + ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(rows)), [v for r in rows for v in r])

    def _end(self, commit: bool, ids: list[int]) -> None:
        if commit:
            self.cl.q("COMMIT")
            self.counts.committed += 1
            self.mine.extend(ids)
            del self.mine[:-500]
        else:
            self.cl.q("ROLLBACK")
            self.counts.rolled_back += 1

    def order(self) -> None:
        self.bump("order")
        self.cl.q("BEGIN")
        n = self.rng.randint(2, 3) if self.rng.random() < 0.2 else 1
        ids = self._insert_orders(n)
        top = self._item(ids[0], self.rng.randint(1, 4))
        total = Decimal(self.rng.randint(100, 100_000)) / 100
        self._posting("1200-receivables", "4000-revenue", total, f"order {ids[0]}", ("5000-cogs", "1400-inventory"))
        x = self.rng.random()
        if x < 0.15:  # an extra item, then second thoughts (or not)
            self.cl.q("SAVEPOINT extra")
            self._item(ids[0], 1, floor=top)
            self.cl.q("ROLLBACK TO SAVEPOINT extra" if self.rng.random() < 0.7 else "RELEASE SAVEPOINT extra")
        elif x < 0.20 and self.mine:  # a failed statement inside a savepoint; the transaction carries on
            self.cl.q("SAVEPOINT dup")
            self._duplicate()
            self.cl.q("ROLLBACK TO SAVEPOINT dup")
        self._end(self.rng.random() >= 0.12, ids)

    def _duplicate(self) -> None:
        """An INSERT with the id of a committed order: 23505, on purpose."""
        self.counts.errors += 1
        try:
            self.cl.q("INSERT INTO orders (id, customer_id, region, currency, total) VALUES (%s, %s, %s, %s, %s)",
                      (self.rng.choice(self.mine), *self._order_rows(1)[0]))
        except psycopg.errors.UniqueViolation:
            return
        self.counts.errors -= 1
        self.counts.unexpected.append("a duplicate-key INSERT succeeded")

    def autocommit(self) -> None:
        x = self.rng.random()
        if x < 0.4:
            self.bump("restock")
            self.cl.q("UPDATE inventory SET qty = qty + %s WHERE sku = %s", (self.rng.randint(1, 40),
                                                                             self.rng.choice(SKUS)))
        elif x < 0.7:
            self.bump("cash_sale")
            self._posting("1000-cash", "4000-revenue", Decimal(self.rng.randint(100, 50_000)) / 100, "till", None)
        else:
            self.bump("lone_order")
            self._insert_orders(1, returning=False)

    def cancel(self) -> None:
        if not self.mine:
            return
        self.bump("cancel")
        oid = self.mine.pop(self.rng.randrange(len(self.mine)))
        self.cl.q("BEGIN")
        self.cl.q("INSERT INTO cancelled_orders SELECT * FROM orders WHERE id = %s", (oid,))
        self.cl.q("DELETE FROM orders WHERE id = %s", (oid,))
        commit = self.rng.random() >= 0.1
        self._end(commit, [])
        if not commit:
            self.mine.append(oid)  # still there: may be cancelled later

    def failing(self) -> None:
        if not self.mine:
            return
        self.bump("failing")
        if self.rng.random() < 0.5:
            self._duplicate()  # autocommit: rolled back alone
            return
        self.cl.q("BEGIN")
        self._insert_orders(1)
        self._duplicate()
        self._end(False, [])  # the transaction is aborted: ROLLBACK


class Ledger(threading.Thread):
    """Every ``every`` seconds, one long posting batch (more statements than the proxy holds back)."""

    def __init__(self, dsn: str, app: str, every: float, seed: int, deadline: float, halt: threading.Event) -> None:
        super().__init__(daemon=True, name=app)
        self.counts = Counts()
        self.cl = Client(dsn, app, False, self.counts)
        self.rng = random.Random(seed)
        self.every, self.deadline, self.halt = every, deadline, halt
        self.batch_no = 0

    def run(self) -> None:
        nxt = time.monotonic() + self.every / 2
        self.cl.connect()
        while nxt < self.deadline and not self.halt.wait(max(0.0, nxt - time.monotonic())):
            self.counts.lag_ms.append((time.monotonic() - nxt) * 1000)
            try:
                self.batch()
            except psycopg.Error as exc:
                self.cl.failed(exc)
            nxt += self.every
        if self.cl.conn is not None:
            self.cl.conn.close()

    def rows(self, n: int) -> list[tuple[Any, ...]]:
        today = dt.datetime.now(dt.UTC).date()
        accounts = [("6100-payroll", "1000-cash"), ("1000-cash", "4000-revenue"), ("2100-payables", "1000-cash"),
                    ("1200-receivables", "4000-revenue")]
        out = []
        for _ in range(n):
            debit, credit = self.rng.choice(accounts)
            out.append((today, debit, credit, Decimal(self.rng.randint(1, 10**7)) / 100, "batch",
                        f"batch {self.batch_no}"))
        return out

    def batch(self) -> None:
        self.batch_no += 1
        self.counts.units["ledger_batch"] = self.counts.units.get("ledger_batch", 0) + 1
        insert = "INSERT INTO gl_entries (trx_date, acc_debit, acc_credit, amount, t_1, t_2) " \
                 "VALUES (%s, %s, %s, %s, %s, %s)"
        self.cl.q("BEGIN")
        self.cl.many(insert, self.rows(600))
        self.cl.q("SAVEPOINT a")  # undone while the proxy still holds the transaction
        self.cl.many(insert, self.rows(50))
        self.cl.q("ROLLBACK TO SAVEPOINT a")
        self.cl.many(insert, self.rows(500))  # past max_held (1000): the proxy sends early (txn=open)
        self.cl.q("SAVEPOINT b")  # undone after it was sent early: the txn_end marker's `undone`
        self.cl.many(insert, self.rows(50))
        self.cl.q("ROLLBACK TO SAVEPOINT b")
        assert self.cl.conn is not None
        self.counts.statements += 1
        with self.cl.conn.cursor() as cur, cur.copy(
                "COPY gl_entries (trx_date, acc_debit, acc_credit, amount, t_1, t_2, t_3) FROM STDIN") as cp:
            for row in self.rows(50):
                cp.write_row((*row, COPY_MARK))
        self.cl.many(insert, self.rows(20))
        commit = self.rng.random() < 0.75
        self.cl.q("COMMIT" if commit else "ROLLBACK")
        if commit:
            self.counts.committed += 1
            self.counts.copy_rows += 50
        else:
            self.counts.rolled_back += 1


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True, help="the proxy's port on 127.0.0.1")
    p.add_argument("--dbname", required=True, help="database with the shop tables (create_schema)")
    p.add_argument("--user", default="postgres", help="database user [postgres]")
    p.add_argument("--app", default="fdshop", help="application_name prefix: <app>-simple, -ext, -ledger [fdshop]")
    p.add_argument("--seconds", type=float, required=True, help="how long to run")
    p.add_argument("--rate", type=float, default=40.0, help="units of work per second, all shoppers [40]")
    p.add_argument("--shoppers", type=int, default=4, help="connections; half simple, half extended [4]")
    p.add_argument("--batch-every", type=float, default=60.0, help="seconds between ledger batches (0: none) [60]")
    p.add_argument("--recycle", type=float, default=60.0, help="seconds a shopper keeps its connection [60]")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True, help="JSON file written at the end")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    halt = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        halt.set()  # finish the unit in progress, so every count stays exact

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    dsn = f"host={HOST} port={args.port} dbname={args.dbname} user={args.user} sslmode=disable connect_timeout=10"
    deadline = time.monotonic() + args.seconds
    threads: list[Shopper | Ledger] = []
    for i in range(args.shoppers):
        simple = i % 2 == 0
        threads.append(Shopper(dsn, f"{args.app}-{'simple' if simple else 'ext'}", simple, args.rate / args.shoppers,
                               args.seed * 100 + i, deadline, halt, args.recycle * (0.8 + 0.1 * i)))
    if args.batch_every > 0:
        threads.append(Ledger(dsn, f"{args.app}-ledger", args.batch_every, args.seed * 100 + 99, deadline, halt))
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    apps: dict[str, dict[str, int]] = {}
    units: dict[str, int] = {}
    lags: list[float] = []
    total = Counts()
    for t in threads:
        c = t.counts
        a = apps.setdefault(t.cl.app, {"statements": 0, "errors": 0})
        a["statements"] += c.statements
        a["errors"] += c.errors
        for k, v in c.units.items():
            units[k] = units.get(k, 0) + v
        lags += c.lag_ms
        total.committed += c.committed
        total.rolled_back += c.rolled_back
        total.copy_rows += c.copy_rows
        total.connects += c.connects
        total.unexpected += c.unexpected
    report = {"seconds": time.monotonic() - t0, "apps": apps, "units": units, "committed": total.committed,
              "rolled_back": total.rolled_back, "copy_rows_committed": total.copy_rows, "connects": total.connects,
              "lag_ms": {"mean": statistics.fmean(lags) if lags else 0.0, "p99": pct(lags, 0.99),
                         "max": max(lags, default=0.0)},
              "unexpected": total.unexpected[:20], "unexpected_count": len(total.unexpected)}
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if not total.unexpected else 1


if __name__ == "__main__":
    sys.exit(main())

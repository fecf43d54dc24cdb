"""A small online shop with a ledger, driven through the proxy so the demo has real traffic to show.

Each order is one transaction: the order row, its items, stock decrements and two ledger postings
(receivable/revenue, cost of goods/inventory). About one order in ten is abandoned and rolled back,
so the business metrics can show that only committed work counts. Half the shoppers use simple-
protocol literals (psycopg's ClientCursor), half server-side parameters and prepared statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from dataclasses import dataclass, field
from decimal import Decimal

import psycopg
from psycopg import AsyncClientCursor, AsyncConnection

log = logging.getLogger("fasterdata.demo.shop")

SCHEMA = """
DROP TABLE IF EXISTS order_items, orders, inventory, products, customers, gl_entries;
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL, region text NOT NULL);
CREATE TABLE products (sku text PRIMARY KEY, name text NOT NULL, price numeric(12,2) NOT NULL,
                       cost numeric(12,2) NOT NULL);
CREATE TABLE inventory (sku text PRIMARY KEY REFERENCES products, qty int NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers,
                     region text NOT NULL, currency text NOT NULL, total numeric(12,2) NOT NULL,
                     status text NOT NULL DEFAULT 'placed', created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE order_items (order_id bigint NOT NULL REFERENCES orders, sku text NOT NULL,
                          quantity int NOT NULL, price numeric(12,2) NOT NULL);
CREATE TABLE gl_entries (id bigserial PRIMARY KEY, trx_date date NOT NULL, acc_debit text NOT NULL,
                         acc_credit text NOT NULL, amount numeric(18,2) NOT NULL,
                         t_1 text, t_2 text, t_3 text, t_4 text, t_5 text);
CREATE INDEX ON gl_entries (trx_date);
"""

SETUP_APP = "fasterdata-demo-setup"  # application_name of the schema setup (its DDL is allowed)
REGIONS = ("north", "south", "east", "west")
CURRENCY = {"north": "EUR", "south": "EUR", "east": "USD", "west": "USD"}
PRODUCTS = [(f"SKU-{i:03d}", f"Product {i}", Decimal(5 + (i * 7) % 95) + Decimal("0.99")) for i in range(1, 41)]


@dataclass
class ShopStats:
    """What the workload did, so the demo (and its test) can compare with what the analyzers saw."""

    committed: int = 0
    rolled_back: int = 0
    errors: int = 0
    revenue: Decimal = field(default_factory=Decimal)


async def create_schema(dsn: str, customers: int = 200) -> None:
    async with await AsyncConnection.connect(dsn, autocommit=True, application_name=SETUP_APP) as conn:
        await conn.execute(SCHEMA)
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO customers VALUES (%s, %s, %s, %s)",
                [(i, f"Customer {i}", f"c{i}@example.com", REGIONS[i % 4]) for i in range(1, customers + 1)])
            await cur.executemany("INSERT INTO products VALUES (%s, %s, %s, %s)",
                                  [(sku, name, price, (price * Decimal("0.6")).quantize(Decimal("0.01")))
                                   for sku, name, price in PRODUCTS])
            await cur.executemany("INSERT INTO inventory VALUES (%s, %s)",
                                  [(sku, 1_000_000) for sku, _, _ in PRODUCTS])


async def place_order(conn: AsyncConnection, rng: random.Random, stats: ShopStats, simple: bool,
                      customers: int) -> None:
    """One order as one transaction; sometimes abandoned (rolled back)."""
    customer = rng.randint(1, customers)
    region = REGIONS[customer % 4]
    lines = [(rng.choice(PRODUCTS), rng.randint(1, 3)) for _ in range(rng.randint(1, 4))]
    total = sum((price * qty for (_sku, _n, price), qty in lines), Decimal(0))
    cost = (total * Decimal("0.6")).quantize(Decimal("0.01"))
    today = dt.date.today()
    cursor = AsyncClientCursor(conn) if simple else conn.cursor()
    prepare = None if simple else True
    async with conn.transaction(force_rollback=rng.random() < 0.1) as tx, cursor as cur:
        await cur.execute(
            "INSERT INTO orders (customer_id, region, currency, total) VALUES (%s, %s, %s, %s) RETURNING id",
            (customer, region, CURRENCY[region], total), prepare=prepare)
        row = await cur.fetchone()
        order_id = row[0] if row else 0
        values = ", ".join(["(%s, %s, %s, %s)"] * len(lines))
        await cur.execute(f"INSERT INTO order_items (order_id, sku, quantity, price) VALUES {values}",
                          [v for (sku, _n, price), qty in lines for v in (order_id, sku, qty, price)])
        for (sku, _n, _price), qty in lines:
            await cur.execute("UPDATE inventory SET qty = qty - %s WHERE sku = %s", (qty, sku), prepare=prepare)
        await cur.execute(
            "INSERT INTO gl_entries (trx_date, acc_debit, acc_credit, amount, t_1, t_2) "
            "VALUES (%s, %s, %s, %s, %s, %s), (%s, %s, %s, %s, %s, %s)",
            (today, "1200-receivables", "4000-revenue", total, region, f"order {order_id}",
             today, "5000-cogs", "1400-inventory", cost, region, f"order {order_id}"))
    if tx.force_rollback:
        stats.rolled_back += 1
    else:
        stats.committed += 1
        stats.revenue += total


async def shopper(dsn: str, index: int, stats: ShopStats, stop: asyncio.Event, rate: float,
                  customers: int) -> None:
    """One application connection placing orders at about ``rate`` per second until told to stop."""
    rng = random.Random(index)
    app = "shop-web" if index % 2 else "shop-api"
    while not stop.is_set():
        try:
            async with await AsyncConnection.connect(dsn, application_name=app) as conn:
                while not stop.is_set():
                    await place_order(conn, rng, stats, simple=index % 2 == 1, customers=customers)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), rng.expovariate(rate))
        except psycopg.Error as exc:
            stats.errors += 1
            log.warning("shopper %d: %s; reconnecting", index, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def run(dsn: str, stop: asyncio.Event, shoppers: int = 4, rate: float = 5.0,
              customers: int = 200) -> ShopStats:
    stats = ShopStats()
    await asyncio.gather(*(shopper(dsn, i, stats, stop, rate, customers) for i in range(shoppers)))
    return stats

"""GL cache test helpers: a ledger with awkward values, reading a day back from PostgreSQL and from the
cache, and statement events as the proxy writes them."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import psycopg
import redis

from fasterdata.analyzers.glcache.cache import GLCache
from tests.kit.prefixes import delete_prefix
from tests.kit.services import REDIS_URL

DAY = "2024-03-15"
OTHER_DAY = "2024-03-16"
THIRD_DAY = "2024-03-14"
BULK_ROWS = 20000

LEDGER_DDL = """
CREATE TABLE gl_entries (
  id bigint PRIMARY KEY,
  trx_date date NOT NULL,
  acc_debit varchar(12) NOT NULL,
  acc_credit varchar(12) NOT NULL,
  amount numeric(18,2) NOT NULL,
  t_1 text, t_2 text, t_3 text, t_4 text, t_5 text
);
CREATE INDEX ON gl_entries (trx_date);
"""

# Values that break naive CSV/COPY handling: NULL vs '', quotes, commas, newlines (one followed by 'd',
# which looks like a CopyData header), CR, backslash-dot, unicode, extreme amounts, a 200 kB string.
AWKWARD: list[tuple[Any, ...]] = [
    (1, DAY, "1000", "2000", Decimal("0.00"), None, "", "with,comma", 'with "quotes"', "line\nbreak"),
    (2, DAY, "1000", "2001", Decimal("-0.01"), "", None, "cr\r\nlf", "\\.", " padded "),
    (3, DAY, "1001", "2000", Decimal("9999999999999999.99"), "Zürich €", "NULL", "x\ndxxxx", "\n", "d"),
    (4, DAY, "1001", "2001", Decimal("-9999999999999999.99"), "tab\there", "a\\b", '"', ",", "日本語"),
    (5, DAY, "1002", "2002", Decimal("12.30"), "x" * 200_000, "big", None, None, None),
    (6, OTHER_DAY, "1000", "2000", Decimal("1.00"), "other", None, None, None, None),
]


def make_ledger(dsn: str, rows: int = BULK_ROWS) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(LEDGER_DDL)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO gl_entries VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", AWKWARD)
        conn.execute(
            """INSERT INTO gl_entries
               SELECT 100 + g, %s::date, (1000 + g %% 37)::text, (2000 + g %% 23)::text,
                      ((g * 7919) %% 2000000 - 1000000)::numeric / 100,
                      'CC' || (g %% 40), CASE WHEN g %% 17 = 0 THEN NULL ELSE 'DEPT-' || (g %% 12) END,
                      'P' || (g %% 500), (ARRAY['EUR','USD','GBP','CHF'])[1 + g %% 4], 'row ' || g
                 FROM generate_series(1, %s) g""", (DAY, rows))
        conn.execute(
            """INSERT INTO gl_entries
               SELECT 1000000 + g, %s::date, '1000', '2000', g, 'CC1', NULL, NULL, NULL, NULL
                 FROM generate_series(1, 50) g""", (OTHER_DAY,))
        conn.execute(
            """INSERT INTO gl_entries
               SELECT 2000000 + g, %s::date, '1001', '2001', g, 'CC2', 'x', NULL, NULL, NULL
                 FROM generate_series(1, 50) g""", (THIRD_DAY,))
        conn.execute("ANALYZE gl_entries")


def drop_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        delete_prefix(client, prefix)
    finally:
        client.close()


def pg_rows(dsn: str, day: str, table: str = "gl_entries") -> list[dict[str, Any]]:
    """The day straight from PostgreSQL as Python values (psycopg: Decimal, date, str, None), by id."""
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(f"SELECT * FROM {table} WHERE trx_date = %s ORDER BY id", (day,))
        return cur.fetchall()


def arrow_rows(table: Any) -> list[dict[str, Any]]:
    return table.sort_by("id").to_pylist()


def event(sql: str, tag: str, params: list[Any] | None = None, ptypes: list[int] | None = None,
          txn: str = "autocommit", db: str = "", **extra: str) -> dict[str, str]:
    """A statement event with every field of the contract, as flat strings."""
    parts = tag.split()
    rows = parts[-1] if parts and parts[-1].isdigit() else ""
    fields = {
        "v": "1", "kind": "stmt", "ts": "1710460800000000", "dur_us": "120", "sid": "s1",
        "client": "127.0.0.1:50000", "user": "postgres", "db": db, "app": "test", "pid": "4242",
        "proto": "extended" if params is not None else "simple", "stmt": "",
        "sql": sql, "params": json.dumps(params or [], default=str), "ptypes": json.dumps(ptypes or []),
        "tag": tag, "rows": rows, "err": "", "errmsg": "", "txid": "7", "txn": txn,
    }
    fields.update(extra)
    return fields


def execute(dsn: str, sql: str, params: Any = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql, params)


def same(dsn: str, cache: GLCache, day: str = DAY) -> bool:
    return arrow_rows(cache.get_day(day)) == pg_rows(dsn, day)

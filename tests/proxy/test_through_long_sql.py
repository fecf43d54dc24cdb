"""Statements longer than max_sql_chars through the real proxy keep one fingerprint whatever their length.

The proxy shortens long IN-lists and bulk-INSERT VALUES rows before it would cut the text, so the
analyzers fold what reaches the stream into the shape of the short statement. Real drivers (psycopg
binding on the client and on the server, asyncpg), the machine's PostgreSQL, the shared Redis under
the proxy's private prefix.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg
import psycopg

from fasterdata.analyzers.fingerprint import normalize
from tests.kit.polling import wait_until
from tests.kit.processes import ProxyProcess
from tests.kit.services import PG_USER
from tests.kit.streams import captured

LIMIT = 16384  # the default max_sql_chars
IN_SIZES = range(2500, 4501, 500)
ROW_SIZES = range(800, 1201, 100)


def all_captured(proxy: ProxyProcess, app: str, fragment: str, count: int) -> list[str]:
    """The app's statements holding ``fragment`` once ``count`` of them are in the stream, else []."""
    got = [sql for sql in captured(proxy, app) if fragment in sql]
    return got if len(got) >= count else []


def one_shape(proxy: ProxyProcess, app: str, fragment: str, count: int, short: str) -> None:
    got = wait_until(lambda: all_captured(proxy, app, fragment, count), f"{count} statements with {fragment}")
    assert len(got) == count
    assert {normalize(sql).fp for sql in got} == {normalize(short).fp}
    assert any("more */" in sql for sql in got), "no statement was long enough to be shortened"
    assert all(len(sql) <= LIMIT and "truncated" not in sql for sql in got)


def ids(n: int) -> list[int]:
    return list(range(100_000, 100_000 + n))


def test_long_in_lists_on_the_simple_protocol(proxy: ProxyProcess) -> None:
    """psycopg's ClientCursor puts the ids in the text, as ORMs binding on the client do."""
    app = f"long-in-{uuid.uuid4().hex[:8]}"

    def query(n: int) -> str:
        return ("select count(*) as long_in from generate_series(1, 200000) g where g in ("
                + ", ".join(map(str, ids(n))) + ") and g > 0")

    with psycopg.connect(proxy.dsn(application_name=app), autocommit=True, connect_timeout=10,
                         cursor_factory=psycopg.ClientCursor) as conn:
        for n in IN_SIZES:
            assert len(query(n)) > LIMIT or n == IN_SIZES[0]
            assert conn.execute(query(n)).fetchone() == (n,)
    one_shape(proxy, app, "long_in", len(IN_SIZES), query(3))


def bulk_insert(n: int, mark: Callable[[int], str]) -> str:
    rows = ", ".join(f"({mark(3 * i + 1)}, {mark(3 * i + 2)}, {mark(3 * i + 3)})" for i in range(n))
    return f"insert into long_rows (id, amount, note) values {rows} returning id"


def rows_params(n: int) -> list[object]:
    out: list[object] = []
    for i in range(n):
        out += [i, f"{i}.50", f"note {i}"]
    return out


def test_orm_bulk_inserts_literal_and_bound(proxy: ProxyProcess) -> None:
    """The same bulk INSERT with its values in the text and bound as $n: each form keeps one shape."""
    app = f"long-rows-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(proxy.dsn(application_name=app), autocommit=True, connect_timeout=10) as conn:
        conn.execute("create temp table long_rows (id int, amount numeric, note text)")
        for n in ROW_SIZES:
            values = rows_params(n)
            literal = bulk_insert(n, lambda k, values=values: psycopg.sql.quote(values[k - 1]))
            assert len(literal) > LIMIT
            assert len(conn.execute(literal).fetchall()) == n
            conn.execute("truncate long_rows")
    one_shape(proxy, app, "into long_rows", len(ROW_SIZES), bulk_insert(3, lambda k: "1"))


async def test_asyncpg_bulk_insert_with_thousands_of_parameters(proxy: ProxyProcess) -> None:
    app = f"long-apg-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user=PG_USER, database="postgres",
                                 server_settings={"application_name": app})
    try:
        await conn.execute("create temp table long_rows (id int, amount text, note text)")
        for n in ROW_SIZES:
            sql = bulk_insert(n, lambda k: f"${k}")
            assert len(sql) > LIMIT
            assert len(await conn.fetch(sql, *rows_params(n))) == n
    finally:
        await conn.close()
    one_shape(proxy, app, "into long_rows", len(ROW_SIZES), bulk_insert(3, lambda k: f"${k}"))


async def test_asyncpg_in_lists_with_a_cast_on_every_element(proxy: ProxyProcess) -> None:
    """SQLAlchemy on asyncpg expands an IN into $1::INTEGER, $2::INTEGER, …: one shape at every length."""
    app = f"long-cast-{uuid.uuid4().hex[:8]}"

    def query(n: int) -> str:
        return ("select count(*) as cast_in from generate_series(1, 200000) g where g in ("
                + ", ".join(f"${i}::INTEGER" for i in range(1, n + 1)) + ")")

    conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user=PG_USER, database="postgres",
                                 server_settings={"application_name": app})
    try:
        for n in IN_SIZES:
            assert len(query(n)) > LIMIT
            assert await conn.fetchval(query(n), *ids(n)) == n
        assert await conn.fetchval(query(3), *ids(3)) == 3
    finally:
        await conn.close()
    one_shape(proxy, app, "cast_in", len(IN_SIZES) + 1, query(2))

"""asyncpg through the proxy: binary-format extended protocol everywhere, its own COPY and cursor paths."""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest

from tests.kit.processes import Proxy


@pytest.fixture
async def conn(proxy: Proxy) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(proxy.url(), timeout=10)
    try:
        yield c
    finally:
        await c.close()


async def test_prepared_statement_fetch(conn: asyncpg.Connection) -> None:
    """conn.prepare names a statement (Parse/Describe), then fetches with Bind/Execute repeatedly."""
    stmt = await conn.prepare("select g, $1::text || g from generate_series(1, $2::int) g")
    assert [p.name for p in stmt.get_parameters()] == ["text", "int4"]
    assert [a.name for a in stmt.get_attributes()] == ["g", "?column?"]
    rows = await stmt.fetch("n", 3)
    assert [tuple(r) for r in rows] == [(1, "n1"), (2, "n2"), (3, "n3")]
    assert await stmt.fetchval("m", 1, column=1) == "m1"
    assert (await stmt.fetchrow("x", 2))["g"] == 1


async def test_executemany(conn: asyncpg.Connection) -> None:
    """executemany pipelines one Bind/Execute per row and a single Sync."""
    await conn.execute("create temp table em(id int primary key, v text)")
    await conn.executemany("insert into em values ($1, $2)", [(i, f"v{i}") for i in range(500)])
    assert await conn.fetchval("select count(*) from em") == 500
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.executemany("insert into em values ($1, $2)", [(1000, "a"), (1, "dup"), (1001, "b")])
    assert await conn.fetchval("select count(*) from em") == 500  # the batch is one implicit transaction


async def test_copy_records_and_tables(conn: asyncpg.Connection) -> None:
    """copy_records_to_table (binary COPY in), copy_from_table / copy_to_table round-trip the same bytes."""
    await conn.execute("create temp table cr(id int, name text, amount numeric, at timestamptz)")
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    records = [(i, f"name {i}" if i % 7 else None, Decimal(i) / 8, base + dt.timedelta(minutes=i)) for i in range(5000)]
    assert await conn.copy_records_to_table("cr", records=records) == "COPY 5000"
    got = await conn.fetch("select * from cr order by id")
    assert [tuple(r) for r in got] == records

    out = io.BytesIO()
    assert await conn.copy_from_table("cr", output=out, format="csv") == "COPY 5000"
    dump = out.getvalue()
    assert dump.count(b"\n") == 5000
    await conn.execute("create temp table cr2 (like cr)")
    assert await conn.copy_to_table("cr2", source=io.BytesIO(dump), format="csv") == "COPY 5000"
    assert await conn.fetchval("select count(*) from (select * from cr except select * from cr2) d") == 0

    query_out = io.BytesIO()
    await conn.copy_from_query("select id from cr where id < $1 order by id", 4, output=query_out)
    assert query_out.getvalue() == b"0\n1\n2\n3\n"


async def test_cursor_in_transaction(conn: asyncpg.Connection) -> None:
    """A cursor's prefetch and fetch(n) are Execute messages with row limits on one portal."""
    async with conn.transaction():
        seen = [r["g"] async for r in conn.cursor("select g from generate_series(1, 1000) g", prefetch=64)]
        assert seen == list(range(1, 1001))
        cur = await conn.cursor("select g from generate_series(1, $1::int) g", 100)
        assert [r[0] for r in await cur.fetch(7)] == list(range(1, 8))
        assert await cur.forward(10) == 10
        assert (await cur.fetchrow())[0] == 18
        assert [r[0] for r in await cur.fetch(1000)] == list(range(19, 101))


async def test_typed_values_round_trip(conn: asyncpg.Connection) -> None:
    """Binary-encoded parameters and results survive the proxy for the awkward types."""
    values = {
        "numeric": Decimal("-123456789012345678901234567890.000000000000000001"),
        "timestamptz": dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        "uuid": uuid.UUID("c0ffee00-1234-4abc-8def-0123456789ab"),
        "jsonb": json.dumps({"a": [1, 2.5, None], "ü": {"nested": True}}),
        "int8[]": [1, None, -(2**63), 2**63 - 1],
        "text[]": ["a", "", None, 'comma,quote"brace}'],
        "bytea": bytes(range(256)) * 1000,
        "interval": dt.timedelta(days=3, seconds=7, microseconds=11),
        "date": dt.date(2000, 2, 29),
        "bool": True,
        "float8": float("inf"),
    }
    for typ, value in values.items():
        got = await conn.fetchval(f"select $1::{typ}", value)
        if typ == "jsonb":
            assert json.loads(got) == json.loads(value)
        else:
            assert got == value, typ
    assert await conn.fetchval("select $1::text", None) is None
    row = await conn.fetchrow(
        "select $1::numeric as n, $2::uuid as u, $3::bytea as b", Decimal("NaN"), values["uuid"], b""
    )
    assert row["n"].is_nan() and row["u"] == values["uuid"] and row["b"] == b""


async def test_errors_and_transaction_rollback(conn: asyncpg.Connection) -> None:
    """A failed statement inside a transaction rolls it back; the connection stays usable."""
    await conn.execute("create temp table tr(x int)")
    with pytest.raises(asyncpg.DivisionByZeroError):
        async with conn.transaction():
            await conn.execute("insert into tr values (1)")
            await conn.execute("select 1 / 0")
    assert await conn.fetchval("select count(*) from tr") == 0
    assert await conn.fetchval("select 1") == 1

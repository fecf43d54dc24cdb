"""Postgres → Arrow: every value exact (decimals, NULL vs '', awkward text), types from the catalog."""

from __future__ import annotations

import datetime
from decimal import Decimal

import psycopg
import pyarrow as pa
import pytest

from fasterdata.analyzers.glcache.catalog import CatalogError, describe
from fasterdata.analyzers.glcache.copyout import copy_csv_blocks
from fasterdata.analyzers.glcache.load import DictPolicy, connect, load_day, load_where, parse_stream
from tests.glcache.kit import AWKWARD, BULK_ROWS, DAY, OTHER_DAY, arrow_rows, pg_rows


def _info(dsn: str, table: str = "gl_entries", date_column: str = "trx_date", key: str = "id"):
    with connect(dsn) as conn:
        return describe(conn, table, date_column, key)


def test_day_equals_postgres_exactly(ledger_db: str) -> None:
    info = _info(ledger_db)
    table, seconds = load_day(ledger_db, info, DAY, DictPolicy())
    assert seconds > 0
    expected = pg_rows(ledger_db, DAY)
    assert table.num_rows == len(expected) == BULK_ROWS + 5
    assert arrow_rows(table) == expected
    by_id = {r["id"]: r for r in arrow_rows(table)}
    assert by_id[1]["t_1"] is None and by_id[1]["t_2"] == ""  # NULL and empty string stay apart
    assert by_id[3]["amount"] == Decimal("9999999999999999.99")
    assert by_id[5]["t_1"] == "x" * 200_000


def test_types_come_from_the_catalog(ledger_db: str) -> None:
    table, _ = load_day(ledger_db, _info(ledger_db), DAY, DictPolicy())
    schema = table.schema
    assert schema.field("id").type == pa.int64()
    assert schema.field("trx_date").type == pa.date32()
    assert schema.field("amount").type == pa.decimal128(18, 2)
    for low in ("acc_debit", "acc_credit", "t_1", "t_2", "t_3", "t_4"):
        assert pa.types.is_dictionary(schema.field(low).type), low
    assert schema.field("t_5").type == pa.string()  # one distinct value per row: not worth a dictionary


@pytest.mark.parametrize("block_bytes", [4096, 65536])
def test_small_blocks_split_rows_anywhere(ledger_db: str, block_bytes: int) -> None:
    """Frames cut at every possible place and a row larger than the buffer still come out exact."""
    info = _info(ledger_db)
    from fasterdata.analyzers.glcache.catalog import day_predicate

    table = load_where(ledger_db, info, day_predicate(info, DAY), DictPolicy("none"), block_bytes=block_bytes)
    assert arrow_rows(table) == pg_rows(ledger_db, DAY)


def test_libpq_path_matches_raw_path(ledger_db: str) -> None:
    """The fallback used for TLS connections yields the same table."""
    info = _info(ledger_db)
    from fasterdata.analyzers.glcache.catalog import copy_query, day_predicate

    with connect(ledger_db) as conn:
        query = copy_query(info, day_predicate(info, DAY)).as_bytes(conn)
        slow = parse_stream(copy_csv_blocks(conn, query, keep_open=True), info, DictPolicy("none"))
        assert not conn.closed
    assert arrow_rows(slow) == pg_rows(ledger_db, DAY)


def test_other_day_and_empty_day(ledger_db: str) -> None:
    info = _info(ledger_db)
    other, _ = load_day(ledger_db, info, OTHER_DAY, DictPolicy())
    assert arrow_rows(other) == pg_rows(ledger_db, OTHER_DAY)
    empty, _ = load_day(ledger_db, info, "1999-01-01", DictPolicy())
    assert empty.num_rows == 0
    assert empty.schema.field("amount").type == pa.decimal128(18, 2)


def test_progress_reports_rows(ledger_db: str) -> None:
    seen: list[tuple[int, int]] = []
    table, _ = load_day(ledger_db, _info(ledger_db), DAY, DictPolicy(),
                        progress=lambda r, b: seen.append((r, b)))
    assert seen and seen[-1][0] == table.num_rows and seen[-1][1] > 0


def test_missing_table_or_column(ledger_db: str) -> None:
    with connect(ledger_db) as conn:
        with pytest.raises(CatalogError):
            describe(conn, "no_such_table", "trx_date")
        with pytest.raises(CatalogError):
            describe(conn, "gl_entries", "no_such_column")


def test_more_types_exact(ledger_db: str) -> None:
    """int2/int4, unconstrained and wide NUMERIC, timestamptz, timestamp date column, bool, float8."""
    with psycopg.connect(ledger_db, autocommit=True) as conn:
        conn.execute("""CREATE TABLE ledger_x (
            k int4 PRIMARY KEY, at timestamptz, small int2, free numeric, wide numeric(38,10),
            flag bool, ratio float8, note text)""")
        conn.execute("SET TimeZone = 'Europe/Berlin'")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO ledger_x VALUES (%s,%s,%s,%s,%s,%s,%s,%s)", [
                (1, "2024-03-15 00:00:00+00", 1, Decimal("123456789012345678901234.5678"),
                 Decimal("1234567890123456789012345678.0123456789"), True, 0.1, "a"),
                (2, "2024-03-15 23:59:59.999999+00", -32768, Decimal("-0.000001"), None, False, -1e300, None),
                (3, "2024-03-15 12:00:00+00", None, None, Decimal("-0.0000000001"), None, None, ""),
                (4, "2024-03-16 00:00:00+00", 7, Decimal("1"), Decimal("1"), True, 2.5, "next day"),
            ])
    info = _info(ledger_db, "ledger_x", "at", "k")
    table, _ = load_day(ledger_db, info, DAY, DictPolicy())
    assert table.schema.field("small").type == pa.int16()
    assert table.schema.field("wide").type == pa.decimal128(38, 10)
    assert pa.types.is_decimal(table.schema.field("free").type)
    assert table.schema.field("at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("flag").type == pa.bool_()
    got = {r["k"]: r for r in table.to_pylist()}
    assert set(got) == {1, 2, 3}
    assert got[1]["free"] == Decimal("123456789012345678901234.5678")
    assert got[2]["free"] == Decimal("-0.000001")
    assert got[1]["wide"] == Decimal("1234567890123456789012345678.0123456789")
    assert got[3]["wide"] == Decimal("-0.0000000001")
    assert got[2]["at"] == datetime.datetime(2024, 3, 15, 23, 59, 59, 999999, tzinfo=datetime.UTC)
    assert got[1]["ratio"] == 0.1 and got[2]["ratio"] == -1e300
    assert got[1]["flag"] is True and got[2]["flag"] is False and got[3]["flag"] is None
    assert got[2]["note"] is None and got[3]["note"] == ""


def test_awkward_rows_fixture_is_what_we_think() -> None:
    assert any("\n" in (v or "") for row in AWKWARD for v in row if isinstance(v, str))


@pytest.mark.parametrize("policy", [DictPolicy("none"), DictPolicy("all")])
def test_text_format_escapes_round_trip(ledger_db: str, policy: DictPolicy) -> None:
    """COPY's text format escapes backslashes and control characters; every value comes back as stored."""
    values = ["\\N", "\\\\N", "ends\\", "\\", "\b\f\v\r\n\t", "\x01raw\x1f", "a\\nb", "", "N", None]
    with psycopg.connect(ledger_db, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS gl_escapes")
        conn.execute("CREATE TABLE gl_escapes (id int, trx_date date, t text, b bytea)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO gl_escapes VALUES (%s, %s, %s, %s)",
                            [(i, DAY, v, None if v is None else v.encode()) for i, v in enumerate(values)])
    info = _info(ledger_db, "gl_escapes", "trx_date", "id")
    table, _ = load_day(ledger_db, info, DAY, policy)
    got = sorted(zip(table.column("id").to_pylist(), table.column("t").to_pylist(),
                     table.column("b").to_pylist(), strict=True))
    assert got == [(i, v, None if v is None else "\\x" + v.encode().hex()) for i, v in enumerate(values)]


def test_dictionaries_narrowed_per_block_concatenate(ledger_db: str) -> None:
    """Blocks whose dictionaries got different index types still give one table, typed as a single block."""
    info = _info(ledger_db)
    from fasterdata.analyzers.glcache.catalog import day_predicate

    where = day_predicate(info, DAY)
    whole = load_where(ledger_db, info, where, DictPolicy("all"), block_bytes=64 << 20)
    split = load_where(ledger_db, info, where, DictPolicy("all"), block_bytes=4096)
    assert split.schema == whole.schema
    assert split.schema.field("t_5").type.index_type == pa.int16()  # 20k distinct values, 4 kB blocks
    assert arrow_rows(split) == arrow_rows(whole) == pg_rows(ledger_db, DAY)


def test_utf8_trusted_only_when_the_server_guarantees_it(ledger_db: str) -> None:
    """Skipping pyarrow's UTF-8 check is only safe for UTF8 output from a validating server encoding."""
    from fasterdata.analyzers.glcache.load import utf8_guaranteed

    with connect(ledger_db) as conn:
        assert utf8_guaranteed(conn)
        conn.execute("SET client_encoding = 'LATIN1'")
        assert not utf8_guaranteed(conn)

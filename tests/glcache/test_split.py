"""A day read over several COPY connections: exact, in row order, one snapshot, and failures close everything."""

from __future__ import annotations

import datetime
import itertools
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from fasterdata.analyzers.glcache.catalog import copy_query, day_predicate, describe
from fasterdata.analyzers.glcache.copyout import CopyError, copy_csv_blocks
from fasterdata.analyzers.glcache.load import DictPolicy, connect, load_day, parse_streams
from fasterdata.analyzers.glcache.split import open_split, ranges
from tests.glcache.kit import DAY, arrow_rows, pg_rows


def _info(dsn: str, table: str = "gl_entries"):
    with connect(dsn) as conn:
        return describe(conn, table, "trx_date", "id")


def _ids_in_row_order(dsn: str, table: str = "gl_entries") -> list[int]:
    with psycopg.connect(dsn) as conn:
        query = sql.SQL("SELECT id FROM {} WHERE trx_date = %s ORDER BY ctid").format(sql.Identifier(table))
        return [r[0] for r in conn.execute(query, (DAY,))]


def test_ranges_cover_every_page() -> None:
    """The outer ranges are open, so rows outside what the index probes found are still read."""
    assert ranges(0, 99, 2, 10) == [(-1, 50), (50, -1)]
    assert ranges(10, 39, 3, 10) == [(-1, 20), (20, 30), (30, -1)]
    assert ranges(5, 9, 4, 2) == [(-1, 7), (7, -1)]  # 5 pages hold only two ranges of 2
    assert ranges(0, 1000, 3, 512) == [(-1, -1)]  # too small to be worth a second connection
    assert ranges(None, None, 2, 1) == [(-1, -1)]  # empty day


@pytest.mark.parametrize(("connections", "block_bytes"), [(2, 4 << 20), (3, 4 << 20), (2, 4096)])
def test_split_day_equals_postgres_in_row_order(ledger_db: str, connections: int, block_bytes: int) -> None:
    info = _info(ledger_db)
    assert info.kind == "r" and info.date_indexed
    single, _ = load_day(ledger_db, info, DAY, DictPolicy())
    split, _ = load_day(ledger_db, info, DAY, DictPolicy(), connections=connections, block_bytes=block_bytes,
                        min_pages=1)
    assert split.schema == single.schema
    assert split.column("id").to_pylist() == _ids_in_row_order(ledger_db)
    assert arrow_rows(split) == pg_rows(ledger_db, DAY)


def test_split_progress_counts_every_stream(ledger_db: str) -> None:
    seen: list[tuple[int, int]] = []
    table, _ = load_day(ledger_db, _info(ledger_db), DAY, DictPolicy(), lambda r, b: seen.append((r, b)),
                        connections=2, block_bytes=8192, min_pages=1)
    assert seen[-1][0] == table.num_rows
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in itertools.pairwise(seen))


def test_split_without_date_index_and_on_a_view(ledger_db: str) -> None:
    """No index: the table's pages are divided; a view has no row addresses and is read in one COPY."""
    with psycopg.connect(ledger_db, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS gl_plain")
        conn.execute("CREATE TABLE gl_plain AS SELECT * FROM gl_entries")
        conn.execute("CREATE OR REPLACE VIEW gl_view AS SELECT * FROM gl_entries")
    plain = _info(ledger_db, "gl_plain")
    assert plain.kind == "r" and not plain.date_indexed
    table, _ = load_day(ledger_db, plain, DAY, DictPolicy(), connections=3, min_pages=1)
    assert table.column("id").to_pylist() == _ids_in_row_order(ledger_db, "gl_plain")
    assert arrow_rows(table) == pg_rows(ledger_db, DAY, "gl_plain")
    view = _info(ledger_db, "gl_view")
    assert view.kind == "v"
    table, _ = load_day(ledger_db, view, DAY, DictPolicy(), connections=2, min_pages=1)
    assert arrow_rows(table) == pg_rows(ledger_db, DAY)


def test_split_reads_one_point_in_time(fresh_ledger: str) -> None:
    """Writes committed after the ranges are planned (before any COPY) are invisible to every range: the
    other connections run in the first one's exported snapshot, not in snapshots of their own."""
    info = _info(fresh_ledger)
    before = pg_rows(fresh_ledger, DAY)
    omit = (info.date_column,)
    with ThreadPoolExecutor(2) as pool:
        planned = open_split(lambda: connect(fresh_ledger), info, DAY, 3, omit, pool, min_pages=1)
        assert len(planned) == 3
        with psycopg.connect(fresh_ledger, autocommit=True) as other:
            last = other.execute("SELECT max(ctid) FROM gl_entries WHERE trx_date = %s", (DAY,)).fetchone()
            other.execute("UPDATE gl_entries SET amount = amount + 1, t_5 = 'changed' WHERE ctid = %s", last)
            other.execute("DELETE FROM gl_entries WHERE id = 1000")
            other.execute("INSERT INTO gl_entries SELECT 999999, trx_date, acc_debit, acc_credit, amount, "
                          "'new', t_2, t_3, t_4, t_5 FROM gl_entries WHERE id = 101")
        assert pg_rows(fresh_ledger, DAY) != before
        streams = [copy_csv_blocks(conn, query) for conn, query in planned]
        table = parse_streams(streams, info, DictPolicy(), omit=omit,
                              constants={info.date_column: datetime.date.fromisoformat(DAY)}, utf8_valid=True,
                              readers=pool)
    assert arrow_rows(table) == before


def test_a_failing_range_fails_the_load_and_closes_every_connection(ledger_db: str) -> None:
    info = _info(ledger_db)
    good = connect(ledger_db)
    bad = connect(ledger_db)
    where = day_predicate(info, DAY)
    failing = sql.SQL("{} AND 1 / (id - 5000) IS NOT NULL").format(where)  # division by zero mid-stream
    streams = [copy_csv_blocks(good, copy_query(info, where).as_bytes(good), 8192),
               copy_csv_blocks(bad, copy_query(info, failing).as_bytes(bad), 8192)]
    with pytest.raises(CopyError) as err:
        parse_streams(streams, info, DictPolicy())
    assert err.value.sqlstate == "22012"
    assert good.closed and bad.closed


def test_types_and_dictionaries_unchanged_by_the_split(ledger_db: str) -> None:
    table, _ = load_day(ledger_db, _info(ledger_db), DAY, DictPolicy(), connections=2, min_pages=1)
    assert table.schema.field("amount").type == pa.decimal128(18, 2)
    assert table.schema.field("trx_date").type == pa.date32()
    for low in ("acc_debit", "acc_credit", "t_1", "t_2", "t_3", "t_4"):
        assert pa.types.is_dictionary(table.schema.field(low).type), low
    assert table.schema.field("t_5").type == pa.string()

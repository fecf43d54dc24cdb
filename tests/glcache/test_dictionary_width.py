"""One dictionary index width for a whole column: a code column with 201 distinct values a day, in runs
(as batch or cost-centre codes are), gives each load block fewer than 128 values but the day more.

Every way out of the cache must hold such a day: an Arrow file, a Parquet file pyarrow reads back,
combine_chunks on the table from memory, from Redis and over Flight, and a patch adding new values.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from fasterdata.analyzers.glcache.cache import GLCache
from fasterdata.analyzers.glcache.flight import GLFlightServer, fetch_day
from fasterdata.analyzers.glcache.patch import upsert_rows
from fasterdata.cli import main
from tests.glcache.kit import DAY, LEDGER_DDL
from tests.kit.databases import scratch_database
from tests.kit.services import REDIS_URL, direct_dsn

Make = Callable[..., GLCache]
CODES = 201
RUN = 600  # rows per code: a load block (4 MiB) holds a few dozen runs


@pytest.fixture(scope="module")
def coded_ledger() -> Iterator[str]:
    """gl_entries with one day whose t_1 holds CODES batch codes, each in one run of RUN rows."""
    with scratch_database("fdgl") as name:
        dsn = direct_dsn(name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(LEDGER_DDL)
            conn.execute(
                """INSERT INTO gl_entries
                   SELECT g, %s::date, '1000', '2000', g %% 1000, 'B' || lpad((g / %s)::text, 3, '0'), NULL,
                          NULL, NULL, repeat('x', 120) || g
                     FROM generate_series(0, %s) g""", (DAY, RUN, CODES * RUN - 1))
            conn.execute("ANALYZE gl_entries")
        yield dsn


def codes(table: pa.Table) -> list[str]:
    return table.sort_by("id").column("t_1").to_pylist()


def expected() -> list[str]:
    return [f"B{g // RUN:03d}" for g in range(CODES * RUN)]


def test_the_loaded_column_is_one_dictionary_type_for_the_day(coded_ledger: str, make_cache: Make) -> None:
    cache = make_cache(coded_ledger)
    table = cache.get_day(DAY)
    cache.flush()
    col = table.column("t_1")
    assert pa.types.is_dictionary(col.type) and col.num_chunks > 1
    assert col.type.index_type == pa.int16()  # 201 values do not fit int8, whatever a block holds
    assert codes(table.combine_chunks()) == expected()
    cache.memory.clear()
    from_redis = cache.get_day(DAY)
    assert cache.stats["hits_redis"] == 1
    assert codes(from_redis.combine_chunks()) == expected()


@pytest.mark.parametrize("suffix", [".arrow", ".parquet"])
def test_gl_get_writes_a_file_that_reads_back(coded_ledger: str, prefix: str, tmp_path: Path,
                                              suffix: str, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / f"d{suffix}"
    argv = ["gl", "get", DAY, "--out", str(out), "--dsn", coded_ledger, "--redis", REDIS_URL,
            "--prefix", prefix, "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    back = feather.read_table(out) if suffix == ".arrow" else pq.read_table(out)
    assert codes(back) == expected()


def test_a_flight_fetched_day_combines(coded_ledger: str, make_cache: Make) -> None:
    cache = make_cache(coded_ledger)
    server = GLFlightServer(cache, "grpc://127.0.0.1:0")
    threading.Thread(target=server.serve, daemon=True).start()
    try:
        table = fetch_day(f"grpc://127.0.0.1:{server.port}", DAY)
    finally:
        server.shutdown()
    assert codes(table.combine_chunks()) == expected()


def test_a_patch_with_new_values_widens_the_index() -> None:
    """127 cached values (int8) and a patch bringing 50 more: the day then needs int16."""
    cached = pa.table({"id": pa.array(range(127), pa.int64()),
                       "code": pc.dictionary_encode(pa.array([f"C{i}" for i in range(127)])).cast(
                           pa.dictionary(pa.int8(), pa.string()))})
    new = pa.table({"id": pa.array(range(127, 177), pa.int64()), "code": [f"N{i}" for i in range(50)]})
    patched = upsert_rows(cached, "id", new)
    assert patched.schema.field("code").type.index_type == pa.int16()
    combined = patched.combine_chunks()
    assert combined.column("code").to_pylist() == [f"C{i}" for i in range(127)] + [f"N{i}" for i in range(50)]

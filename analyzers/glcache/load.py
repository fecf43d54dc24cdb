"""One day (or any row set) of the ledger from PostgreSQL into an Arrow table, streaming, exact.

COPY's CSV blocks (see copyout) are parsed by pyarrow on worker threads with an explicit schema while the
next blocks are still arriving, so no Python object is made per row and the parse hides behind the server.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

from .catalog import DICT, STRING, TableInfo, copy_query, day_predicate, table_ident
from .copyout import Block, copy_csv_blocks

Progress = Callable[[int, int], None]
"""Called as progress(rows_so_far, bytes_so_far) after each block."""

_POOL = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)),
                           thread_name_prefix="glcache-parse")
SESSION = (
    "SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'; "
    "SET extra_float_digits = 3; SET bytea_output = 'hex'; SET client_encoding = 'UTF8'"
)


@dataclass(frozen=True)
class DictPolicy:
    """Which string columns become dictionaries: 'auto' (by cardinality), 'all', 'none' or named ones."""

    mode: str | tuple[str, ...] = "auto"
    max_ratio: float = 0.5

    def parse_type(self, name: str, text: bool) -> bool:
        if isinstance(self.mode, tuple):
            return name in self.mode
        return text and self.mode in ("auto", "all")


def connect(dsn: str) -> psycopg.Connection:
    """A connection set up so COPY's text is what the parser expects (ISO dates, UTC, full floats)."""
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(SESSION)
    return conn


def _options(info: TableInfo, policy: DictPolicy, newlines: bool, omit: tuple[str, ...]) -> tuple:
    names = [n for n in info.names if n not in omit]
    types = {}
    for c in info.columns:
        if c.name not in omit:
            types[c.name] = DICT if c.parse == STRING and policy.parse_type(c.name, c.text) else c.parse
    read = pacsv.ReadOptions(column_names=["_pad", *names], use_threads=False, block_size=1 << 30)
    parse = pacsv.ParseOptions(newlines_in_values=newlines)
    convert = pacsv.ConvertOptions(
        column_types=types, include_columns=names, null_values=[""], strings_can_be_null=True,
        quoted_strings_can_be_null=False, true_values=["t"], false_values=["f"],
    )
    return read, parse, convert


def parse_block(block: Block, info: TableInfo, policy: DictPolicy, omit: tuple[str, ...] = ()) -> pa.Table:
    """One CSV block → Arrow, with the parse types (before finishing touches)."""
    read, parse, convert = _options(info, policy, block.newlines, omit)
    return pacsv.read_csv(pa.py_buffer(block.data), read_options=read, parse_options=parse,
                          convert_options=convert)


def empty_parsed(info: TableInfo, policy: DictPolicy, omit: tuple[str, ...] = ()) -> pa.Table:
    _, _, convert = _options(info, policy, False, omit)
    return pa.schema([pa.field(n, t) for n, t in convert.column_types.items()]).empty_table()


def _decimal_for(values: pa.ChunkedArray) -> pa.DataType:
    """Smallest decimal type holding every value of an unconstrained NUMERIC column exactly."""
    text = pc.drop_null(values)
    if len(text) == 0:
        return pa.decimal128(38, 0)
    if pc.any(pc.match_substring_regex(text, r"[^0-9.+-]")).as_py():
        raise ValueError("NaN or Infinity in a NUMERIC column")
    digits = pc.replace_substring_regex(text, r"^[+-]", "")
    length = pc.utf8_length(digits)
    dot = pc.find_substring(digits, ".")
    has_dot = pc.greater_equal(dot, 0)
    whole = pc.if_else(has_dot, dot, length)
    frac = pc.if_else(has_dot, pc.subtract(pc.subtract(length, dot), 1), 0)
    scale = int(pc.max(frac).as_py() or 0)
    precision = max(1, int(pc.max(whole).as_py() or 0) + scale)
    return pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)


def _narrow(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Smallest index type for a dictionary column: less to store, compress and decompress."""
    largest = max((len(chunk.dictionary) for chunk in col.chunks), default=0)
    index = pa.int8() if largest <= 127 else pa.int16() if largest <= 32767 else pa.int32()
    if index == col.type.index_type:
        return col
    return col.cast(pa.dictionary(index, col.type.value_type))


def finish(table: pa.Table, info: TableInfo, policy: DictPolicy,
           constants: dict[str, object] | None = None) -> pa.Table:
    """Final column types: exact decimals for unconstrained NUMERIC, UTC timestamps, dictionaries by policy;
    columns left out of the COPY are filled with their known constant."""
    columns = []
    for c in info.columns:
        if constants and c.name in constants:
            columns.append(pa.repeat(pa.scalar(constants[c.name], c.arrow), table.num_rows))
            continue
        col = table.column(c.name)
        if c.numeric_unconstrained:
            with contextlib.suppress(ValueError, pa.ArrowInvalid):  # NaN/Infinity, > 76 digits: keep text
                col = col.cast(_decimal_for(col))
        elif c.arrow != col.type and not pa.types.is_dictionary(col.type):
            col = col.cast(c.arrow)
        elif pa.types.is_dictionary(col.type) and policy.mode == "auto" and table.num_rows:
            distinct = sum(len(chunk.dictionary) for chunk in col.chunks)
            if distinct > policy.max_ratio * table.num_rows:
                col = col.cast(STRING)
        if pa.types.is_dictionary(col.type):
            col = _narrow(col)
        columns.append(col)
    return pa.Table.from_arrays(columns, names=info.names)


def estimate_rows(conn: psycopg.Connection, info: TableInfo, where: sql.Composable) -> int:
    """The planner's row estimate (for a progress bar's total); 0 if unknown."""
    query = sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE {}").format(table_ident(info), where)
    try:
        plan = conn.execute(query).fetchone()
    except psycopg.Error:
        return 0
    if not plan:
        return 0
    data = plan[0] if not isinstance(plan[0], str) else json.loads(plan[0])
    return int(data[0]["Plan"]["Plan Rows"])


def parse_stream(blocks: Iterable[Block], info: TableInfo, policy: DictPolicy,
                 progress: Progress | None = None, omit: tuple[str, ...] = (),
                 constants: dict[str, object] | None = None) -> pa.Table:
    """Parse blocks on the pool while the next ones arrive; the table in arrival order."""
    futures: list[Future[pa.Table]] = []
    rows = size = 0
    try:
        for block in blocks:
            futures.append(_POOL.submit(parse_block, block, info, policy, omit))
            rows += block.rows
            size += len(block.data)
            if progress:
                progress(rows, size)
        parts = [f.result() for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    table = pa.concat_tables(parts) if parts else empty_parsed(info, policy, omit)
    return finish(table, info, policy, constants)


def load_where(dsn: str, info: TableInfo, where: sql.Composable, policy: DictPolicy,
               progress: Progress | None = None, block_bytes: int = 4 << 20,
               constants: dict[str, object] | None = None) -> pa.Table:
    """Rows matching ``where`` via one COPY on a fresh connection (consumed by the raw reader)."""
    omit = tuple(constants or ())
    conn = connect(dsn)
    query = copy_query(info, where, omit).as_bytes(conn)
    return parse_stream(copy_csv_blocks(conn, query, block_bytes), info, policy, progress, omit, constants)


def load_day(dsn: str, info: TableInfo, day: str, policy: DictPolicy,
             progress: Progress | None = None) -> tuple[pa.Table, float]:
    """One day of the ledger and the seconds it took.

    A ``date`` column equals the day on every row, so it is not sent: the server formats less, the wire
    carries less, and the column is filled in here.
    """
    start = time.perf_counter()
    constants: dict[str, object] = {}
    if info.column(info.date_column).pg_type == "date":
        constants[info.date_column] = datetime.date.fromisoformat(day)
    table = load_where(dsn, info, day_predicate(info, day), policy, progress, constants=constants)
    return table, time.perf_counter() - start


def read_where(conn: psycopg.Connection, info: TableInfo, where: sql.Composable,
               policy: DictPolicy) -> pa.Table:
    """Small re-read on a long-lived connection (libpq path; the connection stays usable)."""
    query = copy_query(info, where).as_bytes(conn)
    return parse_stream(copy_csv_blocks(conn, query, keep_open=True), info, policy)

"""One day (or any row set) of the ledger from PostgreSQL into an Arrow table, streaming, exact.

COPY's text-format blocks (see copyout) are parsed by pyarrow's CSV reader (tab-delimited, no quoting, ``\\N``
is NULL) on worker threads with an explicit schema while the next blocks are still arriving, so no Python
object is made per row and the parse hides behind the server. The rare values holding a backslash escape are
unescaped afterwards, one value at a time.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

from .catalog import DICT, STRING, TableInfo, copy_query, day_predicate, table_ident
from .copyout import Block, copy_csv_blocks
from .dictionaries import fit, fit_table
from .split import MIN_PAGES, open_split, splittable

log = logging.getLogger("fasterdata.glcache")

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


def utf8_guaranteed(conn: psycopg.Connection) -> bool:
    """True if COPY's text is valid UTF-8 by the server's own checks: client encoding UTF8 and a server
    encoding that validates input (SQL_ASCII stores any bytes and converts nothing)."""
    status = conn.pgconn.parameter_status
    return status(b"client_encoding") == b"UTF8" and status(b"server_encoding") not in (None, b"SQL_ASCII")


def connect(dsn: str) -> psycopg.Connection:
    """A connection set up so COPY's text is what the parser expects (ISO dates, UTC, full floats)."""
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(SESSION)
    return conn


def _options(info: TableInfo, policy: DictPolicy, newlines: bool, omit: tuple[str, ...],
             utf8_valid: bool = False) -> tuple:
    names = [n for n in info.names if n not in omit]
    types = {}
    for c in info.columns:
        if c.name not in omit:
            types[c.name] = DICT if c.parse == STRING and policy.parse_type(c.name, c.text) else c.parse
    read = pacsv.ReadOptions(column_names=["_pad", *names], use_threads=False, block_size=1 << 30)
    # COPY text format: raw newlines and tabs in values are always escaped, so no quoting and one row a line.
    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False, newlines_in_values=False)
    convert = pacsv.ConvertOptions(
        column_types=types, include_columns=names, null_values=["\\N"], strings_can_be_null=True,
        true_values=["t"], false_values=["f"], check_utf8=not utf8_valid,
    )
    return read, parse, convert


_BACKSLASH = ord("\\")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unescape_text(value: str) -> str:
    """COPY text escapes (``\\\\``, ``\\n``, ``\\t``, …) back to the characters they stand for."""
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), value)


def _unescape_array(values: pa.Array) -> pa.Array:
    """Unescape only the values holding a backslash (rare), in Python; the rest stays as parsed."""
    mask = pc.fill_null(pc.match_substring(values, "\\"), False)
    if not pc.any(mask).as_py():
        return values
    fixed = [_unescape_text(v) for v in pc.filter(values, mask).to_pylist()]
    return pc.replace_with_mask(values, mask, pa.array(fixed, values.type))


def _unescape(table: pa.Table) -> pa.Table:
    """Undo COPY text escaping in string columns (dictionaries: in the dictionary, which stays distinct)."""
    for i, field in enumerate(table.schema):
        col = table.column(i)
        if pa.types.is_dictionary(field.type) and pa.types.is_string(field.type.value_type):
            chunks = [pa.DictionaryArray.from_arrays(c.indices, _unescape_array(c.dictionary))
                      for c in col.chunks]
        elif pa.types.is_string(field.type):
            chunks = [_unescape_array(c) for c in col.chunks]
        else:
            continue
        table = table.set_column(i, field, pa.chunked_array(chunks, field.type))
    return table


def parse_block(block: Block, info: TableInfo, policy: DictPolicy, omit: tuple[str, ...] = (),
                utf8_valid: bool = False) -> pa.Table:
    """One COPY text block → Arrow, with the parse types (before finishing touches).

    ``utf8_valid``: the server already guarantees valid UTF-8 (see utf8_guaranteed), so pyarrow need not
    validate every string again (measured ~10 % of the parse).
    """
    read, parse, convert = _options(info, policy, block.newlines, omit, utf8_valid)
    # Dictionaries: parse plain strings, then encode each column in one pass; measured ~5 % less CPU than
    # pyarrow's CSV dictionary conversion, which competes with the server for the cores.
    types = convert.column_types
    encode = [name for name, kind in types.items() if kind == DICT]
    if encode:
        convert.column_types = {name: STRING if kind == DICT else kind for name, kind in types.items()}
    table = pacsv.read_csv(pa.py_buffer(block.data), read_options=read, parse_options=parse,
                           convert_options=convert)
    escaped = _has_escapes(block, table)
    for name in encode:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.dictionary_encode(table.column(i)))
    if escaped:
        table = _unescape(table)
    return fit_table(table)  # on the worker while the stream goes on; widened again if needed (_unify)


def _has_escapes(block: Block, parsed: pa.Table) -> bool:
    """True if a value holds an escape: the block has more backslashes than NULLs.

    Each NULL is the field ``\\N``, one backslash; a value holds a backslash only as part of an escape
    (``\\\\``, ``\\n`` …); the header pad and the types other than text never do. So one byte count (the
    raw reader's, else one here) and the parsed NULL counts decide, with no scan for where the backslashes are.
    """
    slashes = block.backslashes
    if slashes < 0:
        slashes = int(np.count_nonzero(np.frombuffer(block.data, dtype=np.uint8) == _BACKSLASH))
    return slashes > sum(col.null_count for col in parsed.columns)


def _unify(parts: list[pa.Table]) -> list[pa.Table]:
    """Widen blocks whose dictionaries were narrowed further than others' so the blocks concatenate (the
    widest block's type; finish then fits the index to the whole column)."""
    if len(parts) < 2 or all(p.schema == parts[0].schema for p in parts[1:]):
        return parts
    schema = parts[0].schema
    for i, field in enumerate(schema):
        if not pa.types.is_dictionary(field.type):
            continue
        widest = max((p.schema.field(i).type for p in parts), key=lambda t: t.index_type.bit_width)
        if widest != field.type or any(p.schema.field(i).type != widest for p in parts):
            schema = schema.set(i, pa.field(field.name, widest, field.nullable))
    return [p if p.schema == schema else p.cast(schema) for p in parts]


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


def _many_distinct(col: pa.ChunkedArray, limit: float) -> bool:
    """More than ``limit`` distinct values in a dictionary column, whatever its chunking: blocks end where
    the socket's data happened to end, so the per-block dictionaries' sum (an upper bound, exact for one
    chunk) alone would make the type depend on timing. The exact count is taken only when the bound is over."""
    bound = sum(len(chunk.dictionary) for chunk in col.chunks)
    if bound <= limit or col.num_chunks < 2:
        return bound > limit
    return len(pc.unique(pa.chunked_array([c.dictionary for c in col.chunks], col.type.value_type))) > limit


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
        elif (pa.types.is_dictionary(col.type) and policy.mode == "auto" and table.num_rows
              and _many_distinct(col, policy.max_ratio * table.num_rows)):
            col = col.cast(STRING)
        if pa.types.is_dictionary(col.type):
            col = fit(col)  # for the whole column: blocks' dictionaries may each need less (see dictionaries)
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


class _Tally:
    """Rows and bytes over every stream, reported one caller at a time (progress callbacks expect that)."""

    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.rows = self.size = 0
        self.lock = threading.Lock()

    def add(self, block: Block) -> None:
        if self.progress is None:
            return
        with self.lock:
            self.rows += block.rows
            self.size += len(block.data)
            self.progress(self.rows, self.size)


def _submit_stream(blocks: Iterable[Block], info: TableInfo, policy: DictPolicy, omit: tuple[str, ...],
                   utf8_valid: bool, tally: _Tally, stop: threading.Event) -> list[Future[pa.Table]]:
    """Hand a stream's blocks to the parse pool as they arrive; stop early (closing the stream, and so its
    connection) once another stream has failed."""
    futures: list[Future[pa.Table]] = []
    try:
        for block in blocks:
            futures.append(_POOL.submit(parse_block, block, info, policy, omit, utf8_valid))
            tally.add(block)
            if stop.is_set():
                break
    except BaseException:
        stop.set()
        for f in futures:
            f.cancel()
        raise
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()
    return futures


def parse_streams(streams: Sequence[Iterable[Block]], info: TableInfo, policy: DictPolicy,
                  progress: Progress | None = None, omit: tuple[str, ...] = (),
                  constants: dict[str, object] | None = None, utf8_valid: bool = False,
                  readers: ThreadPoolExecutor | None = None) -> pa.Table:
    """Parse blocks on the pool while the next ones arrive; the table holds the streams in order, each in
    arrival order. The first stream is read on this thread, the others on ``readers`` (one thread each)."""
    stop = threading.Event()
    tally = _Tally(progress)
    with contextlib.ExitStack() as stack:
        if len(streams) > 1 and readers is None:
            readers = stack.enter_context(ThreadPoolExecutor(len(streams) - 1, "glcache-copy"))
        others = [readers.submit(_submit_stream, s, info, policy, omit, utf8_valid, tally, stop)
                  for s in streams[1:]] if readers is not None else []
        submitted: list[list[Future[pa.Table]]] = []
        error: BaseException | None = None
        for k, stream in enumerate(streams):
            try:
                submitted.append(others[k - 1].result() if k else
                                 _submit_stream(stream, info, policy, omit, utf8_valid, tally, stop))
            except BaseException as exc:
                stop.set()
                error = error or exc
    futures = [f for part in submitted for f in part]
    try:
        if error is not None:
            raise error
        parts = [f.result() for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    table = pa.concat_tables(_unify(parts)) if parts else empty_parsed(info, policy, omit)
    return finish(table, info, policy, constants)


def parse_stream(blocks: Iterable[Block], info: TableInfo, policy: DictPolicy,
                 progress: Progress | None = None, omit: tuple[str, ...] = (),
                 constants: dict[str, object] | None = None, utf8_valid: bool = False) -> pa.Table:
    """Parse blocks on the pool while the next ones arrive; the table in arrival order."""
    return parse_streams([blocks], info, policy, progress, omit, constants, utf8_valid)


def load_where(dsn: str, info: TableInfo, where: sql.Composable, policy: DictPolicy,
               progress: Progress | None = None, block_bytes: int = 4 << 20,
               constants: dict[str, object] | None = None) -> pa.Table:
    """Rows matching ``where`` via one COPY on a fresh connection (consumed by the raw reader)."""
    omit = tuple(constants or ())
    conn = connect(dsn)
    query = copy_query(info, where, omit).as_bytes(conn)
    utf8 = utf8_guaranteed(conn)
    return parse_stream(copy_csv_blocks(conn, query, block_bytes), info, policy, progress, omit, constants,
                        utf8)


def _load_split(dsn: str, info: TableInfo, day: str, policy: DictPolicy, progress: Progress | None,
                connections: int, constants: dict[str, object], block_bytes: int, min_pages: int) -> pa.Table:
    """The day as ctid ranges on ``connections`` connections in one snapshot (see split), parsed as they
    stream and concatenated in range order."""
    omit = tuple(constants)
    with ThreadPoolExecutor(connections - 1, "glcache-copy") as pool:
        try:
            planned = open_split(lambda: connect(dsn), info, day, connections, omit, pool, min_pages)
        except psycopg.Error as exc:  # e.g. no snapshot export where the server does not allow it
            log.info("glcache: split load of %s not possible (%s); one COPY instead", day, exc)
            return load_where(dsn, info, day_predicate(info, day), policy, progress, block_bytes, constants)
        try:
            utf8 = all(utf8_guaranteed(conn) for conn, _ in planned)
            streams = [copy_csv_blocks(conn, query, block_bytes) for conn, query in planned]
            return parse_streams(streams, info, policy, progress, omit, constants, utf8, pool)
        finally:  # streams close their connection when they end; this covers those never started
            for conn, _ in planned:
                conn.close()


def load_day(dsn: str, info: TableInfo, day: str, policy: DictPolicy, progress: Progress | None = None,
             connections: int = 1, block_bytes: int = 4 << 20,
             min_pages: int = MIN_PAGES) -> tuple[pa.Table, float]:
    """One day of the ledger and the seconds it took.

    A ``date`` column equals the day on every row, so it is not sent: the server formats less, the wire
    carries less, and the column is filled in here. With ``connections`` > 1 a plain table's day is read
    over that many connections in one snapshot, so the server formats it on as many cores (see split).
    """
    start = time.perf_counter()
    constants: dict[str, object] = {}
    if info.column(info.date_column).pg_type == "date":
        constants[info.date_column] = datetime.date.fromisoformat(day)
    if connections > 1 and splittable(info):
        table = _load_split(dsn, info, day, policy, progress, connections, constants, block_bytes, min_pages)
    else:
        table = load_where(dsn, info, day_predicate(info, day), policy, progress, block_bytes, constants)
    return table, time.perf_counter() - start


def read_where(conn: psycopg.Connection, info: TableInfo, where: sql.Composable,
               policy: DictPolicy) -> pa.Table:
    """Small re-read on a long-lived connection (libpq path; the connection stays usable)."""
    query = copy_query(info, where).as_bytes(conn)
    return parse_stream(copy_csv_blocks(conn, query, keep_open=True), info, policy,
                        utf8_valid=utf8_guaranteed(conn))

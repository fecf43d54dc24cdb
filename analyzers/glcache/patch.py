"""Apply row patches (upsert or delete by key) to a cached day without touching unaffected data.

Only record batches that hold an affected key are rewritten; new rows are appended as a new chunk, so an
INSERT into a million-row day costs a hash lookup, not a copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from .dictionaries import fit_appended


def _conform(table: pa.Table, rows: pa.Table) -> tuple[pa.Table, pa.Table]:
    """``table`` and ``rows`` in one schema, the cached table's but for dictionary index widths: those are
    widened (on both) when the new values would not fit the cached width (see dictionaries)."""
    columns, kept = [], table
    for i, field in enumerate(table.schema):
        if field.name in rows.column_names:
            col = rows.column(field.name)
        else:
            col = pa.chunked_array([pa.nulls(rows.num_rows, field.type)])
        if pa.types.is_dictionary(field.type):
            old, col = fit_appended(table.column(i), col)
            if old.type != field.type:
                kept = kept.set_column(i, pa.field(field.name, old.type, field.nullable), old)
        elif col.type != field.type:
            col = col.cast(field.type)
        columns.append(col)
    return kept, pa.Table.from_arrays(columns, schema=kept.schema)


def delete_keys(table: pa.Table, key: str, keys: pa.Array | Sequence[object]) -> tuple[pa.Table, int]:
    """Table without rows whose key is in ``keys``; and how many were removed."""
    if len(keys) == 0 or table.num_rows == 0:
        return table, 0
    key_type = table.schema.field(key).type
    values = keys if isinstance(keys, pa.Array) else pa.array(list(keys), type=key_type)
    if values.type != key_type:
        values = values.cast(key_type)
    batches = table.to_batches()
    kept: list[pa.RecordBatch] = []
    removed = 0
    for batch in batches:
        hit = pc.is_in(batch.column(key), value_set=values)
        count = pc.sum(hit).as_py() or 0
        if count:
            removed += count
            batch = batch.filter(pc.invert(hit))
        kept.append(batch)
    if not removed:
        return table, 0
    return pa.Table.from_batches(kept, schema=table.schema), removed


def upsert_rows(table: pa.Table, key: str, rows: pa.Table) -> pa.Table:
    """Replace rows with the same key (last one in ``rows`` wins) and append the rest."""
    if rows.num_rows == 0:
        return table
    table, rows = _conform(table, rows)
    keys = rows.column(key).to_pylist()
    if len(set(keys)) != len(keys):
        last = {k: i for i, k in enumerate(keys)}
        rows = rows.take(sorted(last.values()))
    base, _ = delete_keys(table, key, rows.column(key).combine_chunks())
    return pa.concat_tables([base, rows])


def apply(table: pa.Table, key: str, rows: pa.Table, delete: Sequence[object]) -> pa.Table:
    """One decoded patch (see ipc.decode_patch): remove ``delete`` keys, then upsert ``rows``."""
    if delete:
        table, _ = delete_keys(table, key, delete)
    return upsert_rows(table, key, rows)


def only_day(rows: pa.Table, date_column: str, day: object) -> pa.Table:
    """Rows of ``rows`` that belong to the given day (a date, or timestamps within it)."""
    col = rows.column(date_column)
    if pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.date32())
    return rows.filter(pc.equal(col, pa.scalar(day, pa.date32())))

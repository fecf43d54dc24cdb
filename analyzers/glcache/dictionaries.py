"""Dictionary index widths chosen for a whole column, never for one of its chunks.

Every block of a load, every IPC chunk and every patch carries a dictionary of its own. Whoever puts them
together (``combine_chunks``, ``unify_dictionaries``, an IPC file, Parquet, a Flight client) needs one index
type to hold every distinct value of the column: a code column whose runs give each block 40 values but
the day 201 does not fit the int8 a block would pick.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

_WIDTHS = ((127, pa.int8()), (32767, pa.int16()))


def index_type(distinct: int) -> pa.DataType:
    """The smallest signed index type that can address ``distinct`` dictionary entries."""
    for largest, kind in _WIDTHS:
        if distinct <= largest:
            return kind
    return pa.int32()


def distinct_entries(chunks: Sequence[pa.Array], value_type: pa.DataType) -> int:
    """Distinct dictionary entries over ``chunks`` (unified dictionaries hold every entry, used or not).

    The sum of the chunks' dictionary lengths bounds it and is exact for one chunk; the exact count is
    taken only when the bound could need a wider index than the exact count would.
    """
    dictionaries = [c.dictionary for c in chunks if isinstance(c, pa.DictionaryArray)]
    bound = sum(len(d) for d in dictionaries)
    if len(dictionaries) < 2 or index_type(bound) == pa.int8():
        return bound
    return len(pc.unique(pa.chunked_array(dictionaries, value_type)))


def fit(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A dictionary column with the index type its whole set of values needs (narrowed or widened)."""
    if not pa.types.is_dictionary(col.type):
        return col
    index = index_type(distinct_entries(col.chunks, col.type.value_type))
    if index == col.type.index_type:
        return col
    return col.cast(pa.dictionary(index, col.type.value_type))


def fit_table(table: pa.Table) -> pa.Table:
    """``fit`` on every dictionary column."""
    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            col = fit(table.column(i))
            if col.type != field.type:
                table = table.set_column(i, pa.field(field.name, col.type, field.nullable), col)
    return table


def fit_appended(kept: pa.ChunkedArray, added: pa.ChunkedArray | pa.Array) -> tuple[pa.ChunkedArray,
                                                                                   pa.ChunkedArray]:
    """``kept`` (a dictionary column) and ``added`` (its values to append, plain or encoded) in one
    dictionary type whose index holds the values of both."""
    value_type = kept.type.value_type
    if isinstance(added, pa.Array):
        added = pa.chunked_array([added])
    if not pa.types.is_dictionary(added.type):
        added = pa.chunked_array([pc.dictionary_encode(c.cast(value_type)) for c in added.chunks])
    index = index_type(distinct_entries([*kept.chunks, *added.chunks], value_type))
    wanted = pa.dictionary(index, value_type)
    if kept.type != wanted:
        kept = kept.cast(wanted)
    if added.type != wanted:
        added = added.cast(wanted)
    return kept, added

"""Arrow IPC encoding of cached days (LZ4 frame, chunked under a size cap) and of small patches.

Each chunk is a self-contained IPC stream (schema, dictionaries, batches), so chunks decode independently
and in parallel, and no Redis value exceeds the cap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.ipc as ipc

HARD_LIMIT = 64 << 20
_SPREAD = 4
_WRITE = ipc.IpcWriteOptions(compression="lz4")
_PLAIN = ipc.IpcWriteOptions()
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="glcache-ipc")


def _stream(table: pa.Table, options: ipc.IpcWriteOptions = _WRITE) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def encode(table: pa.Table, chunk_bytes: int) -> list[bytes]:
    """The table as LZ4-compressed IPC streams, each at most ``chunk_bytes`` (never over 64 MiB)."""
    limit = min(chunk_bytes, HARD_LIMIT)
    rows = table.num_rows
    if rows == 0:
        return [_stream(table)]
    total = table.get_total_buffer_size()
    per_row = max(1.0, total / rows)
    # under the cap, and at least a few chunks for a large day so they decode in parallel
    target = min(limit * 0.9, max(total / _SPREAD, 4 << 20))
    step = max(1, int(target / per_row))
    slices = [table.slice(start, step) for start in range(0, rows, step)]
    out: list[bytes] = []
    for part in _POOL.map(_stream, slices):
        out.append(part)
    result: list[bytes] = []
    for i, blob in enumerate(out):
        if len(blob) <= limit:
            result.append(blob)
        else:  # dictionaries or incompressible data larger than estimated: split that slice again
            piece = slices[i]
            if piece.num_rows == 1:
                raise ValueError(f"one row encodes to {len(blob)} bytes, over the {limit}-byte chunk limit")
            half = piece.num_rows // 2
            result.extend(encode(piece.slice(0, half), limit))
            result.extend(encode(piece.slice(half), limit))
    return result


def _pool() -> pa.MemoryPool:
    """jemalloc with a slow decay for decoded days: memory freed by an evicted day is reused by the next
    decode instead of being returned to the OS and faulted in again (that doubled Redis-warm reads)."""
    global _MEMORY
    if _MEMORY is None:
        try:
            _MEMORY = pa.jemalloc_memory_pool()
            pa.jemalloc_set_decay_ms(30_000)
        except (NotImplementedError, pa.ArrowNotImplementedError):
            _MEMORY = pa.default_memory_pool()
    return _MEMORY


_MEMORY: pa.MemoryPool | None = None


def _read(blob: bytes) -> pa.Table:
    return ipc.open_stream(pa.py_buffer(blob), memory_pool=_pool()).read_all()


def decode(chunks: Sequence[bytes]) -> pa.Table:
    """Chunks back into one table (decompressed in parallel, zero-copy where the format allows)."""
    if len(chunks) == 1:
        return _read(chunks[0])
    return pa.concat_tables(list(_POOL.map(_read, chunks)))


def schema_json(schema: pa.Schema) -> list[list[str]]:
    """Readable column list for metadata and `gl stats`."""
    return [[f.name, str(f.type)] for f in schema]


# A patch is b"p" + an uncompressed IPC stream of the rows to upsert by key, whose schema metadata
# "delete" lists further keys to remove (JSON). Applying one is idempotent; patches apply in order.

def encode_patch(rows: pa.Table, delete: Sequence[object] = ()) -> bytes:
    meta = {b"delete": json.dumps(list(delete), default=str).encode()}
    return b"p" + _stream(rows.replace_schema_metadata(meta), _PLAIN)


def decode_patch(payload: bytes) -> tuple[pa.Table, list]:
    """(rows to upsert, keys to delete)."""
    if payload[:1] != b"p":
        raise ValueError(f"unknown patch kind {payload[:1]!r}")
    rows = _read(payload[1:])
    delete = json.loads((rows.schema.metadata or {}).get(b"delete", b"[]"))
    return rows.replace_schema_metadata(None), delete

"""The process-memory tier: days as Arrow tables, least recently used evicted first, bounded by bytes."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import pyarrow as pa


@dataclass
class Entry:
    """A cached day: the table, the Redis base it came from (epoch), patches applied, expiry."""

    table: pa.Table
    epoch: str | None
    applied: int
    expires: float
    nbytes: int = field(default=0)
    gen: int | None = None  # invalidation generation it was loaded at (set while it is being stored)

    def __post_init__(self) -> None:
        self.nbytes = self.table.get_total_buffer_size()


class MemoryTier:
    """LRU by Arrow buffer bytes; thread-safe; an entry past its expiry is a miss."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0

    def get(self, day: str) -> Entry | None:
        with self._lock:
            entry = self._items.get(day)
            if entry is None:
                return None
            if entry.expires <= time.time():
                self._drop(day)
                return None
            self._items.move_to_end(day)
            return entry

    def put(self, day: str, entry: Entry) -> None:
        if entry.nbytes > self.capacity:
            self.drop(day)
            return
        with self._lock:
            self._drop(day)
            self._items[day] = entry
            self.nbytes += entry.nbytes
            while self.nbytes > self.capacity and self._items:
                oldest = next(iter(self._items))
                self._drop(oldest)

    def drop(self, day: str) -> None:
        with self._lock:
            self._drop(day)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def days(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def _drop(self, day: str) -> None:
        entry = self._items.pop(day, None)
        if entry is not None:
            self.nbytes -= entry.nbytes

"""Prometheus metrics of the GL cache (registered once per process, labelled by table)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HITS = Counter("fasterdata_gl_hits", "get_day answered by a tier", ["table", "tier"])
MISSES = Counter("fasterdata_gl_misses", "get_day not answered by a tier (fell through to the next)",
                 ["table", "tier"])
LOAD_SECONDS = Histogram("fasterdata_gl_load_seconds", "Seconds to load one day from PostgreSQL", ["table"],
                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
LOADED_ROWS = Counter("fasterdata_gl_loaded_rows", "Rows loaded from PostgreSQL", ["table"])
MEMORY_BYTES = Gauge("fasterdata_gl_memory_bytes", "Arrow bytes held in the process-memory tier", ["table"])
REDIS_BYTES = Gauge("fasterdata_gl_redis_bytes", "Compressed bytes of the last base stored in Redis",
                    ["table"])
EVENTS = Counter("fasterdata_gl_events", "Statement events on the ledger table, by outcome",
                 ["table", "outcome"])
REDIS_ERRORS = Counter("fasterdata_gl_redis_errors", "Redis calls that failed (tier skipped)", ["table"])

"""Settings of `fasterdata gl …` (the hot GL cache), in the same file < environment < flags scheme.

The YAML file's ``gl:`` section holds these keys; shared keys (``redis``, ``prefix`` …) stay at the top.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from fasterdata.config.common import Served, hostport
from fasterdata.config.loader import load_model

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


class GLSettings(Served):
    """`fasterdata gl warm|get|journal|stats|serve|follow`."""

    dsn: str = Field("host=127.0.0.1 port=5432 dbname=postgres",
                     description="PostgreSQL the ledger is read from (libpq DSN or URI)")
    table: str = Field("gl_entries", description="Ledger table, optionally schema-qualified")
    date_column: str = Field("trx_date", description="Column that picks a day (date or timestamp)")
    key_column: str = Field("id", description="Unique row key to patch rows in place ('' disables patching)")
    debit_column: str = Field("acc_debit", description="Debit account column (journal totals, trial balance)")
    credit_column: str = Field("acc_credit", description="Credit account column")
    amount_column: str = Field("amount", description="Amount column (NUMERIC)")
    ttl: float = Field(36 * 3600, gt=0, description="Seconds a cached day lives in Redis")
    memory_bytes: int = Field(1 << 30, ge=0, description="Process-memory tier size (LRU by Arrow bytes)")
    chunk_bytes: int = Field(32 << 20, ge=1 << 16, le=64 << 20,
                             description="Largest Redis value (one IPC stream chunk), at most 64 MiB")
    dictionary: Literal["auto", "all", "none"] | list[str] = Field(
        "auto", description="String columns to dictionary-encode: auto (low cardinality), all, none, a list")
    dictionary_max_ratio: float = Field(0.5, gt=0, le=1,
                                        description="auto: dictionary-encode when distinct/rows <= this")
    copy_connections: int = Field(
        2, ge=1, le=16, description="Connections a cold load reads one day over, in one snapshot (the server "
        "formats rows on as many cores; 1: a single COPY)")
    lock_timeout: float = Field(120.0, gt=0, description="Seconds a load lock lives without renewal")
    load_wait: float = Field(600.0, gt=0, description="Seconds a reader waits for another process's load")
    patch_mode: Literal["values", "reread"] = Field(
        "values", description="INSERT with known values: patch from the event (values) or re-read by key")
    compact_after: int = Field(64, ge=1, description="Fold the patch log into a new base after this many")
    redis_timeout: float = Field(2.0, gt=0, description="Seconds for one Redis call before it counts as down")
    redis_retry: float = Field(5.0, ge=0, description="Seconds to skip Redis after it failed")
    flight: str = Field("127.0.0.1:8815", description="Arrow Flight address of `gl serve`")
    metrics: str = Field("127.0.0.1:9932", description="Prometheus address of gl serve/follow (empty: off)")
    follow: bool = Field(True, description="`gl serve` also follows the statement stream to keep days fresh")
    group: str = Field("glcache", description="Consumer group on <prefix>:statements for `gl follow`")
    consumer: str = Field("", description="Consumer name in the group (default host-pid)")

    @field_validator("table", "date_column", "debit_column", "credit_column", "amount_column")
    @classmethod
    def _ident(cls, value: str) -> str:
        if not _IDENT.match(value):
            raise ValueError(f"must be a plain SQL identifier (schema.table allowed), not {value!r}")
        return value

    @field_validator("key_column")
    @classmethod
    def _key(cls, value: str) -> str:
        if value and not _IDENT.match(value):
            raise ValueError(f"must be a plain SQL identifier or '', not {value!r}")
        return value

    @field_validator("flight")
    @classmethod
    def _flight(cls, value: str) -> str:
        return hostport(value, "127.0.0.1:8815")

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: str) -> str:
        return value and hostport(value, "127.0.0.1:9932")


def load_gl(file: str | Path | None = None, flags: Mapping[str, Any] | None = None,
            environ: Mapping[str, str] | None = None) -> GLSettings:
    """GLSettings from file (`gl:` section) < FASTERDATA_* environment < flags."""
    result = load_model(GLSettings, "gl", file, flags, environ)
    assert isinstance(result, GLSettings)
    return result

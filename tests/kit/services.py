"""The machine's PostgreSQL and Redis that tests run against, and the id that keeps this run's names apart."""

from __future__ import annotations

import os
import uuid

PG_HOST = os.environ.get("FASTERDATA_TEST_PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("FASTERDATA_TEST_PGPORT", "5432"))
PG_USER = os.environ.get("FASTERDATA_TEST_PGUSER", "postgres")
REDIS_URL = os.environ.get("FASTERDATA_TEST_REDIS", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:8]


def direct_dsn(dbname: str = "postgres", user: str = PG_USER, **extra: str) -> str:
    """A libpq DSN of the machine's PostgreSQL itself (no proxy in between)."""
    parts = {"host": PG_HOST, "port": str(PG_PORT), "user": user, "dbname": dbname, **extra}
    return " ".join(f"{k}={v}" for k, v in parts.items())

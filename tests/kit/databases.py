"""Scratch databases on the machine's PostgreSQL: uniquely named, dropped (forcefully) afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg

from tests.kit.services import RUN_ID, direct_dsn


def _admin(sql: str) -> None:
    with psycopg.connect(direct_dsn(), autocommit=True) as conn:
        conn.execute(sql)


@contextlib.contextmanager
def scratch_database(stem: str = "fdtest") -> Iterator[str]:
    """The name of a fresh, empty database, ``<stem>_<run>_<unique>``; dropped on exit."""
    name = f"{stem}_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

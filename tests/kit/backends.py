"""What the machine's PostgreSQL says about its backends (pg_stat_activity over a direct connection)."""

from __future__ import annotations

import psycopg

from tests.kit.services import direct_dsn


def backend_alive(pid: int) -> bool:
    with psycopg.connect(direct_dsn(), autocommit=True) as conn:
        row = conn.execute("select count(*) from pg_stat_activity where pid = %s", [pid]).fetchone()
    return bool(row and row[0])


def backend_running(pid: int, fragment: str) -> bool:
    """True while backend ``pid`` is executing a statement containing ``fragment``."""
    with psycopg.connect(direct_dsn(), autocommit=True) as conn:
        row = conn.execute(
            "select count(*) from pg_stat_activity where pid = %s and state = 'active' and strpos(query, %s) > 0",
            [pid, fragment],
        ).fetchone()
    return bool(row and row[0])


def backends(dsn: str, marker: str) -> list[int]:
    """Pids of backends whose application_name is ``marker`` (on the server ``dsn`` reaches)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute("select pid from pg_stat_activity where application_name = %s", (marker,)).fetchall()
    return [r[0] for r in rows]

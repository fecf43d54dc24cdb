"""Pieces the bench scripts share: the pgbench database, and what /proc says about a benchmarked process."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg

HOST = "127.0.0.1"


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, for a report's header (these machines are shared)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def publish(doc: str, output: str | None) -> None:
    """Print a report, and write it to `output` when one was asked for."""
    print("\n" + doc)
    if output:
        Path(output).write_text(doc + "\n")
        print(f"\nwritten to {output}")


def redis_cpu_seconds(client: Any) -> float:
    """used_cpu_user + used_cpu_sys of a Redis server: its CPU cost over a span is the difference of two
    readings (the server may be shared: other clients' work counts too)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def proc_tree(pid: int) -> list[int]:
    """The process and its live descendants (a proxy's --workers, a server's backends)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    todo.extend(int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split())
    return out


def ensure_database(dbname: str, user: str, scale: int) -> str:
    """Create and pgbench-initialise the bench database once (directly, not through a proxy); reuse it
    while its scale is right."""
    with psycopg.connect(host=HOST, port=5432, dbname="postgres", user=user, autocommit=True,
                         connect_timeout=10) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            conn.execute(f'CREATE DATABASE "{dbname}"')
    with psycopg.connect(host=HOST, port=5432, dbname=dbname, user=user, connect_timeout=10) as conn:
        try:
            have = conn.execute("SELECT count(*) FROM pgbench_branches").fetchone()[0]  # type: ignore[index]
        except psycopg.errors.UndefinedTable:
            have = None
    if have == scale:
        return f"reused (scale {scale})"
    print(f"initialising {dbname}: pgbench -i -s {scale} (found scale {have}) …", flush=True)
    subprocess.run(["pgbench", "-i", "-q", "-s", str(scale), "-h", HOST, "-p", "5432", "-U", user, dbname],
                   check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10"})
    return f"initialised now (scale {scale})"


def terminate(proc: subprocess.Popen, grace: float) -> int | None:
    """SIGTERM, then SIGKILL after `grace` seconds: a benchmark never leaves a server behind. The exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode

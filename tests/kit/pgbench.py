"""pgbench run against a port, and its TPC-B script's statements as the proxy reports them."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from tests.kit.services import PG_USER

# The statements of pgbench's built-in TPC-B script, as the proxy reports them (simple protocol: the
# statement without its ';'; prepared: pgbench's text with $n and the ';').
TPCB_KINDS = ("BEGIN", "UPDATE pgbench_accounts", "SELECT abalance", "UPDATE pgbench_tellers",
              "UPDATE pgbench_branches", "INSERT INTO pgbench_history", "END")
TPCB_TAGS = {"BEGIN": "BEGIN", "UPDATE pgbench_accounts": "UPDATE", "SELECT abalance": "SELECT",
             "UPDATE pgbench_tellers": "UPDATE", "UPDATE pgbench_branches": "UPDATE",
             "INSERT INTO pgbench_history": "INSERT", "END": "COMMIT"}


def tpcb_kind(sql: str) -> str | None:
    """Which TPC-B script statement ``sql`` is, or None for anything else (pgbench's own setup)."""
    for kind in TPCB_KINDS:
        if sql == kind or sql == kind + ";" or sql.startswith(kind + " "):
            return kind
    return None


@dataclass
class Pgbench:
    """What pgbench reported: its own count of completed and failed transactions is the truth to match."""

    processed: int
    failed: int
    output: str


def pgbench(port: int, dbname: str, app: str, *args: str, timeout: float = 120.0) -> Pgbench:
    """Run pgbench against 127.0.0.1:port with application_name ``app``; parse what it reports."""
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": PG_USER,
           "PGDATABASE": dbname, "PGAPPNAME": app}
    env.pop("PGPASSWORD", None)
    done = subprocess.run(["pgbench", *args], env=env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"pgbench {' '.join(args)} exited {done.returncode}:\n{output}"
    return parse_pgbench(output)


def parse_pgbench(output: str) -> Pgbench:
    """The transaction counts from pgbench's summary (PostgreSQL 15 also prints the failed ones)."""
    processed = re.search(r"number of transactions actually processed: (\d+)", output)
    failed = re.search(r"number of failed transactions: (\d+)", output)
    assert processed, output
    return Pgbench(int(processed.group(1)), int(failed.group(1)) if failed else 0, output)

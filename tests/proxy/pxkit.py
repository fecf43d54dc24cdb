"""Helpers of the transparent-proxy tests alone: environments for libpq's command-line tools."""

from __future__ import annotations

import os

from tests.kit.services import PG_HOST, PG_PORT, PG_USER


def tool_env(dbname: str, port: int | None = None) -> dict[str, str]:
    """Environment for libpq command-line tools: the proxy on ``port``, or the real server when None."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    host, port = ("127.0.0.1", port) if port is not None else (PG_HOST, PG_PORT)
    env.update(PGHOST=host, PGPORT=str(port), PGUSER=PG_USER, PGDATABASE=dbname, PGCONNECT_TIMEOUT="10")
    return env

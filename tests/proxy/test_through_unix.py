"""An upstream reached over a Unix socket (as embedded servers and local deployments offer)."""

from __future__ import annotations

import glob
import os

import psycopg
import pytest

from tests.kit.processes import StartProxy

SOCKET_DIRS = [d for d in ("/var/run/postgresql", "/tmp") if glob.glob(os.path.join(d, ".s.PGSQL.*"))]


@pytest.mark.skipif(not SOCKET_DIRS, reason="no PostgreSQL Unix socket on this machine")
@pytest.mark.parametrize("form", ["directory", "socket file"])
def test_unix_socket_upstream(start_proxy: StartProxy, form: str) -> None:
    socket_file = sorted(glob.glob(os.path.join(SOCKET_DIRS[0], ".s.PGSQL.*")))[0]
    upstream = os.path.dirname(socket_file) if form == "directory" else socket_file
    if form == "directory" and not socket_file.endswith(".5432"):
        pytest.skip("the directory form means port 5432")
    proxy = start_proxy(upstream=upstream)
    with psycopg.connect(proxy.dsn()) as conn:
        # A Unix-socket backend has no client address.
        assert conn.execute("select inet_client_addr() is null, 41 + 1").fetchone() == (True, 42)

"""A 200 MB value through the proxy, both directions, with the proxy's memory staying bounded.

The proxy forwards chunks as they arrive and keeps at most a prefix of a Bind for analysis, so its peak
resident size must not grow with the value; 3x the value is a generous sanity bound, not a benchmark.
"""

from __future__ import annotations

import hashlib
import os

import psycopg
import pytest

from tests.kit.processes import StartProxy
from tests.kit.procfs import vm_hwm_bytes

SIZE = 200 * 1024 * 1024


@pytest.mark.slow
def test_200mb_bytea_both_ways(start_proxy: StartProxy) -> None:
    """Insert with a binary parameter, read back in binary; sha256 agrees on both ends."""
    proxy = start_proxy("--no-capture")
    data = os.urandom(SIZE)
    digest = hashlib.sha256(data).hexdigest()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("create temp table big(id int, v bytea)")
        conn.execute("alter table big alter column v set storage external")  # random bytes: skip compression
        conn.execute("insert into big values (1, %b)", [data])
        del data
        server = conn.execute("select length(v), encode(sha256(v), 'hex') from big where id = 1").fetchone()
        assert server == (SIZE, digest)
        back = conn.cursor(binary=True).execute("select v from big where id = 1").fetchone()[0]
        assert len(back) == SIZE
        assert hashlib.sha256(back).hexdigest() == digest
        del back
        # The same value once more in the text format (hex, twice the bytes on the wire).
        text, text_digest = conn.execute(
            "select substr(v, 1, 50000000), encode(sha256(substr(v, 1, 50000000)), 'hex') from big"
        ).fetchone()
        assert len(text) == 50_000_000
        assert hashlib.sha256(text).hexdigest() == text_digest
    peak = vm_hwm_bytes(proxy.proc.pid)
    print(f"proxy peak RSS: {peak / 2**20:.0f} MiB")
    assert peak < 3 * SIZE, f"proxy peak RSS {peak / 2**20:.0f} MiB for a {SIZE / 2**20:.0f} MiB value"

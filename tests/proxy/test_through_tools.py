"""libpq command-line tools through the proxy: psql, pgbench, pg_dump and pg_restore."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from tests.kit.databases import scratch_database
from tests.kit.processes import Proxy
from tests.kit.services import direct_dsn

from .pxkit import tool_env


def run(cmd: list[str], port: int | None, dbname: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a libpq tool on the proxy at ``port`` (None: the server itself); fail with its output on error."""
    done = subprocess.run(cmd, env=tool_env(dbname, port), capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


# -- psql -------------------------------------------------------------------------------------------

MULTI = (
    "create temp table m(x int, t text); insert into m select g, 'row ' || g from generate_series(1, 5) g; "
    "select sum(x) from m; select t from m order by x desc limit 2; select 'ünïcødé'"
)


def test_psql_multi_statement(proxy: Proxy) -> None:
    """`psql -c` with several statements (one simple Query) prints exactly what it prints directly."""
    cmd = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", MULTI]
    through = run(cmd, proxy.port, "postgres")
    direct = run(cmd, None, "postgres")
    assert through.stdout == direct.stdout
    assert "row 5" in through.stdout and "ünïcødé" in through.stdout


def test_psql_copy_from_and_to_file(proxy: Proxy, scratch_db: str, tmp_path: Path) -> None:
    """`\\copy from` a file and `\\copy to` a file through the proxy produce the same bytes as directly."""
    source = tmp_path / "in.csv"
    lines = [f'{i},"name, {i}",{i}.25,"{{""k"": {i}}}"' for i in range(20000)]
    lines.append('20000,"multi\nline ✓",,')
    source.write_text("\n".join(lines) + "\n")
    with psycopg.connect(direct_dsn(scratch_db), autocommit=True) as conn:
        conn.execute("create table pc(id int, name text, amount numeric, doc jsonb)")
    run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", f"\\copy pc from '{source}' with (format csv)"],
        proxy.port,
        scratch_db,
    )
    with psycopg.connect(direct_dsn(scratch_db)) as conn:
        expected_sum = sum(range(20000)) + Decimal("0.25") * 20000
        assert conn.execute("select count(*), sum(amount) from pc").fetchone() == (20001, expected_sum)
    through_file, direct_file = tmp_path / "through.csv", tmp_path / "direct.csv"
    for port, out in ((proxy.port, through_file), (None, direct_file)):
        run(
            [
                "psql",
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                f"\\copy (select * from pc order by id) to '{out}' with (format csv)",
            ],
            port,
            scratch_db,
        )
    assert through_file.read_bytes() == direct_file.read_bytes()
    assert through_file.read_bytes() == source.read_bytes()


# -- pgbench ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_db(proxy: Proxy) -> Iterator[str]:
    """A scratch database initialised by `pgbench -i -s 1` through the proxy (shared by the runs)."""
    with scratch_database() as name:
        done = run(["pgbench", "-i", "-s", "1", "-q"], proxy.port, name)
        assert "done" in done.stderr
        with psycopg.connect(direct_dsn(name)) as conn:
            assert conn.execute("select count(*) from pgbench_accounts").fetchone() == (100000,)
        yield name


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_runs(proxy: Proxy, bench_db: str, mode: str) -> None:
    """Four concurrent clients, 50 TPC-B-like transactions each, in each query mode: all succeed."""
    done = run(["pgbench", "-n", "-t", "50", "-c", "4", "-M", mode], proxy.port, bench_db)
    out = done.stdout
    assert f"query mode: {mode}" in out
    assert re.search(r"number of transactions actually processed: 200/200\b", out), out
    assert re.search(r"number of failed transactions: 0 \(", out), out
    with psycopg.connect(direct_dsn(bench_db)) as conn:
        assert conn.execute("select count(*) >= 200 from pgbench_history").fetchone() == (True,)


# -- pg_dump / pg_restore ---------------------------------------------------------------------------

EXTRA_OBJECTS = """
create table odd(id serial primary key, blob bytea, doc jsonb, amount numeric(30, 10), at timestamptz,
                 tags text[]);
insert into odd(blob, doc, amount, at, tags)
select decode(repeat(lpad(to_hex(g), 2, '0'), g % 300), 'hex'), jsonb_build_object('g', g, 'sq', g * g),
       g / 7.0, '2024-01-01'::timestamptz + g * interval '1 minute', array['t' || g, null]
from generate_series(0, 255) g;
create view rich as select a.aid, a.abalance, b.bbalance from pgbench_accounts a join pgbench_branches b
  using (bid) where a.aid % 1000 = 0;
create function add_interest(rate numeric) returns numeric language sql stable
  as $$ select sum(abalance * rate) from pgbench_accounts $$;
comment on table odd is 'extra objects for the dump test';
create index odd_doc on odd using gin (doc);
"""


def plain_dump(dbname: str) -> list[str]:
    """`pg_dump` (plain, directly to the server), without lines that vary from run to run."""
    out = run(["pg_dump", "--no-owner", dbname], None, dbname).stdout
    # pg_dump ≥ 15.14 brackets the script with \restrict / \unrestrict and a random key.
    return [line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]


@pytest.mark.slow
def test_pg_dump_and_restore(proxy: Proxy, tmp_path: Path) -> None:
    """Custom-format dump through the proxy, restored through the proxy: identical to the original."""
    with scratch_database() as source, scratch_database() as target:
        run(["pgbench", "-i", "-s", "1", "-q"], proxy.port, source)
        run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", EXTRA_OBJECTS], proxy.port, source)
        archive = tmp_path / "source.dump"
        run(["pg_dump", "-Fc", "-f", str(archive), source], proxy.port, source)
        run(["pg_restore", "--no-owner", "--exit-on-error", "-d", target, str(archive)], proxy.port, target)
        original, restored = plain_dump(source), plain_dump(target)
        assert len(original) > 100_000  # the data is in the comparison, not just the schema
        assert restored == original
        assert "COMMENT ON TABLE public.odd IS 'extra objects for the dump test';" in restored
        listing = run(["pg_restore", "-l", str(archive)], proxy.port, source).stdout
        assert "VIEW public rich" in listing and "FUNCTION public add_interest" in listing

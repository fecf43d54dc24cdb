"""`fasterdata gl …` through a small argparse harness (the lead hooks add_parser/run into the main CLI)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from fasterdata.analyzers.glcache import cli
from fasterdata.config.gl_settings import GLSettings, load_gl
from fasterdata.config.settings import ConfigError
from tests.glcache.kit import DAY, OTHER_DAY, arrow_rows, pg_rows
from tests.kit.ports import free_port
from tests.kit.services import REDIS_URL


def gl(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fasterdata")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return cli.run(parser.parse_args(["gl", *argv]))


def flags(dsn: str, prefix: str) -> list[str]:
    return ["--dsn", dsn, "--redis", REDIS_URL, "--prefix", prefix]


def test_warm_get_journal_stats(ledger_db: str, prefix: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    assert gl("warm", OTHER_DAY, "--no-progress", *flags(ledger_db, prefix)) == 0
    warmed = json.loads(capsys.readouterr().out)
    assert warmed["rows"] == len(pg_rows(ledger_db, OTHER_DAY)) and warmed["cached"] is True

    expected = pg_rows(ledger_db, OTHER_DAY)
    for name in ("day.parquet", "day.arrow", "day.csv"):
        out = tmp_path / name
        assert gl("get", OTHER_DAY, "--out", str(out), *flags(ledger_db, prefix)) == 0
        capsys.readouterr()
        if name.endswith(".parquet"):
            assert arrow_rows(pq.read_table(out)) == expected
        elif name.endswith(".arrow"):
            assert arrow_rows(feather.read_table(out)) == expected
        else:
            text = pacsv.read_csv(out)
            assert text.num_rows == len(expected)
            amounts = pl.read_csv(out, schema_overrides={"amount": pl.Utf8}).sort("id")["amount"].to_list()
            assert amounts == [str(r["amount"]) for r in expected]
    assert gl("get", OTHER_DAY, "--out", str(tmp_path / "x.txt"), *flags(ledger_db, prefix)) == 2

    assert gl("journal", DAY, *flags(ledger_db, prefix)) == 0
    text = capsys.readouterr().out
    assert "acc_debit" in text and "total" in text
    assert gl("journal", DAY, "--trial-balance", "--format", "json", *flags(ledger_db, prefix)) == 0
    balance = json.loads(capsys.readouterr().out)
    assert {"account", "debit", "credit", "balance"} <= set(balance[0])

    assert gl("stats", *flags(ledger_db, prefix)) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["redis"][OTHER_DAY]["rows"] == len(expected)
    assert 0 < stats["redis"][OTHER_DAY]["ttl"] <= 36 * 3600


def test_errors_are_messages(ledger_db: str, prefix: str, capsys: pytest.CaptureFixture) -> None:
    assert gl("warm", "not-a-date", *flags(ledger_db, prefix)) == 2
    assert gl("warm", DAY, "--table", "missing_table", *flags(ledger_db, prefix)) == 1
    assert "does not exist" in capsys.readouterr().err
    assert gl("warm", DAY, "--table", "bad name;", *flags(ledger_db, prefix)) == 2


def test_settings_layers(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("prefix: fromfile\ngl:\n  table: ledger.entries\n  ttl: 60\n")
    s = load_gl(path, {"ttl": 30}, environ={"FASTERDATA_DATE_COLUMN": "booked_on"})
    assert isinstance(s, GLSettings)
    assert (s.prefix, s.table, s.date_column, s.ttl) == ("fromfile", "ledger.entries", "booked_on", 30)
    assert GLSettings().ttl == 36 * 3600 and GLSettings().table == "gl_entries"
    with pytest.raises(ConfigError):
        load_gl(None, {"chunk_bytes": 1 << 30})


def fasterdata(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real command line: `python -m fasterdata …` in a child process."""
    return subprocess.run([sys.executable, "-m", "fasterdata", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[2])


def test_journal_as_csv_through_the_real_cli(ledger_db: str, prefix: str) -> None:
    done = fasterdata("gl", "journal", DAY, "--format", "csv", *flags(ledger_db, prefix))
    assert done.returncode == 0, done.stderr
    got = pacsv.read_csv(pa.py_buffer(done.stdout.encode()),
                         convert_options=pacsv.ConvertOptions(column_types={"total": pa.string()}))
    assert got.column_names == ["acc_debit", "acc_credit", "total", "entries"]
    with psycopg.connect(ledger_db) as conn:
        want = conn.execute("SELECT acc_debit, acc_credit, sum(amount)::text, count(*) FROM gl_entries "
                            "WHERE trx_date = %s GROUP BY 1, 2 ORDER BY 1, 2", (DAY,)).fetchall()
    rows = [(str(r["acc_debit"]), str(r["acc_credit"]), r["total"], r["entries"]) for r in got.to_pylist()]
    assert rows == [tuple(w) for w in want]


def test_warm_without_redis_fails_saying_why(ledger_db: str, prefix: str) -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    done = fasterdata("gl", "warm", OTHER_DAY, "--no-progress", "--dsn", ledger_db, "--redis", nobody,
                      "--prefix", prefix)
    assert done.returncode == 1
    assert done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    rows = len(pg_rows(ledger_db, OTHER_DAY))
    assert last.startswith(f"fasterdata gl warm: {OTHER_DAY} was read ({rows} rows) but not cached: "
                           f"Redis at {nobody} is unreachable (ConnectionError")


@pytest.mark.parametrize("argv, named", [(["warm", "2026-13-45"], "DATE"),
                                         (["get", "15.03.2024", "--out", "x.arrow"], "DATE"),
                                         (["stats", "--invalidate", "2026-02-30"], "--invalidate DATE")])
def test_a_bad_day_is_named(argv: list[str], named: str) -> None:
    done = fasterdata("gl", *argv, "--redis", REDIS_URL)
    assert done.returncode == 2
    bad = argv[1] if argv[0] != "stats" else argv[2]
    assert done.stderr.strip() == f"fasterdata gl {argv[0]}: {named} must be a day as YYYY-MM-DD, not {bad!r}"

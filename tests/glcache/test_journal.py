"""Journal totals and trial balance over cached Arrow data equal PostgreSQL's own GROUP BY, exactly."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pyarrow as pa

from fasterdata.analyzers.glcache.cache import GLCache
from tests.glcache.kit import DAY

Make = Callable[..., GLCache]


def test_journal_totals_exact(ledger_db: str, make_cache: Make) -> None:
    result = make_cache(ledger_db).journal(DAY)
    assert result.schema.field("total").type == pa.decimal128(38, 2)
    with psycopg.connect(ledger_db) as conn:
        expected = conn.execute(
            """SELECT acc_debit, acc_credit, sum(amount), count(*) FROM gl_entries WHERE trx_date = %s
               GROUP BY 1, 2 ORDER BY 1, 2""", (DAY,)).fetchall()
    got = [(r["acc_debit"], r["acc_credit"], r["total"], r["entries"]) for r in result.to_pylist()]
    assert got == expected


def test_trial_balance_exact(ledger_db: str, make_cache: Make) -> None:
    result = make_cache(ledger_db).trial_balance(DAY)
    with psycopg.connect(ledger_db) as conn:
        expected = conn.execute(
            """SELECT account, coalesce(sum(d), 0), coalesce(sum(c), 0),
                      coalesce(sum(d), 0) - coalesce(sum(c), 0)
                 FROM (SELECT acc_debit AS account, amount AS d, NULL::numeric AS c
                         FROM gl_entries WHERE trx_date = %s
                       UNION ALL SELECT acc_credit, NULL, amount FROM gl_entries WHERE trx_date = %s) m
                GROUP BY account ORDER BY account""", (DAY, DAY)).fetchall()
    got = [(r["account"], r["debit"], r["credit"], r["balance"]) for r in result.to_pylist()]
    assert got == expected
    assert sum(r[3] for r in got) == 0

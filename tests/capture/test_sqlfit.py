"""Fitting a long statement within max_sql_chars: shortened lists keep the fingerprint, whatever the length."""

from __future__ import annotations

import random

import pytest

from fasterdata.analyzers.fingerprint import normalize
from fasterdata.proxy.sqlfit import fit

LIMIT = 16384


def in_list(n: int) -> str:
    return ("SELECT id, name FROM customers WHERE id IN (" + ", ".join(str(100_000 + i) for i in range(n))
            + ") AND status = 'active' ORDER BY id")


def bulk_literals(n: int) -> str:
    """What an ORM's client-side bulk INSERT sends on the simple protocol."""
    rows = ", ".join(f"({i}, {i}.50, 'note {i}', -{i}, NULL, now())" for i in range(n))
    return f"INSERT INTO orders (customer_id, amount, note, delta, extra, created) VALUES {rows} RETURNING id"


def bulk_params(n: int) -> str:
    """The same INSERT with bound parameters (extended protocol)."""
    rows = ", ".join(f"(${3 * i + 1}, ${3 * i + 2}, ${3 * i + 3})" for i in range(n))
    return f'INSERT INTO "public"."orders" ("customer_id", "amount", "note") VALUES {rows} ON CONFLICT DO NOTHING'


def in_list_cast(n: int) -> str:
    """SQLAlchemy on asyncpg casts every element."""
    return "SELECT * FROM users WHERE id IN (" + ", ".join(f"${i}::INTEGER" for i in range(1, n + 1)) + ")"


def array_any(n: int) -> str:
    return "DELETE FROM sessions WHERE id = ANY(ARRAY[" + ",".join(f"'s{i:06d}'" for i in range(n)) + "])"


@pytest.mark.parametrize(("make", "sizes"), [
    (in_list, range(2500, 4501, 250)),
    (bulk_literals, range(800, 1201, 50)),
    (bulk_params, range(800, 1201, 50)),
    (array_any, range(1500, 2501, 250)),
    (in_list_cast, range(1000, 3001, 500)),
])
def test_fit_keeps_one_shape_whatever_the_length(make, sizes) -> None:
    """Every length, short or far past the limit, has the fingerprint of the short statement."""
    short = normalize(make(3)).fp
    fitted = [fit(make(n), LIMIT) for n in sizes]
    assert any(len(make(n)) > LIMIT for n in sizes)
    assert all(len(text) <= LIMIT for text in fitted)
    assert "truncated" not in "".join(fitted)
    assert {normalize(text).fp for text in fitted} == {short}


def test_fit_says_how_many_elements_it_dropped() -> None:
    text = in_list(4000)
    fitted = fit(text, LIMIT)
    kept = fitted.partition("IN (")[2].partition(" /*")[0].count(",") + 1
    assert f"/* …{4000 - kept} more */) AND status = 'active' ORDER BY id" in fitted
    assert fitted.startswith(text[:1000])


def test_fit_leaves_short_texts_alone() -> None:
    text = in_list(10)
    assert fit(text, LIMIT) is text


def test_fit_cuts_what_no_list_can_shorten() -> None:
    text = "SELECT '" + "x" * 20000 + "'"
    assert fit(text, LIMIT) == text[:LIMIT] + f"…[truncated {len(text) - LIMIT} chars]"


def test_fit_drops_only_rows_of_the_first_row_form() -> None:
    """Rows that fold together in the fingerprint go; a row of another form, and what follows it, stay."""
    rows = ", ".join(f"({i}, 'a')" for i in range(3000))
    text = f"INSERT INTO t (a, b) VALUES {rows}, (DEFAULT, 'z'), (7, 'b')"
    fitted = fit(text, LIMIT)
    assert fitted.endswith("more */, (DEFAULT, 'z'), (7, 'b')")
    assert normalize(fitted).fp == normalize(text).fp


@pytest.mark.parametrize("text", [
    "SELECT * FROM t WHERE a IN (" + ", ".join(f"a{i}" for i in range(5000)) + ")",  # columns, not literals
    "SELECT * FROM t WHERE a IN (" + ", ".join(f"{i}::{'int' if i % 2 else 'text'}" for i in range(3000)) + ")",
    "SELECT '(1), (2), (3)' || '" + "x" * 17000 + "'",  # lists inside a string are no lists
])
def test_fit_never_shortens_what_the_fingerprint_does_not_fold(text: str) -> None:
    assert "more */" not in fit(text, LIMIT)


def test_fit_shortens_the_rows_of_the_first_values_only() -> None:
    """The fingerprint folds one VALUES list: the first with two rows alike. A later one keeps its rows."""
    later = ", ".join(f"({i}, 'x')" for i in range(4000))
    text = f"WITH k (v) AS (VALUES (1), (2)) INSERT INTO t (a, b) VALUES {later}"
    fitted = fit(text, LIMIT)
    assert "more */" not in fitted
    assert fitted.endswith(f"…[truncated {len(text) - LIMIT} chars]")



# Literals and row forms the fingerprint reads in its own ways: signs, '5.', escapes, dollar quotes,
# prefixes, comments between values, nesting it does not fold, names it keeps.
LITERALS = ["NULL", "true", "FALSE", "$1", "$22", "E'x\\'y'", "e'()'", "$$a,b$$", "$q$(,$q$", "-5", "- 7", "5.",
            "1.e3", "-3.", "B'01'", "N'x'", "U&'x'", ".5", "0x1F", "1_000", "'a\\'", "'it''s'", "'(,)'", "12", "3.25",
            "'x'", "-0.5", "$4::INTEGER", "'y'::text"]
FORMS = ["({0}, {1})", "({0},{1}, now())", "( {0} , lower({1}) )", "({0}, {1}::text)", "({0}, lower(trim({1})))",
         "({0} -{1})", "({0}, {1}) /* c */", '("x", {0}, {1})', "({0}, -- c\n{1})", "({0},{1} - 1)", "(date {0}, {1})"]


def random_statement(rng: random.Random) -> str:
    kinds = [rng.choice(LITERALS) for _ in range(rng.randint(1, 4))]  # a few kinds of value, as real rows have
    forms = [rng.choice(FORMS) for _ in range(rng.randint(1, 3))]
    mixed = rng.random() < 0.3
    rows = ", ".join((forms[i % len(forms)] if mixed and i % 7 == 3 else forms[0]).format(
        rng.choice(kinds), rng.choice(kinds)) for i in range(rng.randint(3, 200)))
    items = [rng.choice(kinds) for _ in range(rng.randint(3, 200))]
    head = "WITH k (v) AS (VALUES (1), (2)) " if rng.random() < 0.3 else ""
    return (f"{head}INSERT INTO t (a, b) SELECT * FROM (VALUES {rows}) v WHERE a IN ({', '.join(items)}) "
            f"AND b = ANY(ARRAY[{','.join(items)}]) RETURNING a")


@pytest.mark.parametrize("seed", range(6))
def test_fit_never_changes_the_fingerprint(seed: int) -> None:
    """Whatever the literals, the row forms and the limit: a shortened text has the whole text's fingerprint."""
    rng = random.Random(seed)
    shortened = 0
    for _ in range(300):
        text = random_statement(rng)
        fitted = fit(text, rng.randint(80, len(text)))
        if fitted is text or "truncated" in fitted:
            continue
        shortened += 1
        assert normalize(fitted).fp == normalize(text).fp, (text, fitted)
    assert shortened > 50  # the cases exercise shortening, not only the cut

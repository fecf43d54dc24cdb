"""Fingerprints: simple (literals) and extended ($n) forms agree; lists fold; values are recoverable."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fasterdata.analyzers.fingerprint import Normalizer, normalize, parse_commenter
from fasterdata.analyzers.shape import analyze

PAIRS = [
    ("SELECT * FROM t WHERE id = 5", "SELECT * FROM t WHERE id = $1", [5]),
    ("select * from t where id=5", "SELECT *\n  FROM t\n WHERE id = $1", [5]),
    ("SELECT a FROM t WHERE name = 'O''Brien' AND n > -2.5", "SELECT a FROM t WHERE name = $1 AND n > $2",
     ["O'Brien", "-2.5"]),
    ("UPDATE inventory SET qty = qty - 3 WHERE sku = 'A-1'", "UPDATE inventory SET qty = qty - $1 WHERE sku = $2",
     [3, "A-1"]),
    ("INSERT INTO orders (id, total, note) VALUES (1, 9.99, NULL)",
     "INSERT INTO orders (id, total, note) VALUES ($1, $2, $3)", [1, "9.99", None]),
    ("SELECT * FROM ev WHERE day = DATE '2024-01-02'", "SELECT * FROM ev WHERE day = $1::date", ["2024-01-02"]),
    ("SELECT * FROM t WHERE flag = true LIMIT 10", "SELECT * FROM t WHERE flag = $1 LIMIT $2", [True, 10]),
    ("SELECT E'a\\nb', $$dollar's$$", "SELECT $1, $2", ["a\nb", "dollar's"]),
]


@pytest.mark.parametrize(("simple", "extended", "params"), PAIRS)
def test_simple_and_extended_forms_share_a_fingerprint(simple: str, extended: str, params: list) -> None:
    a, b = normalize(simple), normalize(extended)
    assert a.fp == b.fp, (a.text, b.text)
    # and the values come back the same way from literals and from bound parameters
    assert [str(v) for v in a.values(None)] == [str(v) for v in b.values(params)] or \
        a.values(None) == b.values(params)


def test_values_from_literals() -> None:
    n = normalize("SELECT * FROM t WHERE a = 'x' AND b = 42 AND c = 1.50 AND d = -7 AND e IS NULL")
    assert n.values(None) == ["x", 42, Decimal("1.50"), -7]
    assert "IS NULL" in n.text


def test_in_lists_of_any_length_fold_to_one() -> None:
    fps = {normalize(f"SELECT * FROM t WHERE id IN ({', '.join(str(i) for i in range(n))})").fp
           for n in (1, 2, 3, 17, 500)}
    fps.add(normalize("SELECT * FROM t WHERE id IN ($1, $2, $3)").fp)
    assert len(fps) == 1
    n = normalize("SELECT * FROM t WHERE id IN (4, 5, 6) AND k = 'z'")
    assert n.values(None) == [[4, 5, 6], "z"]
    assert n.text == "SELECT * FROM t WHERE id IN ($1) AND k = $2"


def test_multi_row_values_fold_and_keep_every_row() -> None:
    one = normalize("INSERT INTO o (a, b) VALUES (1, 'x')")
    three = normalize("INSERT INTO o (a, b) VALUES (1, 'x'), (2, 'y'), (3, NULL)")
    ext = normalize("INSERT INTO o (a, b) VALUES ($1, $2), ($3, $4)")
    assert one.fp == three.fp == ext.fp
    assert three.rows(None) == [[1, "x"], [2, "y"], [3, None]]
    assert ext.rows([7, "p", 8, "q"]) == [[7, "p"], [8, "q"]]
    returning = normalize("INSERT INTO o (a, b) VALUES (1, 'x'), (2, 'y') RETURNING a")
    assert returning.rows(None) == [[1, "x"], [2, "y"]]
    assert returning.text.endswith("RETURNING a")


def test_in_lists_whose_elements_carry_one_cast_fold_too() -> None:
    """SQLAlchemy on asyncpg sends IN ($1::INTEGER, $2::INTEGER, …): one shape whatever the length."""
    def in_list(n: int, cast: str = "::INTEGER") -> str:
        return "SELECT a FROM t WHERE id IN (" + ", ".join(f"${i}{cast}" for i in range(1, n + 1)) + ")"

    shapes = {normalize(in_list(n)).text for n in (1, 2, 3, 50, 3000)}
    assert shapes == {"SELECT a FROM t WHERE id IN ($1::INTEGER)"}
    assert normalize(in_list(3)).values([4, 5, 6]) == [[4, 5, 6]]
    typed = normalize("SELECT 1 FROM t WHERE d IN (date '2026-01-01', date '2026-01-02') "
                      "AND s = ANY(ARRAY['a'::text, 'b'::text])")
    assert typed.text == "SELECT $1 FROM t WHERE d IN ($2::date) AND s = ANY(ARRAY[$3::text])"
    mixed = normalize("SELECT a FROM t WHERE id IN ($1::int, $2::text)")
    assert mixed.text == "SELECT a FROM t WHERE id IN ($1::int, $2::text)"  # not one kind of element: kept


def test_rows_apart_by_a_spaced_comma_or_a_comment_fold_too() -> None:
    folded = normalize("INSERT INTO o (a, b) VALUES (1, 'x'), (2, 'y')")
    for sql in ("INSERT INTO o (a, b) VALUES (1, 'x') , (2, 'y')",
                "INSERT INTO o (a, b) VALUES (1, 'x') /* first */, (2, 'y') -- second"):
        n = normalize(sql)
        assert (n.text, n.fp) == (folded.text, folded.fp)
        assert n.rows(None) == [[1, "x"], [2, "y"]]


def test_subtraction_is_not_a_negative_literal() -> None:
    a = normalize("UPDATE t SET q = q -5 WHERE id = -1")
    assert a.text == "UPDATE t SET q = q - $1 WHERE id = $2"
    assert a.values(None) == [5, -1]


def test_identifiers_with_digits_and_quoted_names_are_kept() -> None:
    n = normalize('SELECT t1.c2, "Weird 3" FROM t1 WHERE "x" = 3')
    assert n.text == 'SELECT t1.c2, "Weird 3" FROM t1 WHERE "x" = $1'


def test_a_dot_between_quoted_names_is_no_number() -> None:
    """ORMs qualify every name ("users"."id", "users".*); a bare '.' once became a placeholder."""
    n = normalize('SELECT "users".* FROM "public"."users" WHERE "users"."id" = $1 AND "users".score > .5')
    assert n.text == 'SELECT "users".* FROM "public"."users" WHERE "users"."id" = $1 AND "users".score > $2'
    assert n.values([7]) == [7, Decimal("0.5")]
    assert analyze(n.text).tables == ("users",)


def test_numbers_with_a_trailing_point_or_exponent_are_literals() -> None:
    n = normalize("SELECT a FROM t WHERE b = 5. AND c = 1.e3 AND d = -2.5")
    assert n.text == "SELECT a FROM t WHERE b = $1 AND c = $2 AND d = $3"
    assert n.values(None) == [5, Decimal("1e3"), Decimal("-2.5")]


def test_comments_are_dropped_and_sqlcommenter_becomes_labels() -> None:
    sql = ("SELECT * FROM t WHERE id = 5 /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',"
           "route='%2Forders%2F%3Aid',framework='django%3A4.2'*/")
    n = normalize(sql)
    assert n.fp == normalize("SELECT * FROM t WHERE id = $1 -- a comment").fp
    assert n.comment == {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                         "route": "/orders/:id", "framework": "django:4.2"}
    assert parse_commenter("a='1',b='x%20y'") == {"a": "1", "b": "x y"}


def test_stacked_statements_are_noticed_but_semicolons_in_literals_are_not() -> None:
    assert normalize("SELECT 1; DROP TABLE users").stacked
    assert not normalize("SELECT * FROM t WHERE a = 'x; DROP TABLE users'").stacked
    assert not normalize("SELECT 1;").stacked


def test_fingerprint_is_stable_text_independent_of_process() -> None:
    # the value is part of the contract (dashboards, alert history): it must never change silently
    assert normalize("SELECT * FROM t WHERE id = 5").fp == "1a840dee89ecdfd4"


def test_normalizer_caches_by_text() -> None:
    norm = Normalizer(size=2)
    a = norm("SELECT $1")
    assert norm("SELECT $1") is a
    assert norm.misses == 1
    norm("SELECT 1")
    norm("SELECT 2")  # full: cleared, not grown
    assert len(norm.cache) <= 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-10**12, 10**12), st.text(alphabet=st.characters(
    blacklist_categories=("Cs",), blacklist_characters="\x00\x01"), max_size=20)), min_size=1, max_size=6))
def test_any_literals_match_their_bound_form(values: list) -> None:
    literal = ", ".join(str(v) if isinstance(v, int) else "'" + v.replace("'", "''") + "'" for v in values)
    bound = ", ".join(f"${i + 1}" for i in range(len(values)))
    a = normalize(f"SELECT f({literal}) FROM t")
    b = normalize(f"SELECT f({bound}) FROM t")
    assert a.fp == b.fp
    assert a.values(None) == b.values(values)


def test_shape_says_where_placeholders_land() -> None:
    s = analyze(normalize("INSERT INTO public.orders (id, total) VALUES (1, 2.5) RETURNING id").text)
    assert (s.op, s.table, s.insert_cols, s.returning) == ("insert", "orders", ("id", "total"), True)
    assert s.row == (("slot", 0), ("slot", 1))
    s = analyze(normalize("UPDATE inventory SET qty = qty - 2, note = 'x' WHERE sku = 'A'").text)
    assert s.deltas == {"qty": (-1, ("slot", 0))}
    assert s.sets == {"note": ("slot", 1)}
    assert s.where_eq == {"sku": ("slot", 2)}
    s = analyze(normalize("INSERT INTO a (x) SELECT x FROM b").text)
    assert s.insert_select and s.tables == ("a", "b")
    s = analyze(normalize("DELETE FROM t").text)
    assert s.op == "delete" and not s.has_where
    assert analyze("SELECT FROM WHERE").parsed is False
    assert analyze("ALTER ROLE bob PASSWORD $1").op == "role"
    assert analyze("CREATE TABLE x (a int)").op == "ddl"
    assert analyze("BEGIN").op == "txn"


TEMPLATED = [
    "UPDATE pgbench_accounts SET abalance = abalance + -{a} WHERE aid = {b}",
    "UPDATE inventory SET qty = qty - {a} WHERE sku = 'SKU-{b}'",
    "INSERT INTO gl (d, acc, amt) VALUES ('2024-05-01', '1200', {a}.50), ('2024-05-01', '4000', -{b}.25)",
    "SELECT * FROM t WHERE id IN ({a}, {b}, 7) AND d = date '2024-01-0{a}'",
    "SELECT {a}.5 -{b}, x -{a} FROM t",  # '-' right after a literal: the sign rule reads it, no template
    "SELECT * FROM t WHERE a = {a} AND b IS NULL AND c = true",
    "SELECT B'10{a}', N'x{b}' FROM t",
]


@pytest.mark.parametrize("pattern", TEMPLATED)
def test_skeleton_templates_give_the_full_pass_result(pattern: str) -> None:
    nz = Normalizer()
    for a, b in ((1, 2), (3, 40), (5, 600), (7, 8)):
        sql = pattern.format(a=a, b=b)
        assert nz(sql) == normalize(sql)


@pytest.mark.parametrize("pattern", TEMPLATED)
def test_templated_values_are_those_of_the_full_pass_in_any_order_of_use(pattern: str) -> None:
    # a templated text builds its slot table on first use (only business rules read it): whichever is read
    # first — values, rows, the slots themselves — the result is the full pass's
    nz = Normalizer()
    for a, b in ((1, 2), (3, 40), (5, 600), (7, 8)):
        sql = pattern.format(a=a, b=b)
        full = normalize(sql)
        for read in ("values", "rows", "slots", "multirow", "eq"):
            nz.cache.clear()
            got = nz(sql)
            if read == "values":
                assert got.values(None) == full.values(None)
            elif read == "rows":
                assert got.rows(None) == full.rows(None)
            elif read == "slots":
                assert got.slots == full.slots
            elif read == "multirow":
                assert got.multirow == full.multirow
            assert got == full and full == got
            assert (got.text, got.fp, got.comment, got.stacked) == (full.text, full.fp, full.comment, full.stacked)


def shape_of(sql: str):
    """What the worker computes for a statement: the shape of its normalised text."""
    return analyze(normalize(sql).text)


@pytest.mark.parametrize(("sql", "op", "tables", "cols"), [
    ("PREPARE q AS SELECT a FROM orders o JOIN customers c ON c.id = o.cid WHERE o.id = $1",
     "select", ("orders", "customers"), None),
    ("PREPARE ins (int, numeric(10, 2)) AS INSERT INTO orders (id, amount) VALUES ($1, $2)",
     "insert", ("orders",), ("id", "amount")),
    ('prepare "Upd" as update accounts set balance = balance - $1 where id = $2', "update", ("accounts",), None),
    ("PREPARE d AS DELETE FROM sessions WHERE id = 5", "delete", ("sessions",), None),
])
def test_prepare_has_the_op_and_tables_of_what_it_prepares(sql: str, op: str, tables: tuple,
                                                            cols: tuple | None) -> None:
    shape = shape_of(sql)
    assert (shape.op, shape.tables, shape.table, shape.prepared) == (op, tables, tables[0], True)
    if cols is not None:
        assert shape.insert_cols == cols


def test_prepare_transaction_stays_a_transaction_statement() -> None:
    shape = shape_of("PREPARE TRANSACTION 'tx-1'")
    assert (shape.op, shape.tables, shape.prepared) == ("txn", (), False)


@pytest.mark.parametrize(("sql", "table", "tables", "cols", "copy_from"), [
    ("COPY orders FROM STDIN", "orders", ("orders",), None, True),
    ("copy orders (id, amount) from stdin with (format csv, header true, null '', delimiter ';')",
     "orders", ("orders",), ("id", "amount"), True),
    ('COPY "public"."Orders"("id", "amount") FROM STDIN (FORMAT binary)',  # asyncpg copy_records_to_table
     "Orders", ("Orders",), ("id", "amount"), True),
    ("COPY ONLY public.orders TO STDOUT (FORMAT csv, HEADER)", "orders", ("orders",), None, False),
    ("COPY orders TO '/tmp/orders.csv' CSV HEADER", "orders", ("orders",), None, False),
    ("COPY orders FROM STDIN WHERE amount > 0", "orders", ("orders",), None, True),
    ("COPY (SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.cid WHERE o.id > 10) TO STDOUT",
     "orders", ("orders", "customers"), None, False),
    ('COPY (SELECT "x".* FROM (SELECT 1) "x", "payments") TO STDOUT WITH (FORMAT csv)',
     "payments", ("payments",), None, False),
])
def test_copy_names_its_tables(sql: str, table: str, tables: tuple, cols: tuple | None, copy_from: bool) -> None:
    shape = shape_of(sql)
    assert shape.parsed, shape.error
    assert (shape.op, shape.table, shape.tables, shape.insert_cols, shape.copy_from) == \
        ("copy", table, tables, cols, copy_from)

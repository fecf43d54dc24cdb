"""No secret leaves the proxy: login passwords (md5 and SCRAM), passwords set by ALTER/CREATE ROLE, and
values of sensitive columns — in SQL literals or bound parameters — appear nowhere in Redis under the
proxy's prefix, in its log (at debug level) or in its /metrics. With ``redact: all`` no literal at all
gets out.

Each search has a positive control (a value that must appear), so an empty or wrong haystack cannot
make the test pass.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from tests.kit.metrics import scrape, settle, value
from tests.kit.pgcluster import PrivateCluster
from tests.kit.polling import wait_until
from tests.kit.ports import free_port
from tests.kit.prefixes import dump_prefix
from tests.kit.processes import ProxyProcess, StartProxy
from tests.kit.services import direct_dsn
from tests.kit.streams import statements


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    """A private server with md5 and SCRAM users, and a table with sensitive columns they may write."""
    c = PrivateCluster()
    try:
        c.execute("CREATE DATABASE vault")
        c.execute("CREATE TABLE cards (id int PRIMARY KEY, password text, card_number text, note text)", "vault")
        c.execute("CREATE TABLE payments (id int PRIMARY KEY, cvv smallint)", "vault")
        # A table whose name matches nothing sensitive: only its column names say what it holds.
        c.execute("CREATE TABLE users (id int PRIMARY KEY, email text, password text, card_number text, note text)",
                  "vault")
        c.execute("GRANT ALL ON cards, payments, users TO md5user, scramuser", "vault")
        yield c
    finally:
        c.destroy()


def haystack(rds: redis.Redis, proxy: ProxyProcess) -> dict[str, str]:
    """Everything the proxy let out, by where it went."""
    return {"redis": dump_prefix(rds, proxy.prefix), "log": proxy.log(), "metrics": scrape(proxy)[0]}


def assert_absent(places: dict[str, str], needles: dict[str, str]) -> None:
    leaks = [f"{what} ({needle!r}) in {where}" for what, needle in needles.items()
             for where, text in places.items() if needle in text]
    assert not leaks, "secrets leaked: " + "; ".join(leaks)


def test_no_secret_leaves_the_proxy(start_proxy: StartProxy, rds: redis.Redis, cluster: PrivateCluster,
                                    app_name: str) -> None:
    proxy = start_proxy("--log-level", "debug", upstream=cluster.address)
    tag = secrets.token_hex(4)
    md5_pw, scram_pw = cluster.password("md5user"), cluster.password("scramuser")
    new_pw, r2_pw = f"NewSecret-xyz-{tag}", f"AnotherSecret-abc-{tag}"
    lit_pw, lit_card = f"LitPassword-{tag}", f"4111-1111-LIT-{tag}"
    par_pw, par_card = f"ParamPassword-{tag}", f"5500-0000-PAR-{tag}"
    upd_pw, where_card = f"UpdatedPassword-{tag}", f"4111-WHERE-{tag}"
    bad_lit, bad_par = f"12x-LitCvv-{tag}", f"34y-ParCvv-{tag}"
    copy_pw, copy_card = f"CopyPassword-{tag}", f"3700-COPY-{tag}"
    note_lit, note_par = f"visible-note-{tag}", f"visible-param-note-{tag}"
    r2 = f"r2_{tag}"

    with psycopg.connect(proxy.dsn("vault", user="md5user", password=md5_pw), autocommit=True,
                         application_name=app_name) as conn:
        conn.execute(sql.SQL("ALTER ROLE md5user PASSWORD {}").format(new_pw))
        conn.execute(f"INSERT INTO cards (id, password, card_number, note) VALUES (1, '{lit_pw}', '{lit_card}', "
                     f"'{note_lit}')")
        conn.execute("INSERT INTO cards (id, password, card_number, note) VALUES (%s, %s, %s, %s)",
                     (2, par_pw, par_card, note_par))
        conn.execute(f"UPDATE cards SET password = '{upd_pw}' WHERE card_number = '{where_card}' OR id = 1")
        conn.execute("SELECT note FROM cards WHERE password = %s AND card_number = %s", (par_pw, par_card))
        # A mistyped sensitive value: PostgreSQL quotes the input in its error message.
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute(f"INSERT INTO payments (id, cvv) VALUES (1, '{bad_lit}')")
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute("INSERT INTO payments (id, cvv) VALUES (%s, %s)", (2, bad_par))
        with pytest.raises(psycopg.errors.UndefinedColumn):  # an error naming what the SQL names stays readable
            conn.execute(f"UPDATE cards SET password = '{upd_pw}', nope = 1")
    with psycopg.connect(proxy.dsn("vault", user="scramuser", password=scram_pw), autocommit=True,
                         application_name=app_name) as conn:
        with conn.transaction():
            conn.execute("INSERT INTO cards (id, password, card_number, note) VALUES (%b, %b, %b, %b)",
                         (3, par_pw, par_card, "binary"))
        with conn.cursor().copy("COPY cards (id, password, card_number, note) FROM STDIN") as copy:
            copy.write_row((4, copy_pw, copy_card, "copied"))
        conn.execute(sql.SQL("ALTER USER scramuser WITH ENCRYPTED PASSWORD {}").format(new_pw))
    with psycopg.connect(proxy.dsn("vault"), autocommit=True, application_name=app_name) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(r2), r2_pw))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(r2)))
    # The changed password works through the proxy (so it really travelled through it, twice).
    with psycopg.connect(proxy.dsn("vault", user="md5user", password=new_pw), application_name=app_name) as conn:
        assert conn.execute("SELECT count(*) FROM cards").fetchone() == (4,)
    # Restore the cluster's passwords for other users of the module fixture.
    cluster.execute(f"SET password_encryption = 'md5'; ALTER ROLE md5user PASSWORD '{md5_pw}'")
    cluster.execute(f"ALTER ROLE scramuser PASSWORD '{scram_pw}'")
    settle(proxy)

    events = statements(rds, proxy.prefix, app=app_name)
    texts = [ev["sql"] for ev in events]
    assert "ALTER ROLE md5user PASSWORD '***'" in texts
    assert f"CREATE ROLE \"{r2}\" LOGIN PASSWORD '***'" in texts
    assert (f"INSERT INTO cards (id, password, card_number, note) VALUES (1, '***', '***', '{note_lit}')"
            in texts)
    errors = {ev["err"]: ev["errmsg"] for ev in events if "err" in ev}
    assert errors["22P02"] == 'invalid input syntax for type smallint: "***"'
    assert errors["42703"] == 'column "nope" of relation "cards" does not exist'
    # Positive controls: the events are there and a harmless value does get out, in sql and in params.
    places = haystack(rds, proxy)
    assert note_lit in places["redis"] and note_par in places["redis"]
    assert "md5user" in places["log"] and "scramuser" in places["log"]
    assert "fasterdata_proxy_statements_total" in places["metrics"]

    md5_hash = hashlib.md5((md5_pw + "md5user").encode()).hexdigest()
    assert_absent(places, {
        "md5user's login password": md5_pw, "its md5 hash": md5_hash, "scramuser's login password": scram_pw,
        "ALTER ROLE password": new_pw, "CREATE ROLE password": r2_pw, "password literal": lit_pw,
        "card literal": lit_card, "password parameter": par_pw, "card parameter": par_card,
        "password in SET": upd_pw, "card in WHERE": where_card,
        "password in COPY data": copy_pw, "card in COPY data": copy_card,
        "cvv literal echoed by an error": bad_lit, "cvv parameter echoed by an error": bad_par,
    })


def test_redact_all_hides_every_literal(start_proxy: StartProxy, rds: redis.Redis, scratch_db: str,
                                        app_name: str) -> None:
    proxy = start_proxy("--log-level", "debug", env={"FASTERDATA_REDACT": "all"})
    tag = secrets.token_hex(4)
    word, number, param = f"plain-word-{tag}", "918273645", f"plain-param-{tag}"
    with psycopg.connect(direct_dsn(scratch_db), autocommit=True) as conn:
        conn.execute("CREATE TABLE things (id bigint, label text, note text)")
    with psycopg.connect(proxy.dsn(scratch_db), autocommit=True, application_name=app_name) as conn:
        conn.execute(f"INSERT INTO things VALUES ({number}, '{word}', $q${word}-dollar$q$)")
        conn.execute(f"SELECT * FROM things WHERE label = '{word}' OR id = {number}; "
                     f"UPDATE things SET note = E'{word}-escaped' WHERE id IN ({number}, 1)")
        conn.execute("INSERT INTO things VALUES (%s, %s, %s)", (int(number) + 1, param, None))
        conn.execute("SELECT * FROM things WHERE label = %b", (param,))
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute(f"SELECT * FROM things WHERE id = '{word}-not-a-number'")
    settle(proxy)

    events = statements(rds, proxy.prefix, app=app_name)
    assert len(events) == 6
    assert events[5]["errmsg"] == 'invalid input syntax for type bigint: "***"'
    assert events[0]["sql"] == "INSERT INTO things VALUES ('***', '***', '***')"
    assert events[1]["sql"] == "SELECT * FROM things WHERE label = '***' OR id = '***'"
    assert json.loads(events[3]["params"]) == ["***", "***", None]  # NULL carries no value to hide
    assert json.loads(events[4]["params"]) == ["***"]
    places = haystack(rds, proxy)
    assert "INSERT INTO things VALUES" in places["redis"]  # positive control
    assert_absent(places, {"string literal": word, "number literal": number, "parameter": param,
                           "parameter number": str(int(number) + 1)})


@pytest.mark.parametrize("form", ["insert without column list", "multi-column SET", "SQL-level EXECUTE"])
def test_sensitive_values_in_forms_redaction_does_not_follow(start_proxy: StartProxy, rds: redis.Redis,
                                                              cluster: PrivateCluster, app_name: str,
                                                              form: str) -> None:
    proxy = start_proxy(upstream=cluster.address)
    secret = f"FormSecret-{secrets.token_hex(4)}"
    with psycopg.connect(proxy.dsn("vault"), autocommit=True, application_name=app_name) as conn, \
            conn.transaction(force_rollback=True):
        if form == "insert without column list":
            conn.execute(f"INSERT INTO cards VALUES (100, '{secret}', 'c', 'n')")
        elif form == "multi-column SET":
            conn.execute(f"UPDATE cards SET (password, note) = ('{secret}', 'n') WHERE id = 100")
        else:
            conn.execute("PREPARE ins (int, text) AS INSERT INTO cards (id, password) VALUES ($1, $2)")
            conn.execute(f"EXECUTE ins(100, '{secret}')")
    settle(proxy)
    assert statements(rds, proxy.prefix, app=app_name)
    assert_absent(haystack(rds, proxy), {form: secret})


class Needles:
    """Secrets made up for one test, each named for where it was sent."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(4)
        self.all: dict[str, str] = {}

    def __call__(self, where: str) -> str:
        value = f"S{len(self.all)}x{self.tag}"  # unique, and not a prefix of another
        self.all[where] = f"{value}z"
        return self.all[where]


def unnamed_column_forms(conn: psycopg.Connection, s: Needles) -> None:
    """Every way a value reaches a sensitive column of `users` without the text naming the column."""
    row = 100

    def values(form: str) -> tuple[int, str, str, str, str]:
        nonlocal row
        row += 1
        return row, f"e{row}@example.org", s(f"password, {form}"), s(f"card, {form}"), "n"

    def literal(form: str) -> str:
        return "({}, '{}', '{}', '{}', '{}')".format(*values(form))

    conn.execute(f"INSERT INTO users VALUES {literal('simple')}")
    conn.execute(f"INSERT INTO users VALUES {literal('multi-row 1')}, {literal('multi-row 2')}")
    conn.execute("INSERT INTO users VALUES (%s, %s, %s, %s, %s)", values("extended"))
    conn.execute("INSERT INTO users VALUES (%b, %b, %b, %b, %b)", values("binary"))
    conn.execute("INSERT INTO users VALUES (%s, %s, %s, %s, %s), (%s, %s, %s, %s, %s)",
                 values("extended multi-row 1") + values("extended multi-row 2"))
    for i in range(2):  # prepared server-side: a named statement, Bind/Execute only the second time
        conn.execute("INSERT INTO users VALUES (%s, %s, %s, %s, %s)", values(f"prepared {i}"), prepare=True)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO users VALUES (%s, %s, %s, %s, %s)", [values("executemany 1"),
                                                                          values("executemany 2")])
    psycopg.ClientCursor(conn).execute("INSERT INTO users VALUES (%s, %s, %s, %s, %s)", values("client-side"))
    conn.execute(f"INSERT INTO users SELECT {literal('insert select')[1:-1]}")
    conn.execute("INSERT INTO users SELECT %s, %s, %s, %s, %s", values("insert select params"))
    named = values("named select")
    conn.execute("INSERT INTO users (id, password, card_number) SELECT %s, %s, %s", (named[0], named[2], named[3]))
    conn.execute("INSERT INTO users (id, email) VALUES (%s, 'x') ON CONFLICT (id) DO UPDATE "
                 f"SET password = '{s('password, on conflict literal')}', card_number = %s",
                 (101, s("card, on conflict param")))
    conn.execute(f"INSERT INTO users VALUES {literal('on conflict 2')} ON CONFLICT (id) DO UPDATE "
                 "SET password = EXCLUDED.password")
    conn.execute(f"UPDATE users SET password = %s, card_number = '{s('card, update literal')}' WHERE id = 101",
                 (s("password, update param"),))
    conn.execute(f"UPDATE users SET (password, note) = ('{s('password, row update')}', 'n') WHERE id = 102")
    conn.execute("UPDATE users u SET password = v.pw FROM (VALUES (102, %s)) AS v(id, pw) WHERE u.id = v.id",
                 (s("password, update from values"),))
    conn.execute("WITH v AS (SELECT 102 AS id, %s AS password) UPDATE users u SET password = v.password FROM v "
                 "WHERE u.id = v.id", (s("password, named in a CTE"),))
    conn.execute("MERGE INTO users u USING (SELECT 900 AS id) m ON u.id = m.id WHEN NOT MATCHED THEN "
                 f"INSERT VALUES (m.id, 'm', '{s('password, merge')}', '{s('card, merge')}', 'n')")
    conn.execute("PREPARE ins AS INSERT INTO users VALUES ($1, $2, $3, $4, $5)")
    conn.execute("EXECUTE ins({}, '{}', '{}', '{}', '{}')".format(*values("SQL EXECUTE")))
    with conn.cursor().copy("COPY users FROM STDIN") as copy:
        copy.write_row(values("COPY"))
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):  # the server quotes the bad value back
        conn.execute("INSERT INTO users VALUES (%s, %s, %s, %s, %s)", (s("id echoed by an error"), "e", "p", "c", "n"))


def test_unnamed_columns_never_leave_in_clear(start_proxy: StartProxy, rds: redis.Redis, cluster: PrivateCluster,
                                              app_name: str) -> None:
    """`INSERT INTO users VALUES (…)` names no column: the proxy hides its values, in every protocol and
    statement form, until the session has seen users' columns (SELECT *); then it hides by column."""
    proxy = start_proxy("--log-level", "debug", upstream=cluster.address)
    s = Needles()
    with psycopg.connect(proxy.dsn("vault"), autocommit=True, application_name=app_name) as conn, \
            conn.transaction(force_rollback=True):
        unnamed_column_forms(conn, s)
    # Another session learns users' columns from a RowDescription: the harmless ones show, the others not.
    learned_pw, learned_card = s("password, learned"), s("card, learned")
    shown_email, shown_note = f"shown-email-{s.tag}", f"shown-note-{s.tag}"
    with psycopg.connect(proxy.dsn("vault"), autocommit=True, application_name=app_name) as conn, \
            conn.transaction(force_rollback=True):
        conn.execute("SELECT * FROM users WHERE false")
        conn.execute("INSERT INTO users VALUES (%s, %s, %s, %s, %s)", (1, shown_email, learned_pw, learned_card,
                                                                        shown_note))
        conn.execute(f"INSERT INTO users VALUES (2, '{shown_email}', '{learned_pw}', '{learned_card}', 'n')")
    settle(proxy)

    events = statements(rds, proxy.prefix, app=app_name)
    # Positive controls: every form was captured, and harmless values do get out.
    assert len(events) >= 30
    places = haystack(rds, proxy)
    assert shown_email in places["redis"] and shown_note in places["redis"]
    assert_absent(places, s.all)
    texts = [ev["sql"] for ev in events]
    # What the capture records for each form: the statement, its values masked.
    assert "INSERT INTO users VALUES ('***', '***', '***', '***', '***')" in texts
    unlearned = [json.loads(ev["params"]) for ev in events
                 if ev["sql"] == "INSERT INTO users VALUES ($1, $2, $3, $4, $5)" and shown_note not in ev["params"]]
    assert len(unlearned) == 7 and all(p == ["***"] * 5 for p in unlearned), unlearned
    copy = [ev for ev in events if ev.get("tag") == "COPY"]
    assert [(ev["sql"], ev["rows"], "params" in ev) for ev in copy] == [("COPY users FROM STDIN", "1", False)]
    assert {ev["errmsg"] for ev in events if ev.get("err") == "22P02"} == {
        'invalid input syntax for type integer: "***"'}
    learned = [ev for ev in events if shown_note in ev.get("params", "")]
    assert [json.loads(ev["params"]) for ev in learned] == [[1, shown_email, "***", "***", shown_note]]
    assert f"INSERT INTO users VALUES (2, '{shown_email}', '***', '***', 'n')" in texts


def test_unnamed_columns_never_reach_the_spool_in_clear(start_proxy: StartProxy, cluster: PrivateCluster,
                                                        tmp_path: Path, app_name: str) -> None:
    """With Redis away, events wait in the spool on disk: redacted there too."""
    spool = tmp_path / "spool"
    proxy = start_proxy("--redis", f"redis://127.0.0.1:{free_port()}/0", upstream=cluster.address,
                        env={"FASTERDATA_SPOOL_DIR": str(spool)})
    s = Needles()
    with psycopg.connect(proxy.dsn("vault"), autocommit=True, application_name=app_name) as conn, \
            conn.transaction(force_rollback=True):
        unnamed_column_forms(conn, s)
    wait_until(lambda: value(scrape(proxy)[1], "fasterdata_proxy_connections_active") == 0, "the session to close")
    assert proxy.stop() == 0  # what Redis never confirmed goes to the spool
    on_disk = b"".join(f.read_bytes() for f in spool.rglob("*") if f.is_file())
    assert app_name.encode() in on_disk and b"INSERT INTO users VALUES" in on_disk  # positive control
    leaks = [where for where, needle in s.all.items() if needle.encode() in on_disk]
    assert not leaks, f"secrets in the spool: {leaks}"

"""psycopg 3, sync and async, through the proxy: every protocol path a real application uses."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from tests.kit.processes import Proxy
from tests.kit.services import direct_dsn

ROWS = [
    (1, "one", Decimal("1.10")),
    (2, "two\twith tab", Decimal("-2.5")),
    (3, None, None),
    (4, "quote ' and \\ backslash", Decimal("1e20")),
    (5, "ünïcødé ✓", Decimal("0")),
]


@pytest.fixture
def conn(proxy: Proxy) -> Iterator[psycopg.Connection]:
    """An autocommit connection through the module's proxy."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        yield c


def test_simple_query(conn: psycopg.Connection) -> None:
    """A parameterless statement goes out as a simple Query and comes back intact."""
    row = conn.execute("select 1, 'abc'::text, null::int, current_user").fetchone()
    assert row == (1, "abc", None, "postgres")


def test_several_statements_in_one_query(conn: psycopg.Connection) -> None:
    """Four statements in one simple Query (no parameters): each result arrives, in order."""
    cur = conn.cursor()
    cur.execute(
        "create temp table multi(x int); insert into multi values (1), (2); select sum(x) from multi; select 'last'"
    )
    results = []
    while True:
        if cur.pgresult is not None and cur.description is not None:
            results.append(cur.fetchall())
        if not cur.nextset():
            break
    assert results == [[(3,)], [("last",)]]
    cur.execute("drop table multi")


def test_extended_protocol_parameters_text_and_binary(conn: psycopg.Connection) -> None:
    """Bind parameters and results in both formats decode to the same Python values."""
    query = "select %s::int, %s::text, %s::numeric, %s::timestamptz, %s::bytea, %s::int[], %s::text"
    when = dt.datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=dt.UTC)
    params = [42, "héllo", Decimal("123.456"), when, bytes(range(256)), [1, None, 3], None]
    text_row = conn.cursor().execute(query, params).fetchone()
    binary_row = conn.cursor(binary=True).execute(query, params).fetchone()
    binary_params = conn.execute(query.replace("%s", "%b"), params).fetchone()
    expected = (42, "héllo", Decimal("123.456"), when, bytes(range(256)), [1, None, 3], None)
    assert text_row == expected
    assert binary_row == expected
    assert binary_params == expected


def test_pipeline_mode(conn: psycopg.Connection) -> None:
    """Many Parse/Bind/Execute batches with one Sync: results stay paired with their statements."""
    conn.execute("create temp table pipe(id int primary key, v text)")
    with conn.pipeline() as pipe:
        cursors = []
        for i in range(50):
            conn.execute("insert into pipe values (%s, %s)", [i, f"v{i}"])
        for i in range(0, 50, 10):
            cursors.append(conn.execute("select v from pipe where id = %s", [i]))
        with conn.cursor() as many:
            many.executemany("update pipe set v = v || %s where id = %s", [("!", i) for i in range(5)])
        pipe.sync()
        counted = conn.execute("select count(*), count(*) filter (where v like '%%!') from pipe")
    assert [c.fetchone()[0] for c in cursors] == [f"v{i}" for i in range(0, 50, 10)]
    assert counted.fetchone() == (50, 5)


def test_pipeline_error_aborts_batch_and_recovers(conn: psycopg.Connection) -> None:
    """An error inside a pipeline skips the rest until Sync; the session goes on afterwards."""
    with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
        conn.execute("select 1")
        conn.execute("select 1 / %s", [0])
        conn.execute("select 2")
    assert conn.execute("select 'after'").fetchone() == ("after",)


def test_prepared_statements(conn: psycopg.Connection) -> None:
    """prepare=True names the statement on the server; it is reused for later executions."""
    for i in range(3):
        assert conn.execute("select %s::int * 2", [i], prepare=True).fetchone() == (i * 2,)
    names = conn.execute("select name, statement from pg_prepared_statements").fetchall()
    assert any("* 2" in stmt for _name, stmt in names), names
    conn.execute("deallocate all")
    assert conn.execute("select count(*) from pg_prepared_statements").fetchone() == (0,)


def test_server_side_cursor_partial_fetch(conn: psycopg.Connection) -> None:
    """A named cursor fetches with Execute row limits (PortalSuspended) and every row arrives once."""
    with conn.transaction(), conn.cursor(name="walk") as cur:
        cur.itersize = 37
        cur.execute("select g, repeat('x', g % 50) from generate_series(1, 1000) g")
        first = cur.fetchmany(10)
        one = cur.fetchone()
        rest = list(cur)
    assert [r[0] for r in first] == list(range(1, 11))
    assert one == (11, "x" * 11)
    assert [r[0] for r in rest] == list(range(12, 1001))


def test_server_side_cursor_binary_scroll(proxy: Proxy) -> None:
    """A binary, scrollable named cursor outside autocommit: scroll back and read again."""
    with psycopg.connect(proxy.dsn()) as conn, conn.cursor(name="scroll", binary=True, scrollable=True) as cur:
        cur.execute("select g::bigint from generate_series(1, 100) g")
        assert cur.fetchmany(5) == [(1,), (2,), (3,), (4,), (5,)]
        cur.scroll(-3)
        assert cur.fetchone() == (3,)
        cur.scroll(90, mode="absolute")
        assert cur.fetchall() == [(i,) for i in range(91, 101)]


def test_transactions_commit_and_rollback(scratch_db: str, proxy: Proxy) -> None:
    """Rolled-back work (whole transaction or savepoint) is gone; committed work is there, seen directly."""
    with psycopg.connect(proxy.dsn(scratch_db)) as conn:
        conn.execute("create table t(x int)")
        conn.commit()
        conn.execute("insert into t values (1)")
        conn.rollback()
        with conn.transaction():
            conn.execute("insert into t values (2)")
            with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
                conn.execute("insert into t values (3)")
                conn.execute("create unique index on t(x)")
                conn.execute("insert into t values (3)")
        with pytest.raises(ZeroDivisionError), conn.transaction():
            conn.execute("insert into t values (4)")
            raise ZeroDivisionError
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1 / 0")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
    with psycopg.connect(direct_dsn(scratch_db)) as direct:
        assert direct.execute("select array_agg(x order by x) from t").fetchone() == ([2],)


def test_copy_from_stdin_and_to_stdout(scratch_db: str, proxy: Proxy) -> None:
    """COPY in both directions, text and binary: same rows in the table, same bytes out as directly."""
    with psycopg.connect(proxy.dsn(scratch_db), autocommit=True) as conn:
        conn.execute("create table c(id int, name text, amount numeric)")
        cur = conn.cursor()
        with cur.copy("copy c from stdin") as copy:
            for row in ROWS:
                copy.write_row(row)
        with cur.copy("copy c (id, name, amount) from stdin (format binary)") as copy:
            copy.set_types(["int4", "text", "numeric"])
            for row in ROWS:
                copy.write_row((row[0] + 100, *row[1:]))
        big = "".join(f"{i}\tname {i}\t{i}.5\n" for i in range(1000, 21000))
        with cur.copy("copy c from stdin") as copy:
            copy.write(big)
        assert conn.execute("select count(*) from c").fetchone() == (20010,)

        def dump(c: psycopg.Connection, fmt: str) -> bytes:
            out = bytearray()
            with c.cursor().copy(f"copy (select * from c order by id) to stdout (format {fmt})") as copy:
                for chunk in copy:
                    out += chunk
            return bytes(out)

        with cur.copy("copy (select * from c where id < 200 order by id) to stdout") as copy:
            copy.set_types(["int4", "text", "numeric"])
            rows = list(copy.rows())
        assert rows == [*ROWS, *((r[0] + 100, *r[1:]) for r in ROWS)]
        with psycopg.connect(direct_dsn(scratch_db)) as direct:
            for fmt in ("text", "csv", "binary"):
                assert dump(conn, fmt) == dump(direct, fmt)


def test_copy_from_stdin_error_keeps_session(conn: psycopg.Connection) -> None:
    """A COPY the server rejects midway (bad data) ends in an error and the session stays usable."""
    conn.execute("create temp table cbad(x int)")
    with pytest.raises(psycopg.errors.InvalidTextRepresentation), conn.cursor().copy("copy cbad from stdin") as copy:
        copy.write("1\n2\nnot a number\n")
    assert conn.execute("select count(*) from cbad").fetchone() == (0,)


def test_listen_notify(proxy: Proxy) -> None:
    """A notification sent by one session reaches a listener on another, both through the proxy."""
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as listener,
        psycopg.connect(proxy.dsn(), autocommit=True) as sender,
    ):
        channel = f"fd_{uuid.uuid4().hex[:10]}"  # unique: other test runs may share the server
        listener.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
        sender.execute("select pg_notify(%s, 'payload ✓')", [channel])
        sender.execute(sql.SQL("notify {}, 'second'").format(sql.Identifier(channel)))
        got = list(listener.notifies(timeout=10, stop_after=2))
        assert [(n.channel, n.payload) for n in got] == [(channel, "payload ✓"), (channel, "second")]
        assert got[0].pid == sender.info.backend_pid


def test_notices(conn: psycopg.Connection) -> None:
    """NoticeResponses interleaved with a statement's results reach the notice handler."""
    notices: list[tuple[str | None, str | None]] = []
    conn.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
    conn.execute("do $$ begin raise notice 'first %', 1; raise warning 'second'; raise notice 'third'; end $$")
    assert notices == [("NOTICE", "first 1"), ("WARNING", "second"), ("NOTICE", "third")]


def test_error_then_session_continues(conn: psycopg.Connection) -> None:
    """Errors are ordinary server errors with their SQLSTATE; the session is not disturbed."""
    with pytest.raises(psycopg.errors.UndefinedTable) as info:
        conn.execute(sql.SQL("select * from {}").format(sql.Identifier("no_such_table_fd")))
    assert info.value.sqlstate == "42P01"
    assert conn.execute("select 1").fetchone() == (1,)


def test_concurrent_sessions(proxy: Proxy) -> None:
    """Sessions on threads do not see each other's traffic (no cross-talk in the proxy)."""
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with psycopg.connect(proxy.dsn(), autocommit=True) as c:
                for i in range(30):
                    assert c.execute("select %s::int, %s::text", [n * 1000 + i, f"s{n}"]).fetchone() == (
                        n * 1000 + i,
                        f"s{n}",
                    )
        except BaseException as exc:  # collected for the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures


# -- async ------------------------------------------------------------------------------------------


async def test_async_queries_params_and_binary(proxy: Proxy) -> None:
    """The async connection speaks the same protocol paths: simple, extended, binary."""
    async with await psycopg.AsyncConnection.connect(proxy.dsn(), autocommit=True) as conn:
        assert await (await conn.execute("select 'simple'")).fetchone() == ("simple",)
        cur = await conn.execute("select %s::int + 1, %s::jsonb", [41, Jsonb({"k": [1, 2]})])
        assert await cur.fetchone() == (42, {"k": [1, 2]})
        bcur = conn.cursor(binary=True)
        await bcur.execute("select %s::float8[], %s::uuid", [[1.5, -2.0], "12345678-1234-5678-1234-567812345678"])
        row = await bcur.fetchone()
        assert row[0] == [1.5, -2.0] and str(row[1]) == "12345678-1234-5678-1234-567812345678"
        await conn.execute("select %s::int", [7], prepare=True)
        assert await (await conn.execute("select %s::int", [8], prepare=True)).fetchone() == (8,)


async def test_async_pipeline_and_transaction(proxy: Proxy) -> None:
    """Async pipeline plus a rolled-back transaction block."""
    async with await psycopg.AsyncConnection.connect(proxy.dsn(), autocommit=True) as conn:
        await conn.execute("create temp table ap(x int)")
        async with conn.pipeline():
            for i in range(20):
                await conn.execute("insert into ap values (%s)", [i])
            total = await conn.execute("select sum(x) from ap")
        assert await total.fetchone() == (190,)
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute("delete from ap")
                raise RuntimeError("roll back")
        assert await (await conn.execute("select count(*) from ap")).fetchone() == (20,)


async def test_async_named_cursor_and_copy(proxy: Proxy) -> None:
    """Async server-side cursor with partial fetches, then COPY both ways."""
    async with await psycopg.AsyncConnection.connect(proxy.dsn()) as conn:
        async with conn.cursor(name="acur") as cur:
            await cur.execute("select g from generate_series(1, 500) g")
            assert [r[0] for r in await cur.fetchmany(25)] == list(range(1, 26))
            assert [r[0] async for r in cur] == list(range(26, 501))
        await conn.execute("create temp table ac(id int, t text)")
        async with conn.cursor().copy("copy ac from stdin") as copy:
            for i in range(100):
                await copy.write_row((i, f"t{i}"))
        out = bytearray()
        async with conn.cursor().copy("copy (select * from ac order by id) to stdout") as copy:
            async for chunk in copy:
                out += chunk
        assert bytes(out) == "".join(f"{i}\tt{i}\n" for i in range(100)).encode()
        await conn.rollback()


async def test_async_listen_notify_and_notices(proxy: Proxy) -> None:
    """Async notifications and notices through the proxy."""
    async with (
        await psycopg.AsyncConnection.connect(proxy.dsn(), autocommit=True) as listener,
        await psycopg.AsyncConnection.connect(proxy.dsn(), autocommit=True) as sender,
    ):
        notices: list[str | None] = []
        sender.add_notice_handler(lambda d: notices.append(d.message_primary))
        channel = f"fd_{uuid.uuid4().hex[:10]}"
        await listener.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
        await sender.execute(
            sql.SQL("do $$ begin raise notice 'sending'; perform pg_notify({}, 'hi'); end $$").format(
                sql.Literal(channel)
            )
        )
        got = [n async for n in listener.notifies(timeout=10, stop_after=1)]
        assert [(n.channel, n.payload) for n in got] == [(channel, "hi")]
        assert notices == ["sending"]

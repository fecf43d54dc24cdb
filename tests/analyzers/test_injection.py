"""An attack corpus of every family, in every context, each payload with its benign twin (the same input
escaped correctly), plus benign tricky SQL. Detection and false positives are computed over the corpus,
so a regression in either fails the test."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psycopg
import pytest
import redis

from fasterdata.analyzers.fingerprint import Normalizer
from fasterdata.analyzers.injection import Hit, Injection, analyse, match, skeleton
from fasterdata.analyzers.rules import parse
from fasterdata.analyzers.sqllex import tokenize
from fasterdata.analyzers.worker import Worker
from fasterdata.config.analyzer_settings import AnalyzerSettings
from fasterdata.proxy.events import events_of
from fasterdata.proxy.streamkeys import stream_name

CHR = "(CHR(113)||CHR(107)||CHR(106)||CHR(120)||CHR(113))"
ERR = f"CAST({CHR[:-1]}||(SELECT (CASE WHEN (2026=2026) THEN 1 ELSE 0 END))::text||CHR(113)) AS NUMERIC)"
DUMP = f"CAST(({CHR[1:-1]}||(SELECT COALESCE(password,CHR(32)) FROM public.users OFFSET 4 LIMIT 1)::text) AS NUMERIC)"

# Payloads where a number is expected (integer, IN-list of numbers, LIMIT): (family, payload)
INT = [
    ("tautology", "1 OR 1=1"), ("tautology", "1 OR 2>1"), ("tautology", "1/**/OR/**/1=1"),
    ("tautology", "-1 OR 'a'='a'"), ("tautology", "1 OR TRUE"), ("tautology", "1 OR NOT 1=2"),
    ("boolean-blind", "1 AND 9913=9464"), ("boolean-blind", "1) AND 9913=9464-- x"),
    ("boolean-blind", "1 AND (SELECT (CASE WHEN (5240=5240) THEN 1 ELSE 0 END))=1"),
    ("error-based", f"1 AND 2026={ERR}"), ("error-based", "(SELECT version())::int"),
    ("error-based", f"1 AND 7313={DUMP}"),
    ("union", f"-1 UNION ALL SELECT NULL,NULL,{CHR}-- x"),
    ("union", "1 UNION/**/SELECT usename,passwd,NULL FROM pg_shadow"),
    ("union", "1 UNION SELECT id, username, password FROM users"),
    ("syntax-probe", "PostgreSQL"),  # a name where a number belongs (sqlmap's fingerprinting)
    ("syntax-probe", "1'"), ("syntax-probe", "1)"), ("syntax-probe", "1\""), ("syntax-probe", "1.,))(,'\"."),
    ("column-count", "1 ORDER BY 1-- x"), ("column-count", "1 ORDER BY 10-- x"),
    ("heavy", "1 AND 6961=(SELECT COUNT(*) FROM GENERATE_SERIES(1,5000000))"),
    ("file", "1 AND pg_read_file('/etc/passwd') IS NOT NULL"), ("file", "1 AND (SELECT lo_import('/etc/passwd')) > 0"),
    ("network", "1 AND (SELECT dblink_connect('host=10.9.9.9 user=x'))='OK'"),
    ("catalog", "1 AND 1=(SELECT 1 FROM information_schema.tables LIMIT 1)"),
    ("catalog", "1 AND current_user LIKE 'post%'"),
    ("stacked", "1; DROP TABLE products"), ("stacked", "1; SELECT pg_sleep(5)"),
    ("time", "1 AND 4211=(SELECT 4211 FROM PG_SLEEP(5))"), ("time", "1 AND pg_sleep(5) IS NULL"),
    ("comment", "1-- x"), ("comment", "1/*"),
]
# Payloads inside a quoted string (the template supplies the quotes around them)
STR = [
    ("tautology", "x' OR 'a'='a"), ("tautology", "x' OR 1=1-- x"), ("tautology", "x'/**/OR/**/'1'='1"),
    ("tautology", "' OR 2>1 OR 'b'='"),
    ("boolean-blind", "x' AND 9913=9464 AND 'a'='a"), ("boolean-blind", "x') AND 9913=9464-- x"),
    ("error-based", f"x' AND 2026={ERR} AND 'a'='a"), ("error-based", "x' AND (SELECT version())::int=1-- x"),
    ("union", f"x' UNION ALL SELECT NULL,NULL,{CHR}-- x"), ("union", "x' UNION/**/SELECT usename FROM pg_user-- x"),
    ("union", "x' UNION SELECT username FROM users WHERE 'a'='a"),
    ("syntax-probe", "x'"), ("syntax-probe", "x'\"("), ("syntax-probe", "x') AND ('a"),
    ("syntax-probe", "chair'nsHyit<'\">QsXgnr"),  # a quote closed early, the rest balanced by the template
    ("column-count", "x' ORDER BY 1-- x"),
    ("heavy", "x' AND 6961=(SELECT COUNT(*) FROM GENERATE_SERIES(1,5000000))-- x"),
    ("file", "x' AND pg_read_file('/etc/passwd') IS NOT NULL-- x"), ("file", "x' AND pg_ls_dir('.') IS NULL-- x"),
    ("network", "x' AND (SELECT dblink('host=10.9.9.9', 'SELECT 1')) IS NULL-- x"),
    ("catalog", "x' AND 1=(SELECT COUNT(*) FROM pg_catalog.pg_tables)-- x"),
    ("stacked", "x'; DROP TABLE customers-- x"), ("stacked", "x'; SELECT pg_sleep(5)-- x"),
    ("time", "x' AND 4211=(SELECT 4211 FROM PG_SLEEP(5)) AND 'a'='a"),
    ("comment", "admin'--"), ("comment", "admin'/*"), ("comment", "admin' -- x"),
]
# Payloads in place of the sort column
ORDER = [
    ("error-based", f"({DUMP})"), ("error-based", f"name,{ERR}"),
    ("boolean-blind", "(CASE WHEN (1=1) THEN name ELSE price::text END)"),
    ("boolean-blind", "(SELECT (CASE WHEN (9913=9464) THEN 1 ELSE 1/(SELECT 0) END))"),
    ("union", f"name UNION ALL SELECT NULL,NULL,{CHR}-- x"), ("union", "1 UNION SELECT id, username FROM users-- x"),
    ("column-count", "1-- x"), ("column-count", "3-- x"), ("column-count", "name, 5-- x"),
    ("time", "(SELECT 1 FROM pg_sleep(5))"), ("heavy", "(SELECT COUNT(*) FROM GENERATE_SERIES(1,5000000))"),
    ("syntax-probe", "name'"), ("syntax-probe", "name)"), ("stacked", "name; DROP TABLE products-- x"),
    ("boolean-blind", "name') AND 8238=5438 AND ('LGri'='LGri"),  # as sqlmap sends them: the quotes pair up
    ("boolean-blind", "name' AND 9561=9561 AND 'DWFo'='DWFo"),
    ("boolean-blind", 'name") AND 1646=1855 AND ("OauD"="OauD'), ("boolean-blind", 'name" HAVING 6616=3538 AND "a"="a'),
    ("error-based", f"name' AND 8587={ERR} AND 'ab'='ab"),
    ("catalog", "(SELECT current_user)"), ("tautology", "name, 1=1"),
]


@dataclass(frozen=True)
class Context:
    name: str
    template: str  # {v}: where the input lands
    style: str  # int | str | order
    benign: tuple[str, ...]  # inputs of normal use

    def sql(self, value: str) -> str:
        return self.template.format(v=value)

    def escaped(self, value: str) -> str:
        """The same input as an application that escapes correctly sends it."""
        if self.style == "str":
            return self.template.format(v=value.replace("'", "''"))
        if self.style == "order":  # a quoted identifier: never SQL
            return self.template.format(v='"' + value.replace('"', '""') + '"')
        return self.template.format(v="'" + value.replace("'", "''") + "'")


CONTEXTS = [
    Context("integer", "SELECT id, name, price FROM products WHERE id = {v}", "int", ("1", "42", "7")),
    Context("quoted", "SELECT id, email FROM customers WHERE last_name = '{v}'", "str",
            ("Smith", "Jones", "Lee")),
    Context("like", "SELECT id, name FROM products WHERE name LIKE '%{v}%' ORDER BY name", "str",
            ("chair", "lamp", "desk")),
    Context("in-list", "SELECT id, total FROM orders WHERE customer_id IN (3, {v}) AND status = 'open'", "int",
            ("4", "5", "6")),
    Context("in-list-str", "SELECT id FROM orders WHERE status IN ('new', '{v}')", "str", ("paid", "sent")),
    Context("order-by", "SELECT id, name, price FROM products ORDER BY {v} LIMIT 20", "order",
            ("name", "price", "id")),
    Context("limit", "SELECT id, name FROM products ORDER BY id LIMIT {v}", "int", ("10", "20", "50")),
    Context("login-user", "SELECT id FROM users WHERE username = '{v}' AND password = 'secret'", "str",
            ("alice", "bob")),
    Context("login-password", "SELECT id FROM users WHERE username = 'alice' AND password = '{v}'", "str",
            ("hunter2", "pa55")),
]
PAYLOADS = {"int": INT, "str": STR, "order": ORDER}
ATTACKS = [(c, fam, p) for c in CONTEXTS for fam, p in PAYLOADS[c.style]]

# Benign SQL that reads like an attack to a regular expression
TRICKY = [
    "SELECT id FROM customers WHERE last_name = 'O''Brien'",
    "SELECT id FROM customers WHERE last_name = 'Smith'';SELECT PG_SLEEP(5)--'",
    "SELECT id FROM notes WHERE body = 'use -- for comments; and /* this */ too'",
    "SELECT id FROM notes WHERE body LIKE '%union select%' OR title LIKE '%select%'",
    "SELECT id FROM notes WHERE body = E'it\\'s 1=1 -- fine'",
    "SELECT id FROM notes WHERE body = $$' OR 'a'='a$$",
    'SELECT "union", "select" FROM "weird--table" WHERE "or" = 1',
    "SELECT name FROM products WHERE kind = 'chair' UNION SELECT name FROM archived_products WHERE kind = 'chair'",
    "SELECT name, price FROM products ORDER BY price DESC, name LIMIT 10 OFFSET 20",
    "SELECT id FROM orders WHERE total BETWEEN 10 AND 20 AND created_at > now() - interval '1 day'",
    "SELECT id FROM orders WHERE total - 5 = 3",
    "SELECT id FROM orders WHERE id = 5 /*route='%2Forders',controller='orders'*/",
    "SELECT count(*) FROM orders WHERE status IN ('new', 'paid', 'sent')",
    "SELECT * FROM generate_series(1, 10) AS g(n)",
    "SELECT id, CASE WHEN total > 100 THEN 'big' ELSE 'small' END FROM orders WHERE region = 'eu'",
    "SELECT id FROM customers WHERE email = 'a@b.c' AND password_hash = crypt('x', password_hash)",
    "SELECT id FROM users WHERE username = 'admin' -- the admin\n AND active",
    "SELECT id FROM t WHERE a = 1 AND b = 'x' ORDER BY c",
]


def statements_learnt(inj: Injection, norm: Normalizer, app: str = "shop") -> None:
    """Each context's normal traffic, from two sessions, enough times to be learnt."""
    for c in CONTEXTS:
        for i in range(6):
            for value in c.benign:
                sql = c.sql(value)
                assert inj.inspect(sql, norm(sql).fp, app, f"s{i % 2}") == [], sql


def flagged(inj: Injection, norm: Normalizer, sql: str, app: str = "shop", sid: str = "attacker") -> list[Hit]:
    return inj.inspect(sql, norm(sql).fp, app, sid)


@pytest.fixture
def learnt() -> tuple[Injection, Normalizer]:
    inj, norm = Injection(), Normalizer(5000)
    statements_learnt(inj, norm)
    return inj, norm


def test_every_family_is_in_the_corpus_in_every_context() -> None:
    families = {"tautology", "boolean-blind", "error-based", "union", "syntax-probe", "column-count", "heavy",
                "file", "network", "catalog", "stacked", "time", "comment"}
    for style, payloads in PAYLOADS.items():
        assert families - {f for f, _ in payloads} <= ({"file", "network", "comment"} if style == "order" else set())
    assert {c.style for c in CONTEXTS} == {"int", "str", "order"} and len(ATTACKS) > 200


def test_detection_after_learning_is_at_least_95_percent(learnt: tuple[Injection, Normalizer]) -> None:
    inj, norm = learnt
    missed = [(c.name, p) for c, _, p in ATTACKS if not flagged(inj, norm, c.sql(p))]
    rate = 1 - len(missed) / len(ATTACKS)
    assert rate >= 0.95, f"{rate:.1%} detected; missed: {missed}"


def test_every_family_is_detected_in_most_contexts(learnt: tuple[Injection, Normalizer]) -> None:
    inj, norm = learnt
    per: dict[str, list[bool]] = {}
    for c, fam, p in ATTACKS:
        per.setdefault(fam, []).append(bool(flagged(inj, norm, c.sql(p))))
    weak = {fam: f"{sum(v)}/{len(v)}" for fam, v in per.items() if sum(v) < 0.9 * len(v)}
    assert weak == {}


def test_no_false_positive_on_the_benign_twins(learnt: tuple[Injection, Normalizer]) -> None:
    inj, norm = learnt
    noisy = [(c.name, p, flagged(inj, norm, c.escaped(p))) for c, _, p in ATTACKS]
    assert [n for n in noisy if n[2]] == []


def test_no_false_positive_on_tricky_benign_sql(learnt: tuple[Injection, Normalizer]) -> None:
    inj, norm = learnt
    assert [(sql, flagged(inj, norm, sql)) for sql in TRICKY if flagged(inj, norm, sql)] == []


def test_no_false_positive_on_a_query_builder_adding_a_filter(learnt: tuple[Injection, Normalizer]) -> None:
    inj, norm = learnt
    assert flagged(inj, norm, "SELECT id, name, price FROM products WHERE id = 3 AND price > 10") == []
    assert flagged(inj, norm, "SELECT id, name FROM products WHERE name LIKE '%x%' AND kind = 'a' ORDER BY name") \
        == []


def test_signatures_never_sleep_while_an_application_is_learnt() -> None:
    inj, norm = Injection(), Normalizer(1000)
    hits = flagged(inj, norm, "SELECT * FROM products WHERE id = 1 OR 1=1", app="brand-new")
    assert [h.rule for h in hits] == ["sqli_tautology"]
    signature_only = [(c.name, p) for c, _, p in ATTACKS if not flagged(inj, norm, c.sql(p), app="brand-new")]
    assert len(signature_only) / len(ATTACKS) < 0.1, signature_only


def test_a_learnt_shape_with_a_literal_replaced_names_the_fragment(learnt: tuple[Injection, Normalizer]) -> None:
    inj, norm = learnt
    sql = "SELECT id, name, price FROM products WHERE id = 1 UNION SELECT id, username, password FROM users"
    [hit] = flagged(inj, norm, sql)
    assert hit.rule == "sqli_shape" and hit.shape == norm("SELECT id, name, price FROM products WHERE id = 5").fp
    assert hit.offset == sql.index("1 UNION") and hit.fragment == sql[hit.offset:]
    assert "UNION" in hit.what


def test_a_shape_is_learnt_from_several_sessions_and_never_from_a_firing_one() -> None:
    inj, norm = Injection(learn_seen=3, learn_sessions=2), Normalizer(1000)
    base = "SELECT * FROM items WHERE id = {}"
    for i in range(5):  # one session only: not learnt yet
        flagged(inj, norm, base.format(i), sid="s1")
    assert norm(base.format(1)).fp not in inj.apps["shop"].learnt
    flagged(inj, norm, base.format(9), sid="s2")
    assert norm(base.format(1)).fp in inj.apps["shop"].learnt
    attack = "SELECT * FROM items WHERE id = 1 OR 1=1"
    for i in range(6):
        assert flagged(inj, norm, attack, sid=f"s{i}")
    assert norm(attack).fp not in inj.apps["shop"].learnt  # a shape that fired is never learnt


def test_catalog_reads_are_judged_by_what_the_application_reads(learnt: tuple[Injection, Normalizer]) -> None:
    inj, norm = learnt
    sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    assert [h.rule for h in flagged(inj, norm, sql)] == ["sqli_catalog"]
    tools, tnorm = Injection(learn_seen=2), Normalizer(100)
    for i in range(3):
        flagged(tools, tnorm, sql, app="admin-ui", sid=f"s{i}")
    assert flagged(tools, tnorm, "SELECT relname FROM pg_class WHERE relkind = 'r'", app="admin-ui") == []


def test_texts_of_one_template_are_tokenised_once() -> None:
    inj, norm = Injection(), Normalizer(1000)
    for i in range(50):
        flagged(inj, norm, f"SELECT * FROM items WHERE id = {i} AND kind = 'k{i}'", sid=f"s{i % 2}")
    assert inj.analysed == 1  # the first text: the others share its tokens (and its skeleton is learnt)


def test_an_attack_text_is_reanalysed_for_its_own_offsets() -> None:
    inj, norm = Injection(), Normalizer(1000)
    a = flagged(inj, norm, "SELECT * FROM t WHERE id = 1 OR 1=1")
    b = flagged(inj, norm, "SELECT * FROM t WHERE id = 12345 OR 1=1")
    assert a[0].offset == 29 and b[0].offset == 33 and b[0].fragment == "OR 1=1"


def test_match_finds_the_replaced_literal() -> None:
    learnt, _ = skeleton(tokenize("SELECT * FROM t WHERE a = 1 AND b = 'x' ORDER BY c"))
    shape, _ = skeleton(tokenize("SELECT * FROM t WHERE a = 1 AND b = 'x' OR 'y'='y' ORDER BY c"))
    assert match(shape, learnt, truncated=False) == (11, 16)
    cut, _ = skeleton(tokenize("SELECT * FROM t WHERE a = 1--"))
    assert match(cut, learnt, truncated=True) == (7, 8)
    assert match(learnt, learnt, truncated=False) is None


def test_analyse_reports_offsets_into_the_text() -> None:
    sql = "SELECT * FROM t WHERE id = 1 AND 9913=9464-- x"
    rules = {h.rule: h for h in analyse(sql).hits}
    assert set(rules) == {"sqli_tautology", "sqli_comment"}
    assert sql[rules["sqli_tautology"].offset:].startswith("AND 9913=9464")


def _statements(r: redis.Redis, stream: str) -> list[dict[str, str]]:
    return [ev for _, fields in r.xrange(stream) for ev in events_of(fields)]


def test_an_injected_text_prepared_by_the_driver_is_flagged_every_time(r: redis.Redis, start_proxy,
                                                                       scratch_db: str) -> None:
    """psycopg prepares a text it has run five times: the Parse's text is as injectable as a Query's."""
    proxy = start_proxy()
    prefix = proxy.prefix
    stream = stream_name(prefix)
    injected = "SELECT id, name FROM items WHERE id = 2 OR 1=1"
    try:
        with psycopg.connect(proxy.dsn(scratch_db), autocommit=True, application_name="shop",
                             prepare_threshold=5) as conn:
            conn.execute("CREATE TABLE items (id int, name text)")
            for _ in range(8):
                conn.execute(injected)
        deadline = time.monotonic() + 30
        while sum(ev.get("sql") == injected for ev in _statements(r, stream)) < 8:
            assert time.monotonic() < deadline, "the proxy did not capture the 8 statements"
            time.sleep(0.05)
        sent = [ev for ev in _statements(r, stream) if ev.get("sql") == injected]
        assert "extended" in {ev.get("proto") for ev in sent}
        url = os.environ.get("FASTERDATA_TEST_REDIS", "redis://127.0.0.1:6379/0")
        worker = Worker(AnalyzerSettings(redis=url, prefix=prefix, metrics="", consumer="w1", block=0.05),
                        parse({"security": {"new_fingerprint": {"enabled": False}, "ddl_allowed_apps": ["shop"]}}))
        worker.setup()
        for _ in range(200):
            if not worker.run_once() + worker.quiesce() and worker.counters.statements >= len(_statements(r, stream)):
                break
        assert r.hget(f"{prefix}:alerts:counts", "sqli_tautology") == "8"
        assert worker.counters.findings[("sqli_tautology", "high")] == 8
        [alert] = [f for _, f in r.xrange(f"{prefix}:alerts") if f["rule"] == "sqli_tautology"]  # deduplicated
        assert alert["fragment"] == "OR 1=1" and alert["offset"] == str(injected.index("OR 1=1"))
        assert alert["app"] == "shop" and "session" in alert["evidence"] and alert["client"]
    finally:
        assert proxy.stop() == 0, proxy.log()
        for key in r.scan_iter(f"{prefix}:*"):
            r.delete(key)


class _Batch:
    """What `Security` writes a statement's findings to (FindingBatch), without Redis."""

    def __init__(self) -> None:
        from fasterdata.analyzers.atomic import Writes
        from fasterdata.analyzers.keys import Keys

        self.writes = Writes()
        self.keys = Keys("inj")
        self.findings: list[tuple[str, str]] = []
        self.new_pairs: set[tuple[str, str]] = set()


def _feed(security, normalize: Normalizer, batch: _Batch, sql: str, sid: str, part: str = "",
          proto: str = "simple") -> None:
    from fasterdata.analyzers.shape import analyze

    norm = normalize(sql)
    shape = analyze(norm.text)
    ev = {"sid": sid, "proto": proto, "app": "shop", "client": "10.1.2.3:5555", "user": "u", "db": "d"}
    if part:
        ev["part"] = part
    security.inspect(batch, ev, sql, norm, shape, security.checks.for_shape(shape), 0, 1_700_000_000_000_000, "shop")


def test_security_writes_the_note_and_the_fields_of_an_injection() -> None:
    from fasterdata.analyzers.security import Checks, Security

    policy = parse({"security": {"new_fingerprint": {"enabled": False}, "dedup_seconds": 0}}).security
    security, normalize = Security(Checks(policy)), Normalizer(1000)
    learning = _Batch()
    for i in range(6):
        _feed(security, normalize, learning, f"SELECT id, name FROM products WHERE id = {i}", f"s{i % 2}")
    assert learning.findings == []
    batch = _Batch()
    sql = "SELECT id, name FROM products WHERE id = 1) AND 9913=9464-- x"
    _feed(security, normalize, batch, sql, "s9")
    rules = {rule for rule, _ in batch.findings}
    assert {"sqli_shape", "sqli_tautology", "sqli_comment", "sqli_probe"} <= rules
    shape = next(f for f in _alerts(batch) if f["rule"] == "sqli_shape")
    assert shape["offset"] == str(sql.index("1) AND")) and shape["fragment"] == sql[sql.index("1) AND"):]
    assert shape["shape"] == normalize("SELECT id, name FROM products WHERE id = 5").fp
    assert "application 'shop', session s9, client 10.1.2.3:5555" in shape["evidence"]
    assert "breaks learnt shape" in shape["evidence"]


def test_a_statement_stacked_on_a_learnt_shape_is_found() -> None:
    from fasterdata.analyzers.security import Checks, Security

    policy = parse({"security": {"new_fingerprint": {"enabled": False}, "ddl_allowed_apps": ["shop"]}}).security
    security, normalize = Security(Checks(policy)), Normalizer(1000)
    learning = _Batch()
    for i in range(6):
        _feed(security, normalize, learning, f"SELECT id, name FROM products WHERE id = {i}", f"s{i % 2}")
    batch = _Batch()
    _feed(security, normalize, batch, "SELECT id, name FROM products WHERE id = 1", "s7", part="1/2")
    _feed(security, normalize, batch, "SELECT name FROM users", "s7", part="2/2")
    assert batch.findings == [("sqli_stacked", "high")]
    twin = _Batch()  # the same two as separate Queries
    _feed(security, normalize, twin, "SELECT id, name FROM products WHERE id = 1", "s7")
    _feed(security, normalize, twin, "SELECT name FROM users", "s7")
    assert twin.findings == []


def _alerts(batch: _Batch) -> list[dict[str, str]]:
    """The fields of the alerts a batch writes."""
    from fasterdata.analyzers import ops

    flat = batch.writes.args()
    out = []
    for i, op in ops.parse(flat):
        tail = i + 1 + len(op.args)
        end = tail + (int(flat[i + op.count_offset]) * op.per if op.count else 0)
        args = flat[i + 1:end]
        if op.code == "X" and args[0] == batch.keys.alerts:
            out.append(dict(zip(args[3::2], args[4::2], strict=True)))
    return out

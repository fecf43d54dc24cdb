"""The proxy's /metrics, /healthz and /readyz as an operator scrapes them, after a workload whose every
statement is known, and while its Redis goes away and comes back.
"""

from __future__ import annotations

import psycopg
import pytest
import redis

from tests.kit.metrics import Samples, http_get, scrape, settle, value
from tests.kit.polling import wait_until
from tests.kit.processes import ProxyProcess, StartProxy
from tests.kit.redisserver import RedisServer
from tests.kit.streams import statements


def histogram(samples: Samples, db: str, app: str) -> tuple[list[tuple[float, float]], float, float]:
    """(sorted (le, cumulative count) buckets, count, sum) of the statement latency series of db/app."""
    buckets = []
    for (name, labels), v in samples.items():
        lab = dict(labels)
        if name == "fasterdata_proxy_statement_duration_seconds_bucket" and (lab["db"], lab["app"]) == (db, app):
            buckets.append((float(lab["le"]), v))
    base = "fasterdata_proxy_statement_duration_seconds"
    return (sorted(buckets), value(samples, f"{base}_count", db=db, app=app),
            value(samples, f"{base}_sum", db=db, app=app))


def test_metrics_after_a_known_workload(start_proxy: StartProxy, rds: redis.Redis, scratch_db: str,
                                        app_name: str) -> None:
    proxy = start_proxy()
    assert http_get(proxy.metrics_port, "/healthz") == (200, "ok\n")
    assert http_get(proxy.metrics_port, "/readyz") == (200, "ready\n")
    # The start-up probe of the test harness opened a connection already: count from here.
    connections_before = value(scrape(proxy)[1], "fasterdata_proxy_connections_total")
    big = "y" * 100_000
    other_app = app_name + "-other"
    with psycopg.connect(proxy.dsn(scratch_db), autocommit=True, application_name=app_name) as conn:
        conn.execute("CREATE TABLE m (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO m SELECT i, 'n' FROM generate_series(1, 5) AS i")
        for i in range(3):
            conn.execute("SELECT * FROM m WHERE id = %s", (i,))
        conn.execute("UPDATE m SET note = %s WHERE id = 1", (big,))  # 100 kB client → server
        conn.execute("SELECT note FROM m WHERE id = 1")  # and back
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO m VALUES (1, 'again')")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM missing")
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SELEC 1")
    with psycopg.connect(proxy.dsn(scratch_db), autocommit=True, application_name=other_app) as conn:
        conn.execute("SELECT 1")
        conn.execute("SELECT 2")
    samples = settle(proxy)
    text, _ = scrape(proxy)

    # Statements by command tag (a failed statement has no tag: it counts as ERROR).
    stmts = {dict(labels)["command"]: v for (name, labels), v in samples.items()
             if name == "fasterdata_proxy_statements_total"}
    assert stmts == {"CREATE TABLE": 1, "INSERT": 1, "SELECT": 6, "UPDATE": 1, "ERROR": 4}, text
    # Errors by SQLSTATE class: 22012 → 22, 23505 → 23, 42P01 and 42601 → 42.
    errors = {dict(labels)["sqlstate_class"]: v for (name, labels), v in samples.items()
              if name == "fasterdata_proxy_statement_errors_total"}
    assert errors == {"22": 1, "23": 1, "42": 2}, text

    # Latency histogram, one series per (db, app), holding every statement of that app once.
    for app, count in ((app_name, 11), (other_app, 2)):
        buckets, total, dur_sum = histogram(samples, scratch_db, app)
        assert total == count, text
        assert buckets and buckets[-1] == (float("inf"), count), buckets
        assert [c for _le, c in buckets] == sorted(c for _le, c in buckets), buckets
        assert dur_sum >= 0

    # Connections and bytes.
    assert value(samples, "fasterdata_proxy_connections_total") == connections_before + 2
    assert value(samples, "fasterdata_proxy_connections_active") == 0
    assert value(samples, "fasterdata_proxy_bytes_total", direction="client_to_server") > len(big)
    assert value(samples, "fasterdata_proxy_bytes_total", direction="server_to_client") > len(big)
    assert value(samples, "fasterdata_proxy_protocol_errors_total") == 0
    assert value(samples, "fasterdata_proxy_tap_errors_total") == 0

    # The sink: every event confirmed, in at least one batch, nothing spooled or lost.
    events = statements(rds, proxy.prefix)
    assert len(events) == 13 == sum(stmts.values())
    assert value(samples, "fasterdata_sink_sent_total") == 13
    batches = value(samples, "fasterdata_sink_batches_total")
    assert 1 <= batches <= 13
    assert value(samples, "fasterdata_sink_send_seconds_count") == batches
    for name in ("spooled", "replayed", "dropped", "deduplicated", "send_errors"):
        assert value(samples, f"fasterdata_sink_{name}_total") == 0, name
    assert value(samples, "fasterdata_sink_redis_up") == 1
    assert value(samples, "fasterdata_sink_queued") == 0


def redis_up(proxy: ProxyProcess) -> float:
    """The sink's own view of its Redis connection, as exported."""
    return value(scrape(proxy)[1], "fasterdata_sink_redis_up")


def test_readiness_follows_the_sink(start_proxy: StartProxy, tmp_path, scratch_db: str, app_name: str) -> None:
    """/readyz is 200 while events have somewhere to go: Redis, or (Redis away) a spool with room.

    That is what StreamSink.readiness documents; a full spool makes it 503 with the reason, and
    /healthz (the process is alive) stays 200 throughout.
    """
    server = RedisServer(tmp_path)
    try:
        proxy = start_proxy("--redis", server.url,
                          env={"FASTERDATA_SPOOL_DIR": str(tmp_path / "spool"),
                               "FASTERDATA_SPOOL_MAX_BYTES": str(1 << 20)})
        wait_until(lambda: redis_up(proxy) == 1, "the sink to connect")
        assert http_get(proxy.metrics_port, "/readyz") == (200, "ready\n")

        server.kill()
        with psycopg.connect(proxy.dsn(scratch_db), autocommit=True, application_name=app_name) as conn:
            conn.execute("SELECT 'while redis is down'")  # the sink notices when it next sends
            wait_until(lambda: redis_up(proxy) == 0, "the sink to notice redis is gone")
            assert http_get(proxy.metrics_port, "/readyz") == (200, "ready\n")  # the spool takes the events
            assert http_get(proxy.metrics_port, "/healthz") == (200, "ok\n")

            # Fill the 1 MiB spool with ~16 kB statement texts until it refuses events.
            filler = "SELECT 1 /* " + "z" * 16_000 + " */"

            def spool_full() -> bool:
                conn.execute(filler)
                return value(scrape(proxy)[1], "fasterdata_sink_dropped_total") > 0

            wait_until(spool_full, "the spool to fill up", interval=0)
            status, body = http_get(proxy.metrics_port, "/readyz")
            assert status == 503 and "full" in body, body
            assert http_get(proxy.metrics_port, "/healthz") == (200, "ok\n")

        server.start()
        wait_until(lambda: redis_up(proxy) == 1, "the sink to reconnect")
        assert http_get(proxy.metrics_port, "/readyz") == (200, "ready\n")
        samples = settle(proxy)
        assert value(samples, "fasterdata_sink_replayed_total") > 0
        assert value(samples, "fasterdata_sink_spool_events") == 0
    finally:
        server.destroy()

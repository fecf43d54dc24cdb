"""Whatever arrives, in whatever order, the Session never raises and its events keep the contract."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import wire
from proxy.events import ALWAYS_STMT, ALWAYS_TXN_END, FIELDS, OUTCOMES, CaptureOptions

from . import pgmsg

FRONT = [
    pgmsg.query("SELECT 1; SELECT 2"), pgmsg.query("BEGIN"), pgmsg.query("COMMIT"), pgmsg.query("SAVEPOINT a"),
    pgmsg.query("ROLLBACK TO a"), pgmsg.query("DEALLOCATE ALL"), pgmsg.query(""),
    pgmsg.parse("SELECT $1", oids=(23,)), pgmsg.parse("SELECT 2", "n"), pgmsg.bind([b"1"]),
    pgmsg.bind([b"x"], stmt="n", portal="p"), pgmsg.bind([b"\x00\x01"], formats=(1,)),
    pgmsg.execute(), pgmsg.execute("p", 1), pgmsg.describe("S", "n"), pgmsg.describe("P"),
    pgmsg.close("S", "n"), pgmsg.close("P", "p"), pgmsg.sync(), pgmsg.flush(), pgmsg.copy_done(),
    wire.message("F", b"\0\0\0\1"), wire.message("f", b"oops\0"),
    # malformed bodies
    wire.message("B", b"x"), wire.message("B", b"\0\0\xff"), wire.message("E", b""), wire.message("P", b""),
    wire.message("P", b"a\0b"), wire.message("D", b""), wire.message("C", b""), wire.message("Q", b"no-nul"),
]
BACK = [
    pgmsg.complete("SELECT 1"), pgmsg.complete("COMMIT"), pgmsg.complete("ROLLBACK"), pgmsg.complete("BEGIN"),
    pgmsg.complete("SAVEPOINT"), pgmsg.complete("DEALLOCATE ALL"), pgmsg.complete("INSERT 0 3"),
    pgmsg.ready("I"), pgmsg.ready("T"), pgmsg.ready("E"), pgmsg.error("22012", "x"), pgmsg.parse_complete(),
    pgmsg.suspended(), pgmsg.empty_query(), pgmsg.param_description(23), pgmsg.copy_in_response(),
    pgmsg.parameter_status("application_name", "z"), pgmsg.backend_key(5),
    # malformed bodies
    wire.message("Z", b""), wire.message("C", b""), wire.message("E", b""), wire.message("t", b"\0"),
    wire.message("K", b"\0"), wire.message("S", b"x"),
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1000)), min_size=1, max_size=60),
       st.sampled_from([CaptureOptions(), CaptureOptions(max_held=1), CaptureOptions(sample_rate=0.5),
                        CaptureOptions(redact="all")]))
def test_random_traffic_never_raises(steps: list[tuple[bool, int]], options: CaptureOptions) -> None:
    h = pgmsg.Harness(options)
    for from_client, pick in steps:
        h.tick(pick % 50)
        if from_client:
            h.client(FRONT[pick % len(FRONT)])
        else:
            h.server(BACK[pick % len(BACK)])
        # outstanding counts exactly the queued requests that ReadyForQuery will answer
        assert h.session.outstanding == sum(1 for e in h.session._queue if e[0] <= 3)
    h.session.close(h.now)
    assert h.session.outstanding == 0
    for ev in h.events:
        assert ev.keys() <= FIELDS.keys()
        assert (ALWAYS_STMT if ev["kind"] == "stmt" else ALWAYS_TXN_END) <= ev.keys()
        assert ev["txn"] in OUTCOMES
        assert all(isinstance(v, str) for v in ev.values())

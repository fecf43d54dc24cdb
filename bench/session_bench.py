"""Cost of statement capture per statement: wire decoding + Session, for pgbench-like traffic.

Feeds byte-exact synthetic traffic (what pgbench -S sends and PostgreSQL answers) through
FrontendDecoder/BackendDecoder and Session, one network read per message batch as the proxy sees
it, and prints microseconds per statement. Scenarios:

  simple     Query 'SELECT abalance FROM pgbench_accounts WHERE aid = N;' (a new literal each time)
  extended   Parse/Bind/Describe/Execute/Sync with one int4 text parameter (pgbench -M extended)
  prepared   Bind/Execute/Sync of a named statement (pgbench -M prepared)
  tpcb       pgbench's TPC-B-like transaction, simple protocol, BEGIN … END (7 statements)

Also the decoders alone (no Session) for reference, and capture off (Session without emit).

    .venv/bin/python bench/session_bench.py [--n 200000]
"""

from __future__ import annotations

import argparse
import gc
import struct
import time

from fasterdata.proxy import wire
from fasterdata.proxy.session import BACKEND_WANTED, FRONTEND_WANTED, Session

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
SELECT_P = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"


def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def row_description() -> bytes:
    field = _cstr("abalance") + struct.pack("!ihihih", 16397, 3, 23, 4, -1, 0)
    return wire.message("T", struct.pack("!h", 1) + field)


def data_row(value: bytes) -> bytes:
    return wire.message("D", struct.pack("!hi", 1, len(value)) + value)


def complete(tag: str) -> bytes:
    return wire.message("C", _cstr(tag))


def ready(status: str = "I") -> bytes:
    return wire.message("Z", status.encode())


def bind(portal: str, stmt: str, values: list[bytes]) -> bytes:
    body = _cstr(portal) + _cstr(stmt) + struct.pack("!h", 0) + struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", len(v)) + v
    body += struct.pack("!h", 0)
    return wire.message("B", body)


def parse(name: str, sql: str, oids: list[int]) -> bytes:
    return wire.message("P", _cstr(name) + _cstr(sql) + struct.pack(f"!h{len(oids)}I", len(oids), *oids))


EXECUTE = wire.message("E", _cstr("") + struct.pack("!i", 0))
SYNC = wire.message("S")
DESCRIBE_P = wire.message("D", b"P" + _cstr(""))


def scenario(kind: str, n: int) -> tuple[list[tuple[bytes, bytes]], int, bytes, bytes]:
    """(per-iteration (client bytes, server bytes), statements per iteration, preamble both ways)."""
    row = row_description()
    answer = data_row(b"0") + complete("SELECT 1") + ready()
    pre_c = b""
    pre_s = b""
    traffic = []
    if kind == "simple":
        traffic = [(wire.message("Q", _cstr(SELECT.format(i % 100000 + 1))), row + answer) for i in range(n)]
        return traffic, 1, pre_c, pre_s
    if kind == "extended":
        for i in range(n):
            c = parse("", SELECT_P, [23]) + bind("", "", [str(i % 100000 + 1).encode()]) + DESCRIBE_P
            c += EXECUTE + SYNC
            traffic.append((c, wire.message("1") + wire.message("2") + row + answer))
        return traffic, 1, pre_c, pre_s
    if kind == "prepared":
        pre_c = parse("P0_1", SELECT_P, [23]) + SYNC
        pre_s = wire.message("1") + ready()
        for i in range(n):
            c = bind("", "P0_1", [str(i % 100000 + 1).encode()]) + EXECUTE + SYNC
            traffic.append((c, wire.message("2") + data_row(b"0") + complete("SELECT 1") + ready()))
        return traffic, 1, pre_c, pre_s
    if kind == "tpcb":
        for i in range(n // 7 + 1):
            aid, bid, tid, delta = i % 100000 + 1, i % 10 + 1, i % 100 + 1, i % 5000 - 2500
            stmts = [
                ("BEGIN;", complete("BEGIN") + ready("T")),
                (f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};",
                 complete("UPDATE 1") + ready("T")),
                (f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};", row + data_row(b"0")
                 + complete("SELECT 1") + ready("T")),
                (f"UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};",
                 complete("UPDATE 1") + ready("T")),
                (f"UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid};",
                 complete("UPDATE 1") + ready("T")),
                ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
                 f"VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP);", complete("INSERT 0 1") + ready("T")),
                ("END;", complete("COMMIT") + ready("I")),
            ]
            traffic.extend((wire.message("Q", _cstr(sql)), answer_) for sql, answer_ in stmts)
        return traffic, 1, pre_c, pre_s
    raise ValueError(kind)


def login(session: Session | None, fe: wire.FrontendDecoder, be: wire.BackendDecoder) -> None:
    packet = wire.startup_message({"user": "bench", "database": "bench"})
    fe.feed(packet)
    server = (wire.message("R", struct.pack("!i", 0)) + wire.message("S", b"application_name\0pgbench\0")
              + wire.message("K", struct.pack("!ii", 4242, 1)) + ready())
    msgs = be.feed(server)
    if session is not None:
        session.from_server(msgs, 0)


def run(kind: str, n: int, mode: str) -> float:
    """µs per statement. mode: 'capture' (Session with emit), 'nocapture' (no emit), 'decode' (decoders only)."""
    traffic, per, pre_c, pre_s = scenario(kind, n)
    fe = wire.FrontendDecoder(FRONTEND_WANTED)
    be = wire.BackendDecoder(BACKEND_WANTED)
    out: list[dict[str, str]] = []
    session = None
    if mode != "decode":
        session = Session("b-1", "127.0.0.1:5555", {"user": "bench", "database": "bench"},
                          emit=out.append if mode == "capture" else None)
    login(session, fe, be)
    now = time.time_ns() // 1000
    fe_feed, be_feed = fe.feed, be.feed
    if session is not None:
        if pre_c:
            session.from_client(fe_feed(pre_c), now)
            session.from_server(be_feed(pre_s), now)
        from_client, from_server = session.from_client, session.from_server
        gc.collect()
        t0 = time.perf_counter()
        for c, s in traffic:
            from_client(fe_feed(c), now)
            now += 50
            from_server(be_feed(s), now)
            if len(out) > 10000:
                out.clear()
        elapsed = time.perf_counter() - t0
    else:
        if pre_c:
            fe_feed(pre_c)
            be_feed(pre_s)
        gc.collect()
        t0 = time.perf_counter()
        for c, s in traffic:
            fe_feed(c)
            be_feed(s)
        elapsed = time.perf_counter() - t0
    if mode == "capture":
        assert session is not None and session.idle
    return elapsed / (len(traffic) * per) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="statements per scenario")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = ap.parse_args()
    modes: list[tuple[str, str]] = [("decode", "decoders only"), ("nocapture", "Session, no emit"),
                                    ("capture", "Session + events")]
    print(f"µs per statement (best of {args.repeat}, {args.n} statements)")
    print(f"{'scenario':<10}" + "".join(f"{label:>20}" for _, label in modes))
    for kind in ("simple", "extended", "prepared", "tpcb"):
        cells = []
        for mode, _ in modes:
            cells.append(min(run(kind, args.n, mode) for _ in range(args.repeat)))
        print(f"{kind:<10}" + "".join(f"{c:>20.2f}" for c in cells))


if __name__ == "__main__":
    main()

"""`gl serve`'s Arrow Flight server hands cached days to remote clients by date."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pyarrow as pa
import pyarrow.flight as fl
import pytest

from fasterdata.analyzers.glcache.cache import GLCache
from fasterdata.analyzers.glcache.flight import GLFlightServer, action, fetch_day
from tests.glcache.kit import DAY, OTHER_DAY, arrow_rows, pg_rows
from tests.kit.processes import GLServeProcess
from tests.kit.services import REDIS_URL

Make = Callable[..., GLCache]


def test_flight_serves_days(ledger_db: str, make_cache: Make) -> None:
    cache = make_cache(ledger_db)
    server = GLFlightServer(cache, "grpc://127.0.0.1:0")
    threading.Thread(target=server.serve, daemon=True).start()
    location = f"grpc://127.0.0.1:{server.port}"
    try:
        table = fetch_day(location, DAY)
        assert arrow_rows(table) == pg_rows(ledger_db, DAY)
        assert table.schema.field("amount").type == pa.decimal128(18, 2)
        with fl.connect(location) as client:
            info = client.get_flight_info(fl.FlightDescriptor.for_path("gl_entries", OTHER_DAY))
            assert info.total_records == len(pg_rows(ledger_db, OTHER_DAY))
            cache.flush()  # list_flights names the days in Redis; storing them runs behind the reads
            days = {f.descriptor.path[-1].decode() for f in client.list_flights()}
            assert {DAY, OTHER_DAY} <= days
            with pytest.raises(fl.FlightServerError):
                client.do_get(fl.Ticket(b"yesterday")).read_all()
        journal = pa.ipc.open_stream(action(location, "journal", DAY)[0]).read_all()
        assert journal.num_rows > 0
        stats = json.loads(action(location, "stats")[0])
        assert DAY in stats["redis"]
    finally:
        server.shutdown()


def test_gl_serve_process(ledger_db: str, prefix: str, tmp_path) -> None:
    """`gl serve` as a process: Flight answers, the follower runs, SIGTERM ends it with status 0."""
    gl = GLServeProcess(tmp_path, "--dsn", ledger_db, "--redis", REDIS_URL, "--prefix", prefix, "--metrics", "")
    try:
        assert arrow_rows(fetch_day(f"grpc://127.0.0.1:{gl.flight_port}", OTHER_DAY)) == pg_rows(ledger_db, OTHER_DAY)
    finally:
        assert gl.stop() == 0, gl.log()

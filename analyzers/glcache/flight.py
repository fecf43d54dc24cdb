"""Arrow Flight server handing cached days to remote clients: ticket = the day (YYYY-MM-DD).

- ``do_get(Ticket(b"2024-03-15"))``: the day's table (memory → Redis → PostgreSQL, like get_day)
- ``get_flight_info(FlightDescriptor.for_path("2024-03-15"))``: its schema and row count
- ``list_flights()``: the days cached in Redis
- actions ``warm`` / ``invalidate`` (body: the day), ``journal`` / ``trial_balance`` (body: the day; result:
  an IPC stream), ``stats`` (JSON)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.flight as fl

from .cache import GLCache, day_str


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


class GLFlightServer(fl.FlightServerBase):
    """Serves one GLCache over Flight (grpc://HOST:PORT)."""

    def __init__(self, cache: GLCache, location: str, **kwargs: Any):
        super().__init__(location, **kwargs)
        self.cache = cache
        self.location = location

    def _day(self, raw: bytes | str) -> str:
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            return day_str(text)
        except ValueError:
            raise fl.FlightServerError(f"not a day (YYYY-MM-DD): {text!r}") from None

    def _descriptor_day(self, descriptor: fl.FlightDescriptor) -> str:
        if descriptor.descriptor_type == fl.DescriptorType.PATH:
            return self._day(descriptor.path[-1])
        return self._day(descriptor.command)

    def do_get(self, context: fl.ServerCallContext, ticket: fl.Ticket) -> fl.RecordBatchStream:
        return fl.RecordBatchStream(self.cache.get_day(self._day(ticket.ticket)))

    def get_flight_info(self, context: fl.ServerCallContext,
                        descriptor: fl.FlightDescriptor) -> fl.FlightInfo:
        day = self._descriptor_day(descriptor)
        table = self.cache.get_day(day)
        endpoint = fl.FlightEndpoint(day.encode(), [self.location])
        return fl.FlightInfo(table.schema, descriptor, [endpoint], table.num_rows,
                             table.get_total_buffer_size())

    def list_flights(self, context: fl.ServerCallContext, criteria: bytes) -> Iterator[fl.FlightInfo]:
        for day in self.cache.store.days():
            meta = self.cache.store.meta(day) or {}
            schema = pa.schema([])
            descriptor = fl.FlightDescriptor.for_path(self.cache.settings.table, day)
            endpoint = fl.FlightEndpoint(day.encode(), [self.location])
            yield fl.FlightInfo(schema, descriptor, [endpoint], int(meta.get("rows", -1)),
                                int(meta.get("arrow_bytes", -1)))

    def list_actions(self, context: fl.ServerCallContext) -> list[tuple[str, str]]:
        return [("warm", "load a day now"), ("invalidate", "drop a day"), ("journal", "totals per pair"),
                ("trial_balance", "per-account balance"), ("stats", "cache state as JSON")]

    def do_action(self, context: fl.ServerCallContext, action: fl.Action) -> Iterator[bytes]:
        body = action.body.to_pybytes() if action.body is not None else b""
        kind = action.type
        if kind == "warm":
            yield json.dumps(self.cache.warm(self._day(body))).encode()
        elif kind == "invalidate":
            yield json.dumps(self.cache.invalidate(self._day(body))).encode()
        elif kind == "journal":
            yield _ipc(self.cache.journal(self._day(body)))
        elif kind == "trial_balance":
            yield _ipc(self.cache.trial_balance(self._day(body)))
        elif kind == "stats":
            yield json.dumps(self.cache.describe_cache(), default=str).encode()
        else:
            raise fl.FlightServerError(f"unknown action {kind!r}")


def fetch_day(location: str, day: str) -> pa.Table:
    """Client side: one day from a `gl serve` Flight endpoint."""
    with fl.connect(location) as client:
        return client.do_get(fl.Ticket(day_str(day).encode())).read_all()


def action(location: str, kind: str, body: str = "") -> list[bytes]:
    """Client side: run an action and collect its results."""
    with fl.connect(location) as client:
        return [r.body.to_pybytes() for r in client.do_action(fl.Action(kind, body.encode()))]

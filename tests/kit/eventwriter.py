"""Statement events written to a stream the way the proxy writes them, for analyzers to read."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import redis

from fasterdata.analyzers.keys import shard_keys
from fasterdata.proxy.events import BUNDLE_FIELD, BUNDLE_MAX, PACKED_FIELD, bundle, pack


class Events:
    """Writes statement events (schema v1) the way the proxy does: bundled by default (inside `with`, up to
    BUNDLE_MAX events an entry, as a batch of the proxy's sink; outside, one an entry), one an entry with
    entry="packed" or "flat"; with `shards` ≥ 2 to `<prefix>:statements:{i}`, the session id picking the
    stream (stable, as the proxy keeps a session)."""

    def __init__(self, client: redis.Redis, prefix: str, shards: int = 1, entry: str = "bundled") -> None:
        self.r = client
        self.entry = entry
        self.held: dict[str, list[dict[str, str]]] = {}  # stream → events of its next bundle
        self.streams = [k.statements for k in shard_keys(prefix, shards)]
        self.stream = self.streams[0]
        self.ts = int(time.time() * 1e6)
        self.pipe = None

    def stmt(self, sql: str, params: list[Any] | None = None, *, proto: str | None = None, tag: str = "",
             rows: int | None = None, txn: str = "autocommit", sid: str = "s1", txid: int = 1,
             app: str = "shop", db: str = "shop", user: str = "app", err: str = "", dur_us: int = 150,
             ts: int | None = None, part: str = "", n: int | None = None) -> None:
        if proto is None:
            proto = "extended" if params is not None else "simple"
        if ts is None:
            self.ts += 10
            ts = self.ts
        f = {"v": "1", "kind": "stmt", "ts": str(ts), "dur_us": str(dur_us), "sid": sid,
             "client": "127.0.0.1:50000", "user": user, "db": db, "app": app, "pid": "4242", "proto": proto,
             "sql": sql, "txid": str(txid), "txn": txn}
        if params is not None:
            f["params"] = json.dumps(params)
        if tag:
            f["tag"] = tag
        if part:
            f["part"] = part
        if n is not None:
            f["n"] = str(n)
        if rows is not None:
            f["rows"] = str(rows)
        if err:
            f["err"] = err
            f["errmsg"] = "failed"
            f.pop("tag", None)
        self._add(f, sid)

    def txn_end(self, sid: str, txid: int, outcome: str, stmts: int = 1, undone: str = "") -> None:
        self.ts += 10
        f = {"v": "1", "kind": "txn_end", "ts": str(self.ts), "sid": sid, "client": "127.0.0.1:50000",
             "user": "app", "db": "shop", "txid": str(txid), "txn": outcome, "stmts": str(stmts)}
        if undone:
            f["undone"] = undone
        self._add(f, sid)

    def _add(self, fields: dict[str, str], sid: str) -> None:
        stream = self.streams[int(hashlib.sha1(sid.encode()).hexdigest(), 16) % len(self.streams)]
        if self.entry == "bundled":
            held = self.held.setdefault(stream, [])
            held.append(fields)
            if self.pipe is None or len(held) == BUNDLE_MAX:
                self._bundle(stream)
            return
        packed = pack(fields) if self.entry == "packed" else None
        (self.pipe or self.r).xadd(stream, {PACKED_FIELD: packed} if packed is not None else fields)

    def _bundle(self, stream: str) -> None:
        held = self.held.pop(stream, [])
        if held:
            (self.pipe or self.r).xadd(stream, {BUNDLE_FIELD: bundle(held)})

    def __enter__(self) -> Events:
        self.pipe = self.r.pipeline(transaction=False)
        return self

    def __exit__(self, *exc: object) -> None:
        for stream in list(self.held):
            self._bundle(stream)
        pipe, self.pipe = self.pipe, None
        pipe.execute()

"""What the console shows: the `Reads` protocol (one method a view, JSON-able dicts out) and `ModelReads`,
which answers it from the analyzers' read model (analyzers/readmodel.py).

The read model does the reading (single-key commands and pipelines, merged over shards, so a Redis
Cluster works too); this adapter puts each view's pieces together and adds the little the page needs
beside them: the filters' choices, every rule's days, the ledger tables found in Redis, and each
proxy's events sent and rate between two reads.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from .proxies import ProxyMetrics

SORTS = ("time", "calls", "mean", "p99", "errors", "rows")


class Reads(Protocol):
    """The console's data, one method a view (tests and the bench call them too)."""

    def overview(self) -> dict[str, Any]: ...

    def top(self, sort: str = "time", db: str | None = None, app: str | None = None, user: str | None = None,
            fold: bool = True, limit: int = 50) -> dict[str, Any]: ...

    def fingerprint(self, fp: str) -> dict[str, Any] | None: ...

    def business(self, days: int = 31) -> dict[str, Any]: ...

    def alerts(self, limit: int = 50, kind: str | None = None) -> dict[str, Any]: ...

    def pipeline(self) -> dict[str, Any]: ...

    def ledger(self) -> dict[str, Any]: ...


def _glob(text: str) -> str:
    """`text` matched literally by SCAN MATCH (a prefix is free text)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class ModelReads:
    """`Reads` from analyzers/readmodel.py, for one deployment prefix over `shards` statement streams."""

    def __init__(self, client: Any, prefix: str, shards: int = 1, proxies: ProxyMetrics | None = None) -> None:
        from fasterdata.analyzers import readmodel

        self.model = readmodel
        self.r = client
        self.prefix = prefix
        self.ks = readmodel.keys_for(prefix, shards)
        self.proxy_metrics = proxies
        self._lock = threading.Lock()
        self._sent: dict[str, tuple[float, int]] = {}  # sink marker → (when read, events sent) for a rate

    def overview(self) -> dict[str, Any]:
        return self.model.overview(self.r, self.ks)

    def top(self, sort: str = "time", db: str | None = None, app: str | None = None, user: str | None = None,
            fold: bool = True, limit: int = 50) -> dict[str, Any]:
        top = self.model.top_statements(self.r, self.ks, sort, limit, db=db, app=app, user=user, fold=fold)
        return {**top, "filters": {"db": db, "app": app, "user": user}, "fold": fold,
                "choices": self.model.filters(self.r, self.ks)}

    def fingerprint(self, fp: str) -> dict[str, Any] | None:
        return self.model.statement(self.r, self.ks, fp) if fp else None

    def business(self, days: int = 31) -> dict[str, Any]:
        today = self.model.business(self.r, self.ks)
        for rule in today["rules"]:
            rule["days"] = self.model.business_days(self.r, self.ks, rule["rule"], days)["days"]
        return today

    def alerts(self, limit: int = 50, kind: str | None = None) -> dict[str, Any]:
        return {"alerts": self.model.alerts(self.r, self.ks, limit, kind),
                "counts": self.model.alert_counts(self.r, self.ks), "kinds": list(self.model.ALERT_KINDS)}

    def pipeline(self) -> dict[str, Any]:
        return {"streams": self.model.streams(self.r, self.ks), "workers": self.model.workers(self.r, self.ks),
                "sinks": self._sinks(), "proxies": self.proxy_metrics.read() if self.proxy_metrics else []}

    def _sinks(self) -> list[dict[str, Any]]:
        """Each proxy's sink instance with the events it has sent (its marker's sequence) and the rate since
        the console last read it; dropped and spooled counts live on the proxy's own /metrics."""
        sinks = self.model.sinks(self.r, self.prefix)
        pipe = self.r.pipeline(transaction=False)  # GETs, not an MGET: on a cluster the markers' slots differ
        for sink in sinks:
            pipe.get(sink["key"])
        sent = pipe.execute() if sinks else []
        now = time.monotonic()
        out = []
        with self._lock:
            for sink, raw in zip(sinks, sent, strict=True):
                events = int(raw or 0)
                before = self._sent.get(sink["key"])
                self._sent[sink["key"]] = (now, events)
                rate = (events - before[1]) / (now - before[0]) if before and now > before[0] else None
                stream = sink["key"].split(":sink:", 1)[1].rsplit(":", 1)[0]
                out.append({**sink, "stream": stream, "events": events,
                            "rate": None if rate is None else round(rate, 1)})
        return out

    def ledger(self) -> dict[str, Any]:
        tables = set()
        for key in self.r.scan_iter(match=f"{_glob(self.prefix)}:gl:{{*}}:days", count=1000):
            name = key.decode() if isinstance(key, bytes) else key
            tables.add(name[len(self.prefix) + len(":gl:{"):-len("}:days")])
        return {"tables": [{"table": t, "days": self.model.ledger_days(self.r, self.prefix, t)}
                           for t in sorted(tables)]}

"""What the console shows: the `Reads` protocol (one method a view, JSON-able dicts out) and `ModelReads`,
which answers it from the analyzers' read model (analyzers/readmodel.py).

The read model does the reading (single-key commands and pipelines, merged over shards, so a Redis
Cluster works too); this adapter puts each view's pieces together and adds the little the page needs
beside them: the filters' choices, every rule's days, the ledger tables found in Redis, and each
proxy's events sent and rate between two reads. What changes slowly and costs a read of every
fingerprint or a SCAN (the filters' choices, the sink markers, the ledger tables) is kept a while.

`FreshReads` serves any `Reads` through `fresh.Fresh`: what the console's routes call.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from fasterdata.analyzers import readmodel
from fasterdata.analyzers.readmodel import SORTS

from .fresh import Fresh
from .proxies import ProxyMetrics

log = logging.getLogger("fasterdata.console")
__all__ = ["SORTS", "FreshReads", "ModelReads", "Reads"]


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

    def __init__(self, client: Any, prefix: str, shards: int = 1, proxies: ProxyMetrics | None = None,
                 ledger_tables: tuple[str, ...] = ("gl_entries",)) -> None:
        self.model = readmodel
        self.r = client
        self.prefix = prefix
        self.ks = readmodel.keys_for(prefix, shards)
        self.proxy_metrics = proxies
        self.ledger_tables = ledger_tables
        self._lock = threading.Lock()
        self._sent: dict[str, tuple[float, int]] = {}  # sink marker → (when read, events sent) for a rate
        self._slow = Fresh(max_age=15.0, size=16, workers=1)

    def overview(self) -> dict[str, Any]:
        return self.model.overview(self.r, self.ks)

    def top(self, sort: str = "time", db: str | None = None, app: str | None = None, user: str | None = None,
            fold: bool = True, limit: int = 50) -> dict[str, Any]:
        top = self.model.top_statements(self.r, self.ks, sort, limit, db=db, app=app, user=user, fold=fold)
        return {**top, "filters": {"db": db, "app": app, "user": user}, "fold": fold,
                "choices": self._slow.get("filters", lambda: self.model.filters(self.r, self.ks),
                                          default={"db": [], "app": [], "user": []})}

    def fingerprint(self, fp: str) -> dict[str, Any] | None:
        """The read model's detail, and the text of every fingerprint its transaction shapes name."""
        detail = self.model.statement(self.r, self.ks, fp) if fp else None
        if detail is not None:
            named = {x for shape in detail["shapes"] for x in shape["fps"]}
            detail["texts"] = {x: text for x, (_, text) in self.model.describe(self.r, self.ks, named).items()}
        return detail

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
        sinks = self._slow.get("sinks", lambda: self.model.sinks(self.r, self.prefix), default=[])
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

    def _ledger_tables(self) -> list[str]:
        """The configured tables and any other whose days are indexed under the prefix (a SCAN)."""
        tables = set(self.ledger_tables)
        for key in self.r.scan_iter(match=f"{_glob(self.prefix)}:gl:{{*}}:days", count=5000):
            name = key.decode() if isinstance(key, bytes) else key
            tables.add(name[len(self.prefix) + len(":gl:{"):-len("}:days")])
        return sorted(tables)

    def ledger(self) -> dict[str, Any]:
        tables = self._slow.get("ledger tables", self._ledger_tables, default=sorted(self.ledger_tables))
        found = [{"table": t, "days": self.model.ledger_days(self.r, self.prefix, t)} for t in tables]
        return {"tables": [t for t in found if t["days"]]}


class FreshReads:
    """Any `Reads`, each answer kept `max_age` seconds and renewed in the background (fresh.py)."""

    def __init__(self, inner: Reads, max_age: float = 1.0) -> None:
        self.inner = inner
        self.fresh = Fresh(max_age)

    def warm(self) -> threading.Thread:
        """Read the views as the page first asks for them (each sort of the top list), on a thread, so
        nobody waits for them."""
        def read_all() -> None:
            try:
                for sort in SORTS:
                    self.top(sort)
                self.business()
                self.alerts(100)
                self.pipeline()
                self.ledger()
                self.overview()
            except Exception:
                log.exception("reading the console's views ahead failed; they are read when asked")

        thread = threading.Thread(target=read_all, name="console-warm", daemon=True)
        thread.start()
        return thread

    def overview(self) -> dict[str, Any]:
        return self.fresh.get(("overview",), self.inner.overview)

    def top(self, sort: str = "time", db: str | None = None, app: str | None = None, user: str | None = None,
            fold: bool = True, limit: int = 50) -> dict[str, Any]:
        key = ("top", sort, db, app, user, fold, limit)
        return self.fresh.get(key, lambda: self.inner.top(sort, db, app, user, fold, limit))

    def fingerprint(self, fp: str) -> dict[str, Any] | None:
        return self.fresh.get(("fingerprint", fp), lambda: self.inner.fingerprint(fp))

    def business(self, days: int = 31) -> dict[str, Any]:
        return self.fresh.get(("business", days), lambda: self.inner.business(days))

    def alerts(self, limit: int = 50, kind: str | None = None) -> dict[str, Any]:
        return self.fresh.get(("alerts", limit, kind), lambda: self.inner.alerts(limit, kind))

    def pipeline(self) -> dict[str, Any]:
        return self.fresh.get(("pipeline",), self.inner.pipeline)

    def ledger(self) -> dict[str, Any]:
        return self.fresh.get(("ledger",), self.inner.ledger)

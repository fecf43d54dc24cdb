"""The proxies' own counts, read from their /metrics: what Redis cannot tell (events dropped or spooled
while Redis was away happened, by definition, without it).

The console is given the proxies' metrics URLs (--proxy-metrics, repeatable) and reads the sink's
counters from each, with the same basic-auth credentials as its own endpoint; a proxy that does not
answer is shown with the reason.
"""

from __future__ import annotations

import base64
import threading
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

COUNTERS = {"fasterdata_sink_sent": "sent", "fasterdata_sink_spooled": "spooled", "fasterdata_sink_dropped": "dropped",
            "fasterdata_sink_trimmed_unread": "trimmed_unread", "fasterdata_sink_spool_events": "spool_events"}


def sink_counts(text: str) -> dict[str, float]:
    """The sink's counters in one /metrics exposition (each family summed over its label sets)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        name = COUNTERS.get(family.name)
        if name is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            out[name] = out.get(name, 0.0) + sample.value
    return out


class ProxyMetrics:
    """Reads each proxy's /metrics; `read()` gives one row a proxy with its counts and its send rate."""

    def __init__(self, urls: list[str], user: str | None = None, password: str | None = None,
                 timeout: float = 2.0) -> None:
        self.urls = urls
        self.timeout = timeout
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() if user and password else None
        self._last: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _fetch(self, url: str) -> str:
        request = urllib.request.Request(url, headers={"Authorization": self._auth} if self._auth else {})
        with urllib.request.urlopen(request, timeout=self.timeout) as resp:
            return resp.read().decode("utf-8", "replace")

    def read(self) -> list[dict[str, Any]]:
        rows = []
        for url in self.urls:
            try:
                counts = sink_counts(self._fetch(url))
            except (OSError, ValueError) as exc:
                rows.append({"url": url, "error": str(getattr(exc, "reason", None) or exc)})
                continue
            now = time.monotonic()
            sent = counts.get("sent", 0.0)
            with self._lock:
                before = self._last.get(url)
                self._last[url] = (now, sent)
            rate = (sent - before[1]) / (now - before[0]) if before and now > before[0] else None
            rows.append({"url": url, **{k: int(v) for k, v in counts.items()},
                         "rate": None if rate is None else round(rate, 1)})
        return rows

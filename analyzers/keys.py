"""Every Redis key and stream the analyzers read or write, in one place (top reads them too)."""

from __future__ import annotations

GROUP = "analyzers"


class Keys:
    """Key names under one deployment prefix."""

    __slots__ = ("p",)

    def __init__(self, prefix: str) -> None:
        self.p = prefix

    # streams
    @property
    def statements(self) -> str:
        return f"{self.p}:statements"

    @property
    def events(self) -> str:
        return f"{self.p}:events"

    @property
    def alerts(self) -> str:
        return f"{self.p}:alerts"

    # performance summary
    def stats_fp(self, fp: str) -> str:
        """Hash: text, op, tables, first_seen of one fingerprint."""
        return f"{self.p}:stats:fp:{fp}"

    def stats_q(self, member: str) -> str:
        """Hash: calls, total_us, rows, errors, err:<SQLSTATE>, max_us, last_ts of fp|db|app."""
        return f"{self.p}:stats:q:{member}"

    def stats_top(self, by: str) -> str:
        """Sorted set of fp|db|app members by time (µs), calls or errors."""
        return f"{self.p}:stats:top:{by}"

    @property
    def stats_totals(self) -> str:
        return f"{self.p}:stats:totals"

    # business aggregates
    def biz(self, rule: str, day: str) -> str:
        return f"{self.p}:biz:{rule}:{day}"

    def biz_set(self, rule: str, day: str, labels: str) -> str:
        return f"{self.p}:biz:{rule}:{day}:set:{labels}"

    def biz_rows_only(self, rule: str, day: str) -> str:
        return f"{self.p}:biz:{rule}:{day}:rows_only"

    def biz_days(self, rule: str) -> str:
        return f"{self.p}:biz:{rule}:days"

    @property
    def biz_rules(self) -> str:
        """Hash rule → JSON description (aggregate, scale, labels), for readers such as top."""
        return f"{self.p}:biz:rules"

    # open transactions
    def txn_outcome(self, sid: str, txid: str) -> str:
        return f"{self.p}:txn:{sid}:{txid}:outcome"

    def txn_parked(self, sid: str, txid: str) -> str:
        return f"{self.p}:txn:{sid}:{txid}:parked"

    # security
    @property
    def alert_counts(self) -> str:
        return f"{self.p}:alerts:counts"

    def alert_dedup(self, rule: str, fp: str, app: str) -> str:
        return f"{self.p}:alerts:dedup:{rule}:{fp}:{app}"

    def seen(self, app: str) -> str:
        """Set of fingerprints an application has sent."""
        return f"{self.p}:seen:{app}"

    @property
    def seen_since(self) -> str:
        """Hash app → epoch seconds it was first seen."""
        return f"{self.p}:seen:apps"

    # anomalies
    def anomaly_window(self, window: int) -> str:
        return f"{self.p}:anomaly:w:{window}"

    @property
    def anomaly_meta(self) -> str:
        return f"{self.p}:anomaly:meta"

    @property
    def anomaly_state(self) -> str:
        return f"{self.p}:anomaly:state"

    @property
    def anomaly_lock(self) -> str:
        return f"{self.p}:anomaly:lock"

    # workers
    @property
    def workers(self) -> str:
        """Hash consumer → JSON heartbeat (processed, rate, lag)."""
        return f"{self.p}:workers"

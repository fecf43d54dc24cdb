"""Settings of `fasterdata analyze` (and `fasterdata top`): the `analyze:` section of the config file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from fasterdata.config.common import Served, hostport

SHIPPED_RULES = str(Path(__file__).resolve().parent / "rules.yaml")


class AnalyzerSettings(Served):
    """`fasterdata analyze`."""

    metrics: str = Field("127.0.0.1:9931", description="Address of /metrics, /healthz and /readyz ('' disables)")
    rules: str = Field(SHIPPED_RULES, description="Rules file: business rules, security policy, anomalies")
    consumer: str | None = Field(None, description="Consumer name in the group (default: <host>-<pid>)")
    group: str = Field("analyzers", description="Consumer group on <prefix>:statements")
    batch: int = Field(1000, ge=1, le=10000, description="Statements read (and committed atomically) per batch, "
                       "about: a bundled entry holds several, so the worker reads as many entries as make this "
                       "many statements. Larger batches cost less per statement, and each Redis call of the "
                       "batch takes longer")
    block: float = Field(1.0, gt=0, le=60, description="Seconds one read waits for new entries")
    claim_idle: float = Field(30.0, gt=0, description="Seconds an entry stays pending before another "
                              "worker reclaims it (XAUTOCLAIM) from a dead one; the lowest among live workers "
                              "is the group's claim floor, and batches younger than half of it commit without "
                              "an ownership check")
    start_id: str = Field("0", description="Where a newly created group starts: '0' (whole stream) or '$' (new only)")
    events_maxlen: int = Field(100000, ge=100, description="Approximate length cap of <prefix>:events")
    alerts_maxlen: int = Field(100000, ge=100, description="Approximate length cap of <prefix>:alerts")
    txn_ttl: int = Field(86400, ge=60, description="Seconds parked work of an open transaction waits "
                         "for its txn_end marker")
    top_k: int = Field(50, ge=1, le=10000, description="Fingerprints with their own Prometheus series; "
                       "the rest are summed as fingerprint=\"other\"")
    top_apps: int = Field(20, ge=1, le=10000, description="Applications with their own Prometheus series; "
                          "the rest are summed as app=\"other\" (some set application_name per process)")
    top_users: int = Field(20, ge=1, le=10000, description="Users (roles) with their own Prometheus series; "
                           "the rest are summed as user=\"other\"")
    stats_max_users: int = Field(100, ge=1, le=100000, description="Database × application × user rows a "
                                 "fingerprint keeps in Redis (stats:u), per worker; the rest are summed as "
                                 "application and user \"other\"")
    samples: int = Field(5, ge=0, le=100, description="Per fingerprint, the slowest and the most recent this many "
                         "executions are kept with their SQL and (redacted) parameters (0: none)")
    samples_every: float = Field(1.0, ge=0, le=3600, description="Seconds between two writes of a fingerprint's "
                                 "most recent samples by one worker (the slowest are written as they come)")
    series_minutes: int = Field(1440, ge=0, le=100000, description="Per fingerprint, calls, time and errors a "
                                "minute are kept for this many minutes (a ring; 0: none)")
    txn_shapes: bool = Field(True, description="Fold each transaction's fingerprints into a shape, per "
                             "application: counts, latency, rollback rate, statements per transaction")
    txn_shapes_max: int = Field(2000, ge=10, description="Transaction shapes kept in each shard, least recently "
                                "seen evicted first")
    n_plus_one: int = Field(20, ge=0, description="A fingerprint executed this many times with different "
                            "parameters in one transaction (or one session within n_plus_one_window) is an N+1 "
                            "finding (0: off)")
    n_plus_one_window: float = Field(0.0, ge=0, le=3600, description="Seconds within which one session's "
                                     "statements outside a transaction count as one N+1 burst (0: transactions "
                                     "only; an application's pooled connection runs its statements many times a "
                                     "second in its normal course)")
    new_categories: bool = Field(True, description="Alert when a business rule's label takes a value never "
                                 "seen before (after the rule's first new_category_learn_seconds)")
    new_category_learn_seconds: float = Field(600.0, ge=0, description="Seconds a rule's label values are only "
                                              "learnt, from its first value on, before a new one alerts")
    explain_dsn: str | None = Field(None, description="PostgreSQL DSN of a side connection (meant for a read-only "
                                    "role) that EXPLAINs slow SELECTs' samples with their parameters; unset: no plans")
    explain_min_ms: float = Field(100.0, ge=0, description="A fingerprint is explained once one of its samples "
                                  "took this long (milliseconds)")
    explain_per_minute: int = Field(6, ge=1, le=600, description="EXPLAINs the side connection runs a minute "
                                    "at most")
    explain_timeout_ms: int = Field(2000, ge=10, description="statement_timeout of the side connection")
    explain_regress: float = Field(2.0, ge=1.0, description="A fingerprint is explained again when its slowest "
                                   "recent sample is this many times slower than the one explained")
    explain_analyze: bool = Field(False, description="EXPLAIN ANALYZE (runs the SELECT, in a read-only "
                                  "transaction); off: plans are estimated, nothing is executed")
    cache_size: int = Field(20000, ge=100, description="Distinct statement texts kept normalised in memory")
    business_retention_days: int = Field(400, ge=0, description="Days a business aggregate is kept after its "
                                         "day ends (per-day keys expire then, the day leaves the index; 0: "
                                         "forever)")
    stats_max_fingerprints: int = Field(5000, ge=0, description="Fingerprints kept in each shard's performance "
                                        "summary; the least recently seen beyond it are evicted with their "
                                        "stats (as pg_stat_statements.max; 0: no cap)")
    stats_max_entries: int = Field(20000, ge=0, description="Fingerprint × database × application entries kept "
                                   "in each shard's performance summary, least recently seen evicted first "
                                   "(application names that change per process would grow it; 0: no cap)")
    stats_retention_days: int = Field(0, ge=0, description="Days a fingerprint unseen stays in the performance "
                                      "summary (0: until the cap evicts it)")
    sweep_seconds: float = Field(60.0, gt=0, le=86400, description="Seconds between a worker's sweeps that "
                                 "apply the cap and retentions (bounded work each; several workers may sweep)")

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: str) -> str:
        return value and hostport(value, "127.0.0.1:9931")

    @field_validator("start_id")
    @classmethod
    def _start(cls, value: str) -> str:
        if value != "$" and not value.replace("-", "").isdigit():
            raise ValueError(f"must be '0', '$' or a stream id, not {value!r}")
        return value

    @field_validator("consumer")
    @classmethod
    def _consumer(cls, value: Any) -> Any:
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise ValueError("must be a non-empty name without spaces")
        return value

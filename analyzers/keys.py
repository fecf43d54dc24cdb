"""Every Redis key and stream the analyzers read or write, in one place (top reads them too).

The statement streams and the keys beside them are the proxy's contract with its readers: their names come
from `fasterdata.proxy.streamkeys`, the analyzers' own keys are named here.

Sharding (`stream_shards` ≥ 2): everything a batch commit of shard i touches carries the hash tag
`{i}` right after its fixed family name (`<prefix>:biz:{i}:<rule>:<day>`, `<prefix>:statements:{i}`),
before any user-controlled text, so one commit maps to one Redis Cluster slot. One shard keeps the
plain names (`tag` is empty). Keys written outside commits (heartbeats, rule descriptions, the
anomaly lock, the claim floor) are never tagged: each is written by a single-key command. Commits read
the claim floor only on a single Redis, where slots do not apply.
"""

from __future__ import annotations

from fasterdata.proxy.streamkeys import held_key, stream_name, trimmed_key

GROUP = "analyzers"


class Keys:
    """Key names under one deployment prefix, for one shard (`shard=None`: unsharded names)."""

    __slots__ = ("p", "shard", "t")

    def __init__(self, prefix: str, shard: int | None = None) -> None:
        self.p = prefix
        self.shard = shard
        self.t = "" if shard is None else f":{{{shard}}}"

    # streams
    @property
    def statements(self) -> str:
        return stream_name(self.p, self.shard)

    @property
    def trimmed(self) -> str:
        """Hash group → statements the stream cap removed before that group read them (the proxy's sink
        script counts them as it trims)."""
        return trimmed_key(self.statements)

    @property
    def held(self) -> str:
        """Hash: `statements` the stream holds and the `entries` they were counted in (the sink script keeps
        it to cap the stream by statements: a bundled entry holds several)."""
        return held_key(self.statements)

    @property
    def events(self) -> str:
        return f"{self.p}:events{self.t}"

    @property
    def alerts(self) -> str:
        return f"{self.p}:alerts{self.t}"

    # performance summary
    def stats_fp(self, fp: str) -> str:
        """Hash: text, op, tables, first_seen of one fingerprint."""
        return f"{self.p}:stats:fp{self.t}:{fp}"

    def stats_q(self, member: str) -> str:
        """Hash: calls, total_us, rows, errors, err:<SQLSTATE>, max_us, last_ts of fp|db|app."""
        return f"{self.p}:stats:q{self.t}:{member}"

    def stats_top(self, by: str) -> str:
        """Sorted set of fp|db|app members by time (µs), calls or errors."""
        return f"{self.p}:stats:top{self.t}:{by}"

    @property
    def stats_totals(self) -> str:
        return f"{self.p}:stats:totals{self.t}"

    @property
    def stats_last(self) -> str:
        """Sorted set fp → epoch seconds of its newest statement: who the cap evicts first (retention.py)."""
        return f"{self.p}:stats:last{self.t}"

    @property
    def stats_entries(self) -> str:
        """Sorted set fp|db|app → epoch seconds of its newest statement: who the entry cap evicts first."""
        return f"{self.p}:stats:entries{self.t}"

    def stats_members(self, fp: str) -> str:
        """Set of `<db>|<app>`: the stats:q members of one fingerprint, so an eviction finds them all."""
        return f"{self.p}:stats:members{self.t}:{fp}"

    # drill-down (per fingerprint, removed with it by the drill sweep: drilldown.py)
    def stats_users(self, fp: str) -> str:
        """Hash: `<db>|<app>|<user>` → `calls:total_us:rows:errors:max_us` of one fingerprint (op UROW)."""
        return f"{self.p}:stats:u{self.t}:{fp}"

    def stats_series(self, fp: str) -> str:
        """Hash: slot (minute mod series_minutes) → `minute:calls:total_us:errors` of one fingerprint."""
        return f"{self.p}:stats:ts{self.t}:{fp}"

    def samples_slow(self, fp: str) -> str:
        """Sorted set: the slowest executions of a fingerprint (JSON), by duration in µs."""
        return f"{self.p}:samples:slow{self.t}:{fp}"

    def samples_recent(self, fp: str) -> str:
        """List: the most recent executions of a fingerprint (JSON), newest first."""
        return f"{self.p}:samples:recent{self.t}:{fp}"

    @property
    def drill_index(self) -> str:
        """Sorted set fp → epoch second of its newest drill-down write: what the drill sweep looks at."""
        return f"{self.p}:samples:fps{self.t}"

    def plan(self, fp: str) -> str:
        """Hash: the EXPLAIN of a fingerprint's sample (status, plan JSON, sql, params, at …): plans.py."""
        return f"{self.p}:plan{self.t}:{fp}"

    # transaction shapes (txshapes.py)
    def txshape(self, shape: str) -> str:
        """Hash: app, fps, count, total_us, max_us, stmts, rolled_back, last_ts of one transaction shape."""
        return f"{self.p}:txshape{self.t}:{shape}"

    @property
    def txshapes(self) -> str:
        """Sorted set shape → epoch second it was last seen (the shape cap evicts the oldest)."""
        return f"{self.p}:txshapes{self.t}"

    def txshapes_of(self, fp: str) -> str:
        """Set: the shapes a fingerprint appears in."""
        return f"{self.p}:txshapes:fp{self.t}:{fp}"

    # business aggregates
    def biz(self, rule: str, day: str) -> str:
        return f"{self.p}:biz{self.t}:{rule}:{day}"

    def biz_set(self, rule: str, day: str, labels: str) -> str:
        return f"{self.p}:biz{self.t}:{rule}:{day}:set:{labels}"

    def biz_rows_only(self, rule: str, day: str) -> str:
        return f"{self.p}:biz{self.t}:{rule}:{day}:rows_only"

    def biz_days(self, rule: str) -> str:
        return f"{self.p}:biz{self.t}:{rule}:days"

    def biz_labels(self, rule: str) -> str:
        """Set of `name=value` label values a rule has seen (a new one is a new category: categories.py)."""
        return f"{self.p}:biz:labels{self.t}:{rule}"

    @property
    def biz_labels_since(self) -> str:
        """Hash rule → epoch second its label values were first learnt."""
        return f"{self.p}:biz:labels:since{self.t}"

    @property
    def biz_rules(self) -> str:
        """Hash rule → JSON description (aggregate, scale, labels), for readers such as top."""
        return f"{self.p}:biz:rules"

    # open transactions
    def txn_outcome(self, sid: str, txid: str) -> str:
        return f"{self.p}:txn{self.t}:{sid}:{txid}:outcome"

    def txn_parked(self, sid: str, txid: str) -> str:
        return f"{self.p}:txn{self.t}:{sid}:{txid}:parked"

    # security
    @property
    def alert_counts(self) -> str:
        return f"{self.p}:alerts:counts{self.t}"

    def alert_dedup(self, rule: str, fp: str, app: str) -> str:
        return f"{self.p}:alerts:dedup{self.t}:{rule}:{fp}:{app}"

    def seen(self, app: str) -> str:
        """Set of fingerprints an application has sent."""
        return f"{self.p}:seen{self.t}:{app}"

    @property
    def seen_since(self) -> str:
        """Hash app → epoch seconds it was first seen."""
        return f"{self.p}:seen:apps{self.t}"

    # anomalies
    def anomaly_window(self, window: int) -> str:
        return f"{self.p}:anomaly:w{self.t}:{window}"

    @property
    def anomaly_meta(self) -> str:
        return f"{self.p}:anomaly:meta{self.t}"

    @property
    def anomaly_state(self) -> str:
        return f"{self.p}:anomaly:state{self.t}"

    @property
    def anomaly_lock(self) -> str:
        return f"{self.p}:anomaly:lock"

    # workers
    @property
    def workers(self) -> str:
        """Hash consumer → JSON heartbeat (processed, rate, lag)."""
        return f"{self.p}:workers"

    def claim_floor(self, group: str) -> str:
        """The lowest claim_idle (ms) of the group's live claimers: younger entries are never taken."""
        return f"{self.p}:claim_floor:{group}"


def shard_keys(prefix: str, shards: int) -> list[Keys]:
    """Keys of every shard: one shard is the unsharded layout of a single stream."""
    if shards <= 1:
        return [Keys(prefix)]
    return [Keys(prefix, i) for i in range(shards)]

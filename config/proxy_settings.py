"""Settings of `fasterdata proxy`: the `proxy:` section of the config file."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import Field, field_validator

from fasterdata.config.common import Served, hostport


class ProxySettings(Served):
    """`fasterdata proxy`."""

    listen: str = Field("127.0.0.1:6432", description="Address clients connect to")
    upstream: str = Field(
        "127.0.0.1:5432", description="PostgreSQL server the proxy forwards to: HOST:PORT or a Unix socket path")
    upstream_sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = Field(
        "prefer", description="TLS to the upstream, as libpq's sslmode"
    )
    upstream_sslrootcert: str | None = Field(None, description="CA file to verify the upstream's certificate")
    upstream_sslservername: str | None = Field(None, description="Host name to verify (default: the upstream host)")
    log_connections: bool = Field(True, description="A log line per client session (client, user, database, "
                                  "application), as PgBouncer's log_connections; off for connection-per-request "
                                  "applications (the lines go to debug)")
    tls_cert: str | None = Field(
        None, description="Certificate for TLS to clients (without one, SSLRequest is answered 'N' and "
        "direct TLS is closed)"
    )
    tls_key: str | None = Field(None, description="Private key for tls_cert")
    metrics: str = Field("127.0.0.1:9930", description="Address of /metrics, /healthz and /readyz ('' disables)")
    connect_timeout: float = Field(
        5.0, gt=0, description="Seconds to reach the upstream before the client gets an error"
    )
    client_login_timeout: float = Field(
        60.0, gt=0, description="Seconds a new client has to complete its startup packet"
    )
    shutdown_grace: float = Field(30.0, ge=0, description="Seconds busy sessions get to finish after SIGTERM/SIGINT")
    max_client_conn: int = Field(1000, ge=1, description="Client connections beyond this get 'too many connections'")
    max_message_size: int = Field(
        (1 << 30) - 1, ge=1024, description="Largest protocol message accepted from a client (bytes)"
    )
    capture: bool = Field(True, description="Tap statements into the Redis stream")
    data_plane: Literal["python", "native"] = Field(
        "native", description="'native': after the login, plain-TCP sessions move to a compiled loop in a thread "
        "of its own (TLS sessions stay on 'python'; without the compiled extension every session does); "
        "'python': every session's bytes move through asyncio, the reference implementation")
    capture_buffer_max: int = Field(
        64 << 20, ge=1 << 20, description="data_plane: native: bytes of records a session's capture may have "
        "waiting before that session goes on uncaptured (fasterdata_proxy_native_capture_lost_total)")
    sample_rate: float = Field(1.0, ge=0, le=1, description="Fraction of transactions captured (whole transactions)")
    max_held: int = Field(1000, ge=0, description="Statements held per open transaction before they go out as 'open'")
    max_param_bytes: int = Field(1024, ge=16, description="Longest bound value kept; longer ones are cut with a marker")
    max_sql_chars: int = Field(16384, ge=16, description="Longest SQL text kept; long IN-lists and VALUES rows "
                               "lose their later elements first (`/* …N more */`, same fingerprint), then the text "
                               "is cut with a marker")
    capture_params: bool = Field(True, description="Decode and send bound parameters")
    redact: Literal["columns", "all"] = Field(
        "columns", description="'columns': hide passwords and values of sensitive columns; 'all': every value")
    redact_columns: str = Field(
        "password|passwd|secret|token|ssn|card|cvv",
        description="Case-insensitive regex of column names whose values are hidden")
    stream_maxlen: int = Field(1_000_000, ge=0,
                               description="Statements <prefix>:statements holds at most (0: no cap); the oldest "
                               "entries go first, whole. What a trim takes before a consumer group read it is "
                               "counted per group in <prefix>:statements:trimmed and logged")
    stream_entry: Literal["bundled", "packed", "flat"] = Field(
        "bundled", description="'bundled': an entry holds up to 100 statements of one batch in one field, "
        "`events` (Redis's cost to append, deliver and acknowledge an entry is shared by them); 'packed': one "
        "statement an entry, in one field, `event`, its names and values joined with NUL; 'flat': one field "
        "per event field, plainest in redis-cli. Analyzers read all three")
    queue_max: int = Field(100_000, ge=100, description="Events queued in memory before they go to the spool")
    spool_dir: str | None = Field(
        None, description="Directory of the spool used while Redis is away (default: <tmp>/fasterdata-spool)")
    spool_max_bytes: int = Field(1 << 30, ge=1 << 20, description="Spool size at which new events are dropped")
    redis_wait_replicas: int = Field(
        0, ge=0, le=16, description="Replicas that must hold each batch (Redis WAIT) before it counts as sent; "
        "fewer: the batch is spooled and retried. 1 on a replicated Redis: a failover loses no confirmed event")
    redis_wait_timeout: float = Field(1.0, gt=0, le=60, description="Seconds WAIT gives the replicas")
    workers: int = Field(1, ge=1, le=64, description="Processes sharing the listen port (SO_REUSEPORT); "
                         "worker i serves metrics on the metrics port + i")
    allow_clients: list[str] = Field(
        default_factory=list, description="Client networks (CIDRs, IPv4/IPv6) allowed to connect; empty: everyone "
        "(environment: comma-separated)")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return hostport(value)

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str) -> str:
        """HOST:PORT, or a Unix socket: its file or the directory holding .s.PGSQL.5432."""
        return value if value.startswith("/") else hostport(value, "127.0.0.1:5432")

    @field_validator("redact_columns")
    @classmethod
    def _redact_columns(cls, value: str) -> str:
        # Checked here, so a typo stops start-up with its setting's name instead of every session's capture.
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a valid regular expression ({exc})") from None
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: str) -> str:
        return value and hostport(value, "127.0.0.1:9930")

    @field_validator("allow_clients", mode="before")
    @classmethod
    def _allow_clients(cls, value: Any) -> Any:
        """Accept 'a,b' (environment) as well as a list; each entry must parse as a network."""
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            for item in value:
                try:
                    ipaddress.ip_network(str(item), strict=False)
                except ValueError:
                    raise ValueError(f"entries must be CIDRs like 10.0.0.0/8, not {item!r}") from None
            return [str(ipaddress.ip_network(str(item), strict=False)) for item in value]
        return value

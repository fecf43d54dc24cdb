"""One validated settings model; values come from a YAML file < FASTERDATA_* environment < CLI flags.

The YAML file has a top-level section per command (``proxy:``, ``analyze:``) plus shared keys
(``redis``, ``prefix``, ``log_level`` …) at the top. An unknown key or a bad value stops start-up
with a message that names the key and says what was expected.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from redis.connection import parse_url

from fasterdata.config.redisurl import one_url_per_host

ENV_PREFIX = "FASTERDATA_"
_PACKAGE_DIR = str(Path(__file__).resolve().parent)


class ConfigError(Exception):
    """A setting is missing, unknown or invalid; the message says which and why."""


def _hostport(value: str, key: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{key} must be HOST:PORT (e.g. 127.0.0.1:6432), not {value!r}")
    return value


def split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class Common(BaseModel):
    """Settings every command shares."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    redis: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis URL (redis:// or rediss://, may carry user:password); "
        "for a Redis Cluster several seed nodes as redis://host1:port1,host2:port2"
    )
    prefix: str = Field(
        "fasterdata", description="Key prefix for every stream and key, so deployments can share a Redis"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log verbosity")
    log_format: Literal["text", "json"] = Field("text", description="Human-readable lines or one JSON object a line")
    stream_shards: int = Field(
        1, ge=1, le=1024, description="Statement streams <prefix>:statements:{i} (1: one unsharded stream); the "
        "proxy keeps a session on one, analyzers read all. Same value everywhere; at least 2 on Redis Cluster")

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis must be a redis://, rediss:// or unix:// URL, not {value!r}")
        for url in one_url_per_host(value):
            parse_url(url)  # a bad port or database fails here, at start-up, with the setting's name
        return value


class ProxySettings(Common):
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
    capture_mode: Literal["inline", "process"] = Field(
        "inline", description="'inline': capture runs in the forwarding process; 'process': in a helper process "
        "per proxy worker, fed through a socketpair, so capture CPU never delays traffic")
    capture_nice: int = Field(10, ge=0, le=19, description="Niceness of the capture process (capture_mode=process): "
                              "under CPU saturation traffic wins and capture lags, then catches up")
    capture_buffer_max: int = Field(
        64 << 20, ge=1 << 20, description="Bytes buffered for a lagging capture process before messages are dropped "
        "(counted in fasterdata_capture_dropped_statements_total)")
    sample_rate: float = Field(1.0, ge=0, le=1, description="Fraction of transactions captured (whole transactions)")
    max_held: int = Field(1000, ge=0, description="Statements held per open transaction before they go out as 'open'")
    max_param_bytes: int = Field(1024, ge=16, description="Longest bound value kept; longer ones are cut with a marker")
    max_sql_chars: int = Field(16384, ge=16, description="Longest SQL text kept; longer is cut with a marker")
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
    metrics_user: str | None = Field(None, description="Basic-auth user for /metrics, /healthz, /readyz")
    metrics_password: str | None = Field(None, description="Basic-auth password for metrics_user")
    metrics_tls_cert: str | None = Field(None, description="Certificate to serve the metrics endpoint over HTTPS")
    metrics_tls_key: str | None = Field(None, description="Private key for metrics_tls_cert")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _hostport(value, "listen")

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str) -> str:
        """HOST:PORT, or a Unix socket: its file or the directory holding .s.PGSQL.5432."""
        return value if value.startswith("/") else _hostport(value, "upstream")

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: str) -> str:
        return value and _hostport(value, "metrics")

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
                    raise ValueError(f"allow_clients entries must be CIDRs like 10.0.0.0/8, not {item!r}") from None
            return [str(ipaddress.ip_network(str(item), strict=False)) for item in value]
        return value

    @model_validator(mode="after")
    def _pairs(self) -> ProxySettings:
        """Half a credential or half a key pair is a mistake to report, not to ignore."""
        if bool(self.metrics_user) != bool(self.metrics_password):
            raise ValueError("metrics_user and metrics_password must be set together")
        if bool(self.metrics_tls_cert) != bool(self.metrics_tls_key):
            raise ValueError("metrics_tls_cert and metrics_tls_key must be set together")
        return self


COMMANDS: dict[str, type[Common]] = {"proxy": ProxySettings}
# Sections a config file may have; the models of the other two register themselves on import.
SECTIONS = ("proxy", "analyze", "gl")


def add_common_arguments(parser: Any) -> None:
    """Flags for the settings every command shares (argparse; values left None mean "not given")."""
    parser.add_argument("--config", metavar="FILE", help="YAML settings file (flags win over FASTERDATA_* "
                        "environment variables, which win over the file)")
    parser.add_argument("--redis", metavar="URL", help="Redis URL; a Redis Cluster may be given several seed nodes, "
                        "redis://h1:p1,h2:p2 [redis://127.0.0.1:6379/0]")
    parser.add_argument("--prefix", help="key prefix for streams and keys [fasterdata]")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="[info]")
    parser.add_argument("--log-format", choices=["text", "json"], help="[text]")


def model_for(command: str) -> type[Common]:
    if command not in COMMANDS:
        if command == "analyze":
            import fasterdata.config.analyzer_settings
        elif command == "gl":
            import fasterdata.config.gl_settings  # noqa: F401
    try:
        return COMMANDS[command]
    except KeyError:
        raise ConfigError(f"no settings for command {command!r}") from None


def _coerce_env(model: type[Common], key: str, raw: str) -> Any:
    annotation = model.model_fields[key].annotation
    if annotation is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown setting {key!r}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            got = f" (got {item.get('input')!r})" if item["loc"] else ""  # top level: the input holds secrets
            lines.append(f"{source}: {key}: {message}{got}")
    return "\n".join(lines)


def load(
    command: str,
    file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Common:
    """Build the command's settings from file < environment < flags (flags equal to None are unset)."""
    model = model_for(command)
    values: dict[str, Any] = {}
    if file:
        try:
            data = yaml.safe_load(Path(file).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: expected a mapping of settings at the top level")
        shared = {k: v for k, v in data.items() if k not in SECTIONS}
        unknown = set(shared) - set(Common.model_fields)
        if unknown:
            raise ConfigError(f"{file}: unknown setting {sorted(unknown)[0]!r}")
        section = data.get(command) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{file}: section {command!r} must be a mapping")
        values.update(shared)
        values.update(section)
        try:
            model(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, str(file))) from None
    env = os.environ if environ is None else environ
    for key in model.model_fields:
        raw = env.get(ENV_PREFIX + key.upper())
        if raw is not None:
            values[key] = _coerce_env(model, key, raw)
    for key, value in (flags or {}).items():
        if value is not None:
            values[key] = value
    try:
        return model(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "settings")) from None


_SECRET_IN_URL = re.compile(r"(://[^:/@]*:)([^@]+)(@)")
_SECRET_IN_DSN = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def mask(value: Any) -> Any:
    """Hide passwords inside URLs and DSNs, so `config show` output can be pasted anywhere."""
    if not isinstance(value, str):
        return value
    return _SECRET_IN_DSN.sub(r"\1***", _SECRET_IN_URL.sub(r"\1***\3", value))


def effective(file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Every command's settings as they would be in force (no flags), secrets masked."""
    out: dict[str, dict[str, Any]] = {}
    for command in SECTIONS:
        settings = load(command, file, environ=environ)
        out[command] = {k: mask(v) for k, v in settings.model_dump().items()}
    return out


def reference_markdown() -> str:
    """The README's configuration reference, generated from the models so it cannot drift."""
    lines: list[str] = []
    for command in SECTIONS:
        model = model_for(command)
        lines += [f"### `{command}`", "", "| key | environment | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            default = field.get_default(call_default_factory=True)
            if isinstance(default, str) and default.startswith(_PACKAGE_DIR):
                default = "config" + default[len(_PACKAGE_DIR):] + " (shipped)"  # not this checkout's path
            if default is None or default == [] or default == "":
                shown = "(none)"
            else:
                shown = f"`{default}`" if isinstance(default, str) else f"`{default!r}`"
            lines.append(f"| `{name}` | `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description or ''} |")
        lines.append("")
    return "\n".join(lines)

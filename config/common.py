"""What every command's settings share: the base model, the metrics endpoint's access, address checks.

The command models (proxy_settings.py, analyzer_settings.py, gl_settings.py) build on these, and
settings.py maps each command to its model; nothing here knows the commands.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from redis.connection import parse_url

from fasterdata.config.explain import ProblemsError
from fasterdata.config.redisurl import one_url_per_host

ENV_PREFIX = "FASTERDATA_"


class ConfigError(ProblemsError):
    """Settings are missing, unknown or invalid; one problem a line, each naming where it came from."""

    kind = "configuration"


def hostport(value: str, example: str = "127.0.0.1:6432") -> str:
    """HOST:PORT with a port that exists; the message leaves naming the setting to the caller."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"must be HOST:PORT (e.g. {example}), not {value!r}")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port} is out of range (0 to 65535) in {value!r}")
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
            raise ValueError(f"must be a redis://, rediss:// or unix:// URL, not {value!r}")
        for url in one_url_per_host(value):
            parse_url(url)  # a bad port or database fails here, at start-up, with the setting's name
        return value


class Served(Common):
    """Settings of a command that serves /metrics, /healthz and /readyz: who may read them, and how.

    Metrics reveal statement counts, client addresses and business figures, so every endpoint can be
    put behind basic auth and TLS alike.
    """

    metrics_user: str | None = Field(None, description="Basic-auth user for /metrics, /healthz, /readyz")
    metrics_password: str | None = Field(None, description="Basic-auth password for metrics_user")
    metrics_tls_cert: str | None = Field(None, description="Certificate to serve the metrics endpoint over HTTPS")
    metrics_tls_key: str | None = Field(None, description="Private key for metrics_tls_cert")

    @model_validator(mode="after")
    def _pairs(self) -> Served:
        """Half a credential or half a key pair is a mistake to report, not to ignore."""
        if bool(self.metrics_user) != bool(self.metrics_password):
            raise ValueError("metrics_user and metrics_password must be set together")
        if bool(self.metrics_tls_cert) != bool(self.metrics_tls_key):
            raise ValueError("metrics_tls_cert and metrics_tls_key must be set together")
        return self


def add_common_arguments(parser: Any) -> None:
    """Flags for the settings every command shares (argparse; values left None mean "not given")."""
    parser.add_argument("--config", metavar="FILE", help="YAML settings file (flags win over FASTERDATA_* "
                        "environment variables, which win over the file)")
    parser.add_argument("--redis", metavar="URL", help="Redis URL; a Redis Cluster may be given several seed nodes, "
                        "redis://h1:p1,h2:p2 [redis://127.0.0.1:6379/0]")
    parser.add_argument("--prefix", help="key prefix for streams and keys [fasterdata]")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="[info]")
    parser.add_argument("--log-format", choices=["text", "json"], help="[text]")


def add_metrics_access_arguments(parser: Any) -> None:
    """Flags for `Served`'s settings, the same on every command that serves metrics."""
    parser.add_argument("--metrics-user", metavar="USER", help="basic-auth user for the metrics endpoint")
    parser.add_argument("--metrics-password", metavar="PASSWORD", help="basic-auth password for --metrics-user")
    parser.add_argument("--metrics-tls-cert", metavar="FILE", help="serve the metrics endpoint over HTTPS")
    parser.add_argument("--metrics-tls-key", metavar="FILE", help="private key for --metrics-tls-cert")

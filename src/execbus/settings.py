"""Settings, read once at the edge (CLI) from ``EXECBUS_*`` variables and passed down.

Nothing in execbus reads the environment at import time: the CLI builds a
:class:`Settings` (environment + flags) and hands typed objects to the worker
and the client. Every field is one ``EXECBUS_<NAME>`` variable; the README's
configuration table is generated from this model (``execbus config --markdown``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from execbus.errors import ConfigError
from execbus.wire.config import (
    LIFECYCLE_EVENTS,
    MAX_ARG_BYTES,
    MAX_ARGS,
    MAX_ENV,
    MAX_OUTPUT_LIMIT,
    LifecycleEvent,
)


class Settings(BaseSettings):
    """Configuration of the worker, the client and the CLI."""

    model_config = SettingsConfigDict(env_prefix="EXECBUS_", extra="ignore", frozen=True)

    amqp_url: str = Field(
        default="amqp://guest:guest@localhost:5672/",
        description="RabbitMQ URL (amqp:// or amqps://); for a cluster, the nodes' URLs "
        "comma-separated: a process connects to one at random and, when it loses it, "
        "to the next that answers.",
    )
    amqp_ca_file: Path | None = Field(
        default=None,
        description="amqps://: CA bundle (PEM) that signed the broker's certificate "
        "(default: the system's trust store).",
    )
    amqp_cert_file: Path | None = Field(
        default=None, description="amqps://: client certificate (PEM) for broker mTLS."
    )
    amqp_key_file: Path | None = Field(
        default=None, description="amqps://: private key (PEM) of the client certificate."
    )
    namespace: str = Field(
        default="execbus",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="Prefix of every exchange and queue; isolates tenants and tests.",
    )
    agents: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Agents a worker serves, comma-separated NAME=ADDRESS "
        "(unix:///path, tcp://host:port, vsock://cid:port, qga+unix:///path, local). "
        "Empty: one in-process agent named 'local'.",
    )
    pools: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Pools of agents, comma-separated POOL=AGENT[+AGENT...]; requests "
        "routed to pool.<POOL> go to the least-loaded agent of the pool.",
    )
    control_interval: float = Field(
        default=1.0, gt=0, description="Seconds between worker membership announcements."
    )
    peer_expiry: float = Field(
        default=3.0, gt=0, description="Seconds of silence before a worker is considered gone."
    )
    agent_token_file: Path | None = Field(
        default=None, description="File holding the token for tcp:// agents."
    )
    agent_tls_ca_file: Path | None = Field(
        default=None,
        description="tls:// agents: CA bundle (PEM) that signed the agents' certificates "
        "(default: the system's trust store).",
    )
    agent_tls_cert_file: Path | None = Field(
        default=None, description="tls:// agents: client certificate (PEM), for agents with mTLS."
    )
    agent_tls_key_file: Path | None = Field(
        default=None, description="tls:// agents: private key (PEM) of the client certificate."
    )
    policy_file: Path | None = Field(
        default=None,
        description="Authorization policy (TOML or YAML): which callers (AMQP user_id) may "
        "run what where. Unset: every caller may do everything (a startup warning says so).",
    )
    prefetch: int = Field(default=64, ge=1, le=10_000, description="AMQP prefetch per queue.")
    publish_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to wait for a publisher confirm."
    )
    delivery_limit: int = Field(
        default=5, ge=1, description="Redeliveries before a request is dead-lettered."
    )
    quorum_replicas: int | None = Field(
        default=None,
        ge=1,
        description="Replicas of each quorum queue the workers declare "
        "(x-quorum-initial-group-size); unset: the cluster's default. Fixed at a queue's "
        "first declaration.",
    )
    max_message_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Largest request body accepted."
    )
    max_argv_entries: int = Field(
        default=MAX_ARGS, ge=1, le=MAX_ARGS, description="Most arguments (cmd entries) per exec."
    )
    max_argv_bytes: int = Field(
        default=MAX_ARG_BYTES,
        ge=1,
        le=MAX_ARG_BYTES,
        description="Most bytes of all arguments of an exec together.",
    )
    max_env_entries: int = Field(
        default=MAX_ENV, ge=0, le=MAX_ENV, description="Most env entries per exec."
    )
    max_env_bytes: int = Field(
        default=1024 * 1024, ge=0, description="Most bytes of all env entries of an exec together."
    )
    max_output_limit: int = Field(
        default=MAX_OUTPUT_LIMIT,
        ge=0,
        le=MAX_OUTPUT_LIMIT,
        description="Largest output_limit (bytes captured per stream) a request may ask for.",
    )
    registry_max_records: int = Field(default=100_000, ge=1, description="Exec records per agent.")
    registry_retention: float = Field(
        default=3600.0, ge=0, description="Seconds finished execs stay inspectable."
    )
    registry_created_ttl: float = Field(
        default=600.0, gt=0, description="Seconds a created, never started exec is kept."
    )
    sweep_interval: float = Field(
        default=30.0, gt=0, description="Seconds between registry sweeps."
    )
    agent_call_timeout: float = Field(
        default=10.0, gt=0, description="Seconds one agent call may take (per attempt)."
    )
    agent_retry_attempts: int = Field(default=6, ge=1, description="Attempts per agent call.")
    agent_retry_max_elapsed: float = Field(
        default=15.0, gt=0, description="Seconds before agent retries give up."
    )
    agent_heartbeat: float = Field(
        default=2.0, gt=0, description="Seconds between agent pings (dead-agent detection)."
    )
    shutdown_grace: float = Field(
        default=20.0, ge=0, description="Seconds to finish in-flight work on SIGTERM."
    )
    http_port: int | None = Field(
        default=None, ge=0, le=65535, description="Port of the health/metrics HTTP endpoint."
    )
    http_host: str = Field(default="127.0.0.1", description="Address of the HTTP endpoint.")
    worker_id: str | None = Field(default=None, description="Stable worker id (default: random).")
    request_timeout: float = Field(
        default=30.0, gt=0, description="Client: seconds to wait for a non-run reply."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level."
    )
    log_format: Literal["text", "json"] = Field(default="text", description="Log format.")
    lifecycle_events: Annotated[list[LifecycleEvent], NoDecode] = Field(
        default_factory=lambda: list(LIFECYCLE_EVENTS),
        description="Worker: which of exec.created and exec.started it publishes, "
        "comma-separated, or 'none' (the exit notification always goes out); a request "
        "may turn more off (config.lifecycle_events), never on.",
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto",
        description="Event loop of the worker and the CLI: uvloop when it is installed "
        "(auto), or asyncio's own.",
    )

    @field_validator("lifecycle_events", mode="before")
    @classmethod
    def _split_events(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",") if part.strip()]
            return [] if parts == ["none"] else parts
        return value

    @field_validator("agents", "pools", mode="before")
    @classmethod
    def _split_agents(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("amqp_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        nodes = [part.strip() for part in value.split(",") if part.strip()]
        if not nodes:
            raise ValueError("names no broker")
        for node in nodes:
            if not node.startswith(("amqp://", "amqps://")):
                raise ValueError("must start with amqp:// or amqps:// (each node URL)")
        return ",".join(nodes)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus explicit overrides (``None`` ignored)."""
    from pydantic import ValidationError

    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)  # type: ignore[arg-type]
    except ValidationError as exc:
        from execbus.wire.codec import describe_validation_error

        raise ConfigError(f"invalid configuration: {describe_validation_error(exc)}") from None

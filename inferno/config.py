"""Typed, frozen configuration: one object per process, built once at start.

The CLI (``inferno.cli``) fills these from flags and ``INFERNO_*`` environment
variables; nothing here reads the environment itself.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inferno.errors import ConfigError

LogFormat = Literal["text", "json"]


def split_hostport(value: str, *, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """Parse ``host:port`` (or ``:port``, ``[v6]:port``) into its parts."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"expected host:port, got {value!r}")
    return (host.strip("[]") or default_host), int(port)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HealthCheckConfig(_Frozen):
    """Active health checks of backends' ``/health``."""

    interval_s: float = Field(2.0, gt=0)
    timeout_s: float = Field(1.0, gt=0)
    #: consecutive failed probes before a healthy backend is marked unhealthy
    unhealthy_threshold: int = Field(2, ge=1)
    #: consecutive good probes before an unhealthy backend is marked healthy
    healthy_threshold: int = Field(1, ge=1)


class RegistryConfig(_Frozen):
    """Membership from registrations and heartbeats."""

    #: no heartbeat for this long -> unhealthy
    heartbeat_timeout_s: float = Field(6.0, gt=0)
    #: no heartbeat for this long -> removed
    ttl_s: float = Field(30.0, gt=0)
    sweep_interval_s: float = Field(1.0, gt=0)


class UpstreamConfig(_Frozen):
    connect_timeout_s: float = Field(2.0, gt=0)
    #: headers of a non-streamed generation may take as long as the generation
    first_byte_timeout_s: float = Field(120.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)
    #: attempts per request on connection failures (each on a different backend)
    max_attempts: int = Field(3, ge=1, le=10)
    max_idle_per_backend: int = Field(64, ge=0)


class ProxyConfig(_Frozen):
    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    ops_host: str = "0.0.0.0"
    ops_port: int = 6100
    #: static backends, ``host:port`` or ``host:port=weight``
    backend_servers: tuple[str, ...] = ()
    policy: str = "round_robin"
    health: HealthCheckConfig = HealthCheckConfig()
    registry: RegistryConfig = RegistryConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_tokens_limit: int = Field(4096, ge=1)
    log_format: LogFormat = "text"
    log_level: str = "INFO"
    #: log full prompt text at DEBUG (off: only lengths are logged)
    log_prompts: bool = False
    seed: int | None = None

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        from inferno.policies import available_policies

        if value not in available_policies():
            raise ValueError(f"unknown policy {value!r}; choose from {available_policies()}")
        return value


class FakeEngineConfig(_Frozen):
    """The deterministic test engine (see ``inferno.engines.fake``)."""

    tokens_per_s: float = Field(2000.0, gt=0)
    latency_ms: float = Field(0.0, ge=0)


class BackendConfig(_Frozen):
    listen_host: str = "0.0.0.0"
    listen_port: int = 3000
    ops_host: str = "0.0.0.0"
    ops_port: int = 6100
    discovery_lb: str | None = None
    advertise_addr: str | None = None
    node_id: str | None = None
    engine: str = "smollm2"
    model_path: str | None = None
    #: concurrent generations (llama.cpp slots); n_ctx is split across them
    n_parallel: int = Field(2, ge=1, le=64)
    n_ctx: int = Field(4096, ge=256)
    n_threads: int = Field(2, ge=1)
    system_prompt: str = "You are a helpful assistant. Answer briefly and clearly."
    heartbeat_interval_s: float = Field(2.0, gt=0)
    register_timeout_s: float = Field(2.0, gt=0)
    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_tokens_limit: int = Field(4096, ge=1)
    drain_grace_s: float = Field(30.0, ge=0)
    fake: FakeEngineConfig = FakeEngineConfig()
    log_format: LogFormat = "text"
    log_level: str = "INFO"
    log_prompts: bool = False

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        from inferno.engines import available_engines

        if value not in available_engines():
            raise ValueError(f"unknown engine {value!r}; choose from {available_engines()}")
        return value

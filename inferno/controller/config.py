"""``inferno controller``'s one frozen config object."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class ControllerConfig(BaseModel):
    """Everything the controller is built from (the CLI makes it once)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: the proxy's ops address (host:port): desired state in, reports out
    proxy_ops: str
    admin_token: SecretStr
    orchestrator: str
    orchestrator_options: tuple[tuple[str, str], ...] = ()
    state_dir: str = ".inferno-controller"
    #: where instances register (default: ``proxy_ops``)
    discovery_lb: str | None = None
    cluster_token: SecretStr | None = None
    model_dir: str | None = None
    reconcile_interval_s: float = Field(2.0, gt=0, le=60)
    poll_wait_s: float = Field(25.0, ge=0, le=30)
    request_timeout_s: float = Field(5.0, gt=0, le=60)
    reconcile_timeout_s: float = Field(60.0, gt=0, le=600)
    backoff_initial_s: float = Field(0.5, gt=0, le=60)
    backoff_max_s: float = Field(10.0, gt=0, le=600)
    log_level: str = "INFO"
    log_format: str = "text"

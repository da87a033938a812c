"""``inferno worker``'s one frozen config object (the CLI builds it once).

It lives beside the worker, as ``ControllerConfig`` does beside the controller:
``inferno/config.py`` is at the architecture test's 500-line bound already.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from inferno.config import LogFormat, RequestLimits

QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class WorkerConfig(BaseModel):
    """Lease jobs from queues at the proxy, run a workload (or an engine) for each,
    report the result (docs/queues.md#worker)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: the proxy's ops address (host:port), where the worker routes are
    discovery_lb: str
    #: the queues leased from, rotated on each lease so that none starves
    queues: tuple[str, ...] = Field(min_length=1, max_length=64)
    #: the workload's argv (``[workload, *args]``); empty in engine mode
    workload: tuple[str, ...] = ()
    #: a glob whose matches replace the word FILENAME in the arguments (devices, say)
    glob: str | None = None
    #: the worker's own time limit per job (0: none); the job's own applies too
    limit_s: float = Field(0.0, ge=0)
    kill_grace_s: float = Field(2.0, ge=0, le=600)
    workdir: str | None = None
    discard_output: bool = False
    ignore_args: bool = False
    max_output_bytes: int = Field(65536, ge=0, le=16 << 20)
    exit_when_empty: bool = False
    backoff_s: float = Field(0.5, gt=0, le=3600)
    backoff_max_s: float = Field(30.0, gt=0, le=3600)
    poll_wait_s: float = Field(20.0, ge=0, le=600)
    request_timeout_s: float = Field(10.0, gt=0, le=600)
    concurrency: int = Field(1, ge=1, le=256)
    node_name: str = Field(min_length=1, max_length=253)
    pod_name: str = Field(min_length=1, max_length=253)
    #: the device reported with every job (None: the FILENAME match)
    device_name: str | None = Field(None, max_length=4096)
    #: the worker token (else the cluster token), sent as ``Authorization: Bearer``
    token: SecretStr | None = None
    #: engine mode: a registered engine; the job's input is a chat completions body
    engine: str | None = None
    engine_options: dict[str, Any] = Field(default_factory=dict)
    max_tokens_limit: int = Field(4096, ge=1)
    request: RequestLimits = RequestLimits()
    #: ``host:port`` of the health port (GET /health), or None
    health_addr: str | None = None
    log_format: LogFormat = "text"
    log_level: str = "INFO"

    @field_validator("queues")
    @classmethod
    def _queues(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not QUEUE_NAME.fullmatch(name):
                raise ValueError(f"queue names are [A-Za-z0-9_.-]{{1,64}}, got {name!r}")
        if len(set(value)) != len(value):
            raise ValueError("a queue is named twice")
        return value

    @model_validator(mode="after")
    def _mode(self) -> WorkerConfig:
        if self.backoff_max_s < self.backoff_s:
            raise ValueError("backoff_max_s must be at least backoff_s")
        if (self.engine is None) == (not self.workload):
            raise ValueError("give either a workload (after --) or --engine, not both or neither")
        return self

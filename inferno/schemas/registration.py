"""Wire types between backends and the proxy: registration, vitals, addresses.

Every value here comes from the network and may end up in a response header, a
log line or a metric, so each is bounded and checked with a full match.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: what a model does; routing pools backends per model, and a request names one task
Task = Literal["text-generation", "embeddings", "image-classification"]
DEFAULT_TASK: Task = "text-generation"

#: the largest count a vital may carry (2**53: exact in JSON doubles)
_MAX_COUNT = 1 << 53
#: the most slots (requests at once) a backend may advertise
MAX_SLOTS = 4096


class NodeVitals(BaseModel):
    """Load figures a backend reports with each heartbeat (all optional)."""

    # Every number is bounded: they come from the network and end up in JSON and metrics.
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    in_flight: int = Field(0, ge=0, le=_MAX_COUNT)
    queued: int = Field(0, ge=0, le=_MAX_COUNT)
    requests_served: int = Field(0, ge=0, le=_MAX_COUNT)
    tokens_per_s: float = Field(0.0, ge=0, le=1e9)
    cpu_percent: float = Field(0.0, ge=0, le=1e6)
    rss_bytes: int = Field(0, ge=0, le=_MAX_COUNT)
    slots: int = Field(0, ge=0, le=MAX_SLOTS)
    #: recent per-request generation speed (tokens/s of one generation), 0 if unknown
    decode_tokens_per_s: float = Field(0.0, ge=0, le=1e9)


class ModelSpec(BaseModel):
    """One model a backend serves: ``{"id": "...", "task": "..."}``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    task: Task = DEFAULT_TASK

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID_RE.fullmatch(value):
            raise ValueError("must be 1-128 characters from [A-Za-z0-9_.:@-]")
        return value


# Full matches only: ``re.match`` with ``$`` accepts a trailing newline, which would
# then split a response header or forge a log line.
_ADDR_RE = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]{1,253}):(\d{1,5})")
_ID_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})


def check_address(value: str) -> str:
    match = _ADDR_RE.fullmatch(value)
    if match is None or not 0 < int(match.group(2)) <= 65535:
        raise ValueError("must be host:port")
    return value


class RegistrationPayload(BaseModel):
    """Body of ``POST /registration`` (register and heartbeat are the same call)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    address: str
    node_id: str
    models: tuple[ModelSpec, ...] = ()
    vitals: NodeVitals = NodeVitals()
    weight: int = Field(1, ge=1, le=1000)
    state: Literal["active", "draining"] = "active"
    ops_address: str | None = None
    #: random per backend process: a new one at a known address is a restart, which
    #: starts with a fresh circuit breaker (None from backends that predate it)
    instance_id: str | None = None

    @field_validator("address")
    @classmethod
    def _addr(cls, value: str) -> str:
        return check_address(value)

    @field_validator("ops_address")
    @classmethod
    def _ops_addr(cls, value: str | None) -> str | None:
        return None if value is None else check_address(value)

    @field_validator("instance_id")
    @classmethod
    def _instance_id(cls, value: str | None) -> str | None:
        if value is not None and not _ID_RE.fullmatch(value):
            raise ValueError("must be 1-128 characters from [A-Za-z0-9_.:@-]")
        return value

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str) -> str:
        if not _ID_RE.fullmatch(value):
            raise ValueError("must be 1-128 characters from [A-Za-z0-9_.:@-]")
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, value: Any) -> Any:
        # A bare id (what backends before model tasks sent) means a text-generation model.
        if isinstance(value, list | tuple):
            if len(value) > 32:
                raise ValueError("at most 32 models")
            return tuple({"id": m} if isinstance(m, str) else m for m in value)
        return value

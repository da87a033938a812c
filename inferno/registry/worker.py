"""What the proxy knows about one backend: identity, state, vitals and counters."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from inferno.config import OutlierConfig
from inferno.registry.breaker import CircuitBreaker


class WorkerStatus(enum.StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    EJECTED = "ejected"
    DRAINING = "draining"


#: the largest count a vital may carry (2**53: exact in JSON doubles)
_MAX_COUNT = 1 << 53


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
    slots: int = Field(0, ge=0, le=4096)
    #: recent per-request generation speed (tokens/s of one generation), 0 if unknown
    decode_tokens_per_s: float = Field(0.0, ge=0, le=1e9)


class WorkerInfo:
    """Mutable registry entry. Policies read it; only the registry writes state."""

    __slots__ = (
        "address",
        "breaker",
        "consecutive_failures",
        "consecutive_successes",
        "in_flight",
        "last_heartbeat",
        "last_heartbeat_wall",
        "models",
        "node_id",
        "ops_address",
        "registered_at",
        "source",
        "status",
        "status_reason",
        "suspect",
        "vitals",
        "weight",
    )

    def __init__(
        self,
        address: str,
        *,
        node_id: str,
        models: tuple[str, ...] = (),
        weight: int = 1,
        source: str = "static",
        now: float = 0.0,
        wall: float = 0.0,
        status: WorkerStatus = WorkerStatus.HEALTHY,
        outlier: OutlierConfig | None = None,
    ) -> None:
        self.address = address
        self.node_id = node_id
        self.models = models
        self.weight = weight
        self.source = source
        self.status = status
        self.status_reason = "registered" if source == "registered" else "static"
        self.vitals = NodeVitals()
        self.in_flight = 0
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.last_heartbeat: float | None = now if source == "registered" else None
        self.last_heartbeat_wall: float | None = wall if source == "registered" else None
        self.registered_at = wall
        self.ops_address: str | None = None
        self.breaker = CircuitBreaker(outlier or OutlierConfig())
        #: slow but alive (e.g. long gaps in a stream): reported, never ejected for it
        self.suspect = False

    @property
    def routable(self) -> bool:
        return self.status is WorkerStatus.HEALTHY

    def has_capacity(self, limit: int) -> bool:
        """Below the per-backend limit, and admitted by its circuit breaker."""
        if self.in_flight >= limit:
            return False
        return self.breaker.allows(self.in_flight)

    def serves(self, model: str | None) -> bool:
        return model is None or not self.models or model in self.models

    def to_json(self) -> dict[str, Any]:
        """The ``/workers`` entry: a documented, stable interface (docs/api.md)."""
        return {
            "node_id": self.node_id,
            "address": self.address,
            "status": self.status.value,
            "status_reason": self.status_reason,
            "models": list(self.models),
            "in_flight": self.in_flight,
            "circuit": self.breaker.state.value,
            "ejections": self.breaker.ejections,
            "suspect": self.suspect,
            "weight": self.weight,
            "source": self.source,
            "last_heartbeat": self.last_heartbeat_wall,
            "registered_at": self.registered_at,
            "vitals": self.vitals.model_dump(),
        }

"""What the proxy knows about one backend: identity, state, vitals and counters."""

from __future__ import annotations

import enum
from typing import Any

from inferno.config import OutlierConfig
from inferno.registry.breaker import CircuitBreaker
from inferno.schemas.registration import NodeVitals


class WorkerStatus(enum.StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    EJECTED = "ejected"
    DRAINING = "draining"


class WorkerInfo:
    """Mutable registry entry. Policies read it; only the registry writes state."""

    __slots__ = (
        "address",
        "breaker",
        "consecutive_failures",
        "consecutive_successes",
        "in_flight",
        "instance_id",
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
        "tasks",
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
        #: model id -> task (``text-generation``, ``embeddings``, ...)
        self.tasks: dict[str, str] = {}
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
        #: the backend process that registered (a new one at this address is a restart)
        self.instance_id: str | None = None
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
            "tasks": dict(self.tasks),
            "ops_address": self.ops_address,
            "in_flight": self.in_flight,
            "circuit": self.breaker.state.value,
            "ejections": self.breaker.ejections,
            "suspect": self.suspect,
            "weight": self.weight,
            "source": self.source,
            "last_heartbeat": self.last_heartbeat_wall,
            "registered_at": self.registered_at,
            "instance_id": self.instance_id,
            "vitals": self.vitals.model_dump(),
        }

"""Membership, heartbeats, health checks and backend states."""

from inferno.registry.registry import RegistrationPayload, WorkerRegistry
from inferno.registry.worker import NodeVitals, WorkerInfo, WorkerStatus

__all__ = ["NodeVitals", "RegistrationPayload", "WorkerInfo", "WorkerRegistry", "WorkerStatus"]

"""Membership, heartbeats, health checks and backend states."""

from inferno.registry.registry import WorkerRegistry
from inferno.registry.worker import WorkerInfo, WorkerStatus

__all__ = ["WorkerInfo", "WorkerRegistry", "WorkerStatus"]

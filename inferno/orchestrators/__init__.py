"""Orchestrators run deployment instances: registered by name (``Orchestrator.create``)."""

from inferno.orchestrators.base import (
    DesiredDeployment,
    InstanceInfo,
    InstanceState,
    Orchestrator,
    OrchestratorContext,
)
from inferno.orchestrators.local import LocalOrchestrator
from inferno.orchestrators.swarm import SwarmOrchestrator

__all__ = [
    "DesiredDeployment",
    "InstanceInfo",
    "InstanceState",
    "LocalOrchestrator",
    "Orchestrator",
    "OrchestratorContext",
    "SwarmOrchestrator",
]

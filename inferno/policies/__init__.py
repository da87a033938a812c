"""Load-balancing policies, registered by name (``LoadBalancingPolicy.create``)."""

from inferno.policies import random_choice, round_robin  # noqa: F401  (registers policies)
from inferno.policies.base import LoadBalancingPolicy, Priority, RequestContext


def available_policies() -> list[str]:
    return LoadBalancingPolicy.names()


__all__ = ["LoadBalancingPolicy", "Priority", "RequestContext", "available_policies"]

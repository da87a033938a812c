"""Load-balancing policies, registered by name (``LoadBalancingPolicy.create``)."""

from inferno.policies import (  # noqa: F401  (importing registers the policies)
    consistent_hash,
    least_connections,
    least_loaded,
    power_of_two,
    prefix_affinity,
    random_choice,
    round_robin,
    weighted,
)
from inferno.policies.base import LoadBalancingPolicy


def available_policies() -> list[str]:
    return LoadBalancingPolicy.names()


__all__ = ["LoadBalancingPolicy", "available_policies"]

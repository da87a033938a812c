"""``least_connections``: fewest in-flight requests at this proxy; ties broken at random."""

from __future__ import annotations

from collections.abc import Sequence

from inferno.policies.base import LoadBalancingPolicy
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext


class LeastConnectionsPolicy(LoadBalancingPolicy, name="least_connections"):
    def choose(self, ctx: RequestContext, candidates: Sequence[WorkerInfo]) -> WorkerInfo:
        fewest = min(w.in_flight for w in candidates)
        tied = [w for w in candidates if w.in_flight == fewest]
        return tied[0] if len(tied) == 1 else tied[self.rng.randrange(len(tied))]
